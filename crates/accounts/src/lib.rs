//! Accounts for the chat server's login: a store of Argon2id password hashes behind a trait,
//! and the pool of threads that checks logins against it ([`LoginPool`]).
//!
//! The tutorial checks logins against Redis on a thread of its own and accepts any password.
//! Here:
//!
//! - [`AccountStore`] is the storage contract: user id → PHC hash string. [`RedbStore`] keeps
//!   it in an embedded [redb](https://docs.rs/redb) file (the default); [`MemoryStore`] in
//!   memory (tests). Redis, as in the tutorial, would be one more implementation.
//! - [`Accounts`] adds the rules on top: valid user ids, password length, hashing with a random
//!   salt, and a verification that costs the same for an unknown user as for a wrong password.
//! - Hashing is slow by design (tens of milliseconds): [`LoginPool`] runs it on a small pool of
//!   threads, never on the caller's (the chat server's logic thread).
//!
//! Why redb and not SQLite: redb is pure Rust — no C compiler, so the workspace still
//! cross-checks for macOS and builds for Windows as it is, and builds fast — and one table of
//! short strings needs nothing more. Its one constraint is that one process at a time holds the
//! file open; [`RedbStore`] therefore opens it for each operation (a lookup takes well under a
//! millisecond) and, if another process holds it at that moment, retries for up to a few
//! seconds. So `iocp-server users add` works while the chat server runs.

#![forbid(unsafe_code)]

mod login;
mod memory;
mod password;
mod redb_store;

use std::fmt;
use std::sync::{Arc, OnceLock};

pub use login::{LoginDone, LoginJob, LoginPool, Outcome};
pub use memory::MemoryStore;
pub use password::{HashCost, hash_password, verify_password};
pub use redb_store::RedbStore;

use iocp_chat_protocol::{MAX_USER_ID_LEN, MAX_USER_PW_LEN, valid_user_id};

/// A failure of the account store (I/O, a damaged file, a stored hash that cannot be read).
#[derive(Debug)]
pub struct StoreError {
    op: &'static str,
    message: String,
}

impl StoreError {
    /// An error of `op` (what the store was doing), saying `message`.
    pub fn new(op: &'static str, message: impl fmt::Display) -> StoreError {
        StoreError {
            op,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for StoreError {}

/// Where accounts are kept: user id → password hash (a PHC string). Implementations are used
/// from several threads at once.
pub trait AccountStore: Send + Sync + 'static {
    /// The password hash of `user_id`, or `None` if there is no such user.
    ///
    /// # Errors
    ///
    /// If the store cannot be read.
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError>;

    /// Stores `hash` for `user_id`. An existing user is left alone and `false` returned, unless
    /// `replace` is set.
    ///
    /// # Errors
    ///
    /// If the store cannot be written.
    fn insert(&self, user_id: &str, hash: &str, replace: bool) -> Result<bool, StoreError>;

    /// Stores many accounts at once (one transaction where the store has them); returns how many
    /// were written.
    ///
    /// # Errors
    ///
    /// If the store cannot be written.
    fn insert_many(
        &self,
        accounts: &[(String, String)],
        replace: bool,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (user_id, hash) in accounts {
            n += usize::from(self.insert(user_id, hash, replace)?);
        }
        Ok(n)
    }

    /// Removes `user_id`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// If the store cannot be written.
    fn remove(&self, user_id: &str) -> Result<bool, StoreError>;

    /// Every user id, sorted.
    ///
    /// # Errors
    ///
    /// If the store cannot be read.
    fn user_ids(&self) -> Result<Vec<String>, StoreError>;
}

/// The form a user id is kept and compared in: its NFKC normalization (so that `ａｌｉｃｅ`, in
/// full-width letters, is `alice`), if that is a valid user id ([`valid_user_id`]: 1 to 32 bytes
/// of letters, digits, `-`, `_` and `.`).
pub fn canonical_user_id(user_id: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    let canonical: String = user_id.nfkc().collect();
    valid_user_id(&canonical).then_some(canonical)
}

/// What two user ids must not share: their confusable skeleton (Unicode TS #39), lower-cased,
/// so that `alice`, `Alice` and `аlice` (with a Cyrillic `а`) are one account's ids, not three.
pub fn user_id_key(user_id: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower: String = user_id.nfkc().collect::<String>().to_lowercase();
    unicode_security::skeleton(&lower)
        .collect::<String>()
        .to_lowercase()
}

/// Why an account could not be added.
#[derive(Debug)]
pub enum AccountError {
    /// The user id is not acceptable ([`valid_user_id`]).
    InvalidUserId(String),
    /// Another account's id is the same but for case or look-alike characters
    /// ([`user_id_key`]).
    LooksLike {
        /// The id asked for.
        user_id: String,
        /// The existing account it would be confused with.
        existing: String,
    },
    /// The password is empty or longer than the protocol carries ([`MAX_USER_PW_LEN`] bytes).
    InvalidPassword(&'static str),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountError::InvalidUserId(id) => write!(
                f,
                "invalid user id {id:?}: 1 to {MAX_USER_ID_LEN} bytes of letters, digits, '-', '_' and '.'"
            ),
            AccountError::InvalidPassword(why) => write!(f, "invalid password: {why}"),
            AccountError::LooksLike { user_id, existing } => write!(
                f,
                "{user_id:?} would be confused with the existing account {existing:?} (ids are \
                 compared ignoring case and look-alike characters)"
            ),
            AccountError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AccountError {}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        AccountError::Store(e)
    }
}

/// Checks a password against what the protocol can carry.
///
/// # Errors
///
/// [`AccountError::InvalidPassword`] if it is empty, longer than [`MAX_USER_PW_LEN`] bytes, or
/// holds a NUL.
pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.is_empty() {
        Err(AccountError::InvalidPassword("it is empty"))
    } else if password.len() > MAX_USER_PW_LEN {
        Err(AccountError::InvalidPassword(
            "longer than 32 bytes, which LOGIN_REQUEST cannot carry",
        ))
    } else if password.contains('\0') {
        Err(AccountError::InvalidPassword("it holds a NUL character"))
    } else {
        Ok(())
    }
}

/// The accounts: a store, and the rules for adding and checking logins. Cloneable and shared
/// between threads.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    /// A hash to verify against when the user does not exist, so that an unknown user costs
    /// as much time as a wrong password (made on first need).
    decoy: Arc<OnceLock<String>>,
}

impl Accounts {
    /// Accounts kept in `store`.
    pub fn new(store: Arc<dyn AccountStore>) -> Accounts {
        Accounts {
            store,
            decoy: Arc::new(OnceLock::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn AccountStore {
        &*self.store
    }

    /// Adds `user_id` with `password` hashed at `cost`. Returns `false`, changing nothing, if the
    /// user exists and `replace` is not set.
    ///
    /// # Errors
    ///
    /// An invalid user id or password, or a store failure.
    pub fn add(
        &self,
        user_id: &str,
        password: &str,
        cost: HashCost,
        replace: bool,
    ) -> Result<bool, AccountError> {
        let Some(user_id) = canonical_user_id(user_id) else {
            return Err(AccountError::InvalidUserId(user_id.to_owned()));
        };
        check_password(password)?;
        if !replace && self.store.password_hash(&user_id)?.is_some() {
            return Ok(false);
        }
        // One id per skeleton: a look-alike of an existing account is refused (a scan of the
        // ids: adding accounts is rare, logins never scan).
        let key = user_id_key(&user_id);
        if let Some(existing) = self
            .store
            .user_ids()?
            .into_iter()
            .find(|other| *other != user_id && user_id_key(other) == key)
        {
            return Err(AccountError::LooksLike { user_id, existing });
        }
        let hash = hash_password(password, cost)?;
        Ok(self.store.insert(&user_id, &hash, replace)?)
    }

    /// Whether `user_id` exists and `password` is its password. Slow by design (one Argon2
    /// verification, also for an unknown user): call it off the logic thread.
    ///
    /// # Errors
    ///
    /// A store failure, or a stored hash that cannot be read.
    pub fn verify(&self, user_id: &str, password: &str) -> Result<bool, StoreError> {
        let hash = match canonical_user_id(user_id) {
            Some(user_id) => self.store.password_hash(&user_id)?,
            None => None,
        };
        match hash {
            Some(hash) => verify_password(password, &hash),
            None => {
                let decoy = self.decoy.get_or_init(|| {
                    hash_password("decoy password", HashCost::DEFAULT).unwrap_or_default()
                });
                let _ = verify_password(password, decoy);
                Ok(false)
            }
        }
    }

    /// Removes `user_id`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub fn remove(&self, user_id: &str) -> Result<bool, StoreError> {
        self.store.remove(user_id)
    }

    /// Every user id, sorted.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        self.store.user_ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_remove() {
        let accounts = Accounts::new(Arc::new(MemoryStore::new()));
        assert!(
            accounts
                .add("alice", "pw1", HashCost::LIGHT, false)
                .unwrap()
        );
        assert!(
            !accounts
                .add("alice", "pw2", HashCost::LIGHT, false)
                .unwrap()
        );
        assert!(accounts.verify("alice", "pw1").unwrap());
        assert!(!accounts.verify("alice", "pw2").unwrap());
        assert!(accounts.add("alice", "pw2", HashCost::LIGHT, true).unwrap());
        assert!(accounts.verify("alice", "pw2").unwrap());
        assert!(!accounts.verify("nobody", "pw").unwrap());
        assert!(matches!(
            accounts.add("bad id", "pw", HashCost::LIGHT, false),
            Err(AccountError::InvalidUserId(_))
        ));
        assert!(matches!(
            accounts.add("bob", &"x".repeat(33), HashCost::LIGHT, false),
            Err(AccountError::InvalidPassword(_))
        ));
        assert!(matches!(
            accounts.add("bob", "", HashCost::LIGHT, false),
            Err(AccountError::InvalidPassword(_))
        ));
        assert_eq!(accounts.user_ids().unwrap(), ["alice"]);
        assert!(accounts.remove("alice").unwrap());
        assert!(!accounts.remove("alice").unwrap());
    }

    #[test]
    fn look_alike_and_case_variant_ids_are_one_account() {
        let accounts = Accounts::new(Arc::new(MemoryStore::new()));
        assert!(accounts.add("alice", "pw", HashCost::LIGHT, false).unwrap());
        for other in [
            "Alice",
            "ALICE",
            "\u{430}lice",
            "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}",
            "al\u{0456}ce",
        ] {
            match accounts.add(other, "pw", HashCost::LIGHT, false) {
                Err(AccountError::LooksLike { existing, .. }) => assert_eq!(existing, "alice"),
                // Full-width letters are alice itself once normalized.
                Ok(false) => assert_eq!(canonical_user_id(other).as_deref(), Some("alice")),
                other_result => panic!("{other:?}: {other_result:?}"),
            }
        }
        assert_eq!(accounts.user_ids().unwrap(), ["alice"]);
        // Logging in with the full-width form is logging in as alice.
        assert!(
            accounts
                .verify("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", "pw")
                .unwrap()
        );
        // Different people keep different ids.
        assert!(
            accounts
                .add("alicia", "pw", HashCost::LIGHT, false)
                .unwrap()
        );
        assert!(
            accounts
                .add("김철수", "pw", HashCost::LIGHT, false)
                .unwrap()
        );
        assert!(
            !accounts.verify("\u{430}lice", "pw").unwrap(),
            "a look-alike is not alice"
        );
    }
}
