//! `iocp-server users add|remove|list`: the chat server's accounts.
//!
//! The password is never taken from the command line (it would show in `ps` and the shell's
//! history): it is prompted for, twice and without echo, when standard input is a terminal, and
//! read as the first line of standard input otherwise (`printf '%s\n' "$PW" | iocp-server users
//! add alice`). The account file may be in use by a running chat server: the store waits its
//! turn (see [`iocp_accounts::RedbStore`]).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use iocp_accounts::{Accounts, HashCost, RedbStore, check_password};

/// The chat server's account file unless `--db` says otherwise.
pub const DEFAULT_DB: &str = "iocp-chat.redb";

/// `iocp-server users`.
#[derive(Args, Debug, Clone)]
pub struct UsersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// The account commands.
#[derive(Subcommand, Debug, Clone)]
pub enum UsersCommand {
    /// Add a user (the password is prompted for, or read from the first line of stdin).
    Add {
        /// The user id: 1 to 32 bytes of letters, digits, '-', '_' and '.'.
        user: String,
        /// Where the accounts are.
        #[command(flatten)]
        store: StoreArgs,
        /// Change the password of an existing user instead of refusing.
        #[arg(long)]
        replace: bool,
        /// Hashing cost: `default` (Argon2id, 19 MiB, 2 passes), or `light` — for test and
        /// load-test accounts only, as cheap to guess offline as it is to check.
        #[arg(long, value_enum, default_value = "default")]
        hash_cost: Cost,
    },
    /// Remove a user.
    Remove {
        /// The user id.
        user: String,
        /// Where the accounts are.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the users, one per line.
    List {
        /// Where the accounts are.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where `users` finds the accounts: the account file, or Redis.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The account file.
    #[arg(long, default_value = DEFAULT_DB)]
    pub db: PathBuf,
    /// The accounts of `chat --engine redis`, in the Redis at this URL (several: a Redis
    /// Cluster's seed nodes) instead of the file.
    #[arg(long = "redis", value_name = "URL")]
    pub redis: Vec<String>,
}

impl StoreArgs {
    /// The accounts: in Redis if `--redis` is given, else in the file (`create`: made if
    /// missing; `read_only`: opened for reading only).
    fn open(&self, create: bool, read_only: bool) -> Result<Accounts, String> {
        if self.redis.is_empty() {
            return if create {
                open_accounts(&self.db)
            } else {
                existing(&self.db, read_only)
            };
        }
        let config = crate::redis::RedisConfig::new(self.redis.clone());
        let redis = crate::redis::Redis::connect(config, std::time::Duration::from_secs(5), true)?;
        Ok(Accounts::new(Arc::new(crate::redis::RedisStore::new(
            redis,
        ))))
    }
}

/// Argon2id cost of new hashes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Cost {
    /// [`HashCost::DEFAULT`].
    Default,
    /// [`HashCost::LIGHT`]: test and load-test accounts only.
    Light,
}

/// Opens the accounts in `db`, creating the file if needed (`users add`).
///
/// # Errors
///
/// If the file cannot be opened or created, or is not an account file.
pub fn open_accounts(db: &Path) -> Result<Accounts, String> {
    RedbStore::open(db)
        .map(|store| Accounts::new(Arc::new(store)))
        .map_err(|e| format!("{}: {e}", db.display()))
}

/// The accounts of the chat server in `db`: an existing file is opened now (a damaged one is an
/// error; a read-only one is read, with a warning that `users add` cannot change it while it is
/// so); a missing one is created on first use, after the server has bound its port.
///
/// # Errors
///
/// If the file exists but cannot be read, or is not an account file.
pub fn chat_accounts(db: &Path) -> Result<Accounts, String> {
    if !db.exists() {
        return Ok(Accounts::new(Arc::new(RedbStore::create_on_first_use(db))));
    }
    let store = RedbStore::open_existing(db).map_err(|e| e.to_string())?;
    if store.is_read_only() {
        tracing::warn!(
            "{}: read-only: logins work, but `iocp-server users add` and `remove` cannot change \
             it while it is so",
            db.display()
        );
    }
    Ok(Accounts::new(Arc::new(store)))
}

fn existing(db: &Path, read_only: bool) -> Result<Accounts, String> {
    if !db.exists() {
        return Err(format!(
            "{}: no such account file (`iocp-server users add` creates it)",
            db.display()
        ));
    }
    let store = if read_only {
        RedbStore::open_read_only(db)
    } else {
        RedbStore::open_existing(db)
    };
    store
        .map(|store| Accounts::new(Arc::new(store)))
        .map_err(|e| e.to_string())
}

/// Runs a `users` command; prints what it did on stdout, errors on stderr.
pub fn run(args: &UsersArgs) -> ExitCode {
    match execute(&args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iocp-server users: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: &UsersCommand) -> Result<(), String> {
    match command {
        UsersCommand::Add {
            user,
            store,
            replace,
            hash_cost,
        } => {
            let Some(canonical) = iocp_accounts::canonical_user_id(user) else {
                return Err(format!(
                    "invalid user id {user:?}: 1 to 32 bytes of letters, digits, '-', '_' and '.'"
                ));
            };
            let user = &canonical;
            let accounts = store.open(true, false)?;
            if !replace
                && accounts
                    .store()
                    .password_hash(user)
                    .map_err(|e| e.to_string())?
                    .is_some()
            {
                return Err(format!(
                    "{user} exists (use --replace to change the password)"
                ));
            }
            let password = read_password(user)?;
            let cost = match hash_cost {
                Cost::Default => HashCost::DEFAULT,
                Cost::Light => HashCost::LIGHT,
            };
            match accounts.add(user, &password, cost, *replace) {
                Ok(true) => {
                    println!("{} {user}", if *replace { "set" } else { "added" });
                    Ok(())
                }
                Ok(false) => Err(format!(
                    "{user} exists (use --replace to change the password)"
                )),
                Err(e) => Err(e.to_string()),
            }
        }
        UsersCommand::Remove { user, store } => {
            let accounts = store.open(false, false)?;
            match accounts.remove(user) {
                Ok(true) => {
                    println!("removed {user}");
                    Ok(())
                }
                Ok(false) => Err(format!("no user {user}")),
                Err(e) => Err(e.to_string()),
            }
        }
        UsersCommand::List { store } => {
            let accounts = store.open(false, true)?;
            for user in accounts.user_ids().map_err(|e| e.to_string())? {
                println!("{user}");
            }
            Ok(())
        }
    }
}

/// The new password: prompted for twice on a terminal, else the first line of stdin.
fn read_password(user: &str) -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {user}: "))
            .map_err(|e| format!("reading the password: {e}"))?;
        let again = rpassword::prompt_password("again: ")
            .map_err(|e| format!("reading the password: {e}"))?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        let end = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(end);
        line
    };
    check_password(&password).map_err(|e| e.to_string())?;
    Ok(password)
}
