//! [`RedbStore`]: accounts in an embedded redb file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::{AccountStore, StoreError};

/// user id → Argon2id PHC string.
const ACCOUNTS: TableDefinition<'_, &str, &str> = TableDefinition::new("accounts");

/// How long an operation waits for another process (the running chat server, `iocp-server
/// users`, the load generator) to let go of the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The file is closed this long after its last use.
const IDLE_CLOSE: Duration = Duration::from_millis(20);
/// Held open without a pause for at most this long (a stream of logins) ...
const MAX_HOLD: Duration = Duration::from_millis(500);
/// ... then let go for this long, so that another process waiting for it gets its turn.
const YIELD: Duration = Duration::from_millis(50);

/// redb's page cache.
const CACHE_BYTES: usize = 4 << 20;

/// Accounts in a redb file (one table, `accounts`: user id → password hash).
///
/// redb lets one process at a time hold a file open. So that `iocp-server users add` works while
/// the chat server runs, this store holds the file only while it is used: it opens it on demand,
/// keeps it open while operations follow each other (opening costs a few `fdatasync`s; a lookup
/// in an open file, microseconds), closes it 20 ms after the last one, and lets go for 50 ms
/// after holding it for half a second without a pause. An operation that finds the file held by
/// another process waits for it (polling) for up to 5 s. Within this process, operations take
/// turns.
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lease: Mutex<Lease>,
}

/// The open file, if it is open.
struct Lease {
    db: Option<Database>,
    opened: Instant,
    used: Instant,
    /// Whether a thread is watching for idleness to close the file.
    janitor: bool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file and its table if they do not exist.
    ///
    /// # Errors
    ///
    /// If the file cannot be created or opened, or is not a redb database.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let now = Instant::now();
        let store = RedbStore {
            inner: Arc::new(Inner {
                path: path.as_ref().to_owned(),
                lease: Mutex::new(Lease {
                    db: None,
                    opened: now,
                    used: now,
                    janitor: false,
                }),
            }),
        };
        store.with_db("creating the accounts table", |db| {
            let tx = db.begin_write().map_err(|e| err("starting a write", e))?;
            tx.open_table(ACCOUNTS)
                .map_err(|e| err("opening the accounts table", e))?;
            tx.commit().map_err(|e| err("committing", e))
        })?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the database, opening it if needed.
    fn with_db<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut lease = self.inner.lease.lock().unwrap_or_else(|e| e.into_inner());
        if lease.db.is_some() && lease.opened.elapsed() >= MAX_HOLD {
            lease.db = None;
            std::thread::sleep(YIELD);
        }
        if lease.db.is_none() {
            lease.db = Some(self.inner.open_file(op)?);
            lease.opened = Instant::now();
            if !lease.janitor {
                lease.janitor = spawn_janitor(Arc::downgrade(&self.inner));
            }
        }
        let result = f(lease.db.as_ref().expect("opened above"));
        lease.used = Instant::now();
        if !lease.janitor {
            // No thread to close it later: close it now.
            lease.db = None;
        }
        result
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Close the file here, not on the idle-close thread, so that a process that exits right
        // after never leaves it open (redb would then have to repair it on the next open).
        self.inner
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .db = None;
    }
}

impl Inner {
    /// Opens the file, waiting while another process holds it.
    fn open_file(&self, op: &'static str) -> Result<Database, StoreError> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            match Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&self.path)
            {
                Ok(db) => return Ok(db),
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::new(
                        op,
                        format!(
                            "{}: held open by another process for more than {BUSY_TIMEOUT:?}",
                            self.path.display()
                        ),
                    ));
                }
                Err(e) => {
                    return Err(StoreError::new(
                        op,
                        format!("opening {}: {e}", self.path.display()),
                    ));
                }
            }
        }
    }
}

/// Starts the thread that closes the file once it is idle; it ends with the store. Returns
/// whether it started.
fn spawn_janitor(inner: Weak<Inner>) -> bool {
    std::thread::Builder::new()
        .name("redb-idle-close".into())
        .spawn(move || {
            loop {
                std::thread::sleep(IDLE_CLOSE / 2);
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let mut lease = inner.lease.lock().unwrap_or_else(|e| e.into_inner());
                if lease.db.is_some() && lease.used.elapsed() >= IDLE_CLOSE {
                    lease.db = None;
                }
            }
        })
        .is_ok()
}

fn err(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(op, e)
}

impl AccountStore for RedbStore {
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.with_db("reading an account", |db| {
            let tx = db.begin_read().map_err(|e| err("starting a read", e))?;
            let table = tx
                .open_table(ACCOUNTS)
                .map_err(|e| err("opening the accounts table", e))?;
            let hash = table
                .get(user_id)
                .map_err(|e| err("reading an account", e))?;
            Ok(hash.map(|h| h.value().to_owned()))
        })
    }

    fn insert(&self, user_id: &str, hash: &str, replace: bool) -> Result<bool, StoreError> {
        self.insert_many(&[(user_id.to_owned(), hash.to_owned())], replace)
            .map(|n| n == 1)
    }

    fn insert_many(
        &self,
        accounts: &[(String, String)],
        replace: bool,
    ) -> Result<usize, StoreError> {
        self.with_db("writing accounts", |db| {
            let tx = db.begin_write().map_err(|e| err("starting a write", e))?;
            let mut written = 0;
            {
                let mut table = tx
                    .open_table(ACCOUNTS)
                    .map_err(|e| err("opening the accounts table", e))?;
                for (user_id, hash) in accounts {
                    let exists = table
                        .get(user_id.as_str())
                        .map_err(|e| err("reading an account", e))?
                        .is_some();
                    if exists && !replace {
                        continue;
                    }
                    table
                        .insert(user_id.as_str(), hash.as_str())
                        .map_err(|e| err("writing an account", e))?;
                    written += 1;
                }
            }
            tx.commit().map_err(|e| err("committing", e))?;
            Ok(written)
        })
    }

    fn remove(&self, user_id: &str) -> Result<bool, StoreError> {
        self.with_db("removing an account", |db| {
            let tx = db.begin_write().map_err(|e| err("starting a write", e))?;
            let existed = {
                let mut table = tx
                    .open_table(ACCOUNTS)
                    .map_err(|e| err("opening the accounts table", e))?;
                let removed = table
                    .remove(user_id)
                    .map_err(|e| err("removing an account", e))?;
                removed.is_some()
            };
            tx.commit().map_err(|e| err("committing", e))?;
            Ok(existed)
        })
    }

    fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        self.with_db("listing accounts", |db| {
            let tx = db.begin_read().map_err(|e| err("starting a read", e))?;
            let table = tx
                .open_table(ACCOUNTS)
                .map_err(|e| err("opening the accounts table", e))?;
            let mut ids = Vec::new();
            for entry in table.iter().map_err(|e| err("listing accounts", e))? {
                let (user_id, _) = entry.map_err(|e| err("listing accounts", e))?;
                ids.push(user_id.value().to_owned());
            }
            Ok(ids)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_roundtrip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.redb");
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.password_hash("alice").unwrap(), None);
        assert!(store.insert("alice", "h1", false).unwrap());
        assert!(!store.insert("alice", "h2", false).unwrap());
        assert_eq!(store.password_hash("alice").unwrap().as_deref(), Some("h1"));
        assert!(store.insert("alice", "h2", true).unwrap());
        let many: Vec<_> = (0..100)
            .map(|i| (format!("u{i:03}"), format!("h{i}")))
            .collect();
        assert_eq!(store.insert_many(&many, false).unwrap(), 100);
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.password_hash("alice").unwrap().as_deref(), Some("h2"));
        assert_eq!(store.user_ids().unwrap().len(), 101);
        assert!(store.remove("alice").unwrap());
        assert!(!store.remove("alice").unwrap());
        assert_eq!(store.user_ids().unwrap()[0], "u000");
    }

    #[test]
    fn waits_for_another_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.redb");
        let store = RedbStore::open(&path).unwrap();
        // Another "process" holds the file for a moment (a second handle in this process
        // takes the same lock), once the store has let go of it when idle.
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("the store never let go of the file: {e}"),
            }
        };
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        let start = Instant::now();
        assert!(store.insert("bob", "h", false).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(50));
        release.join().unwrap();
    }

    #[test]
    fn lets_go_when_busy_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.redb");
        let store = RedbStore::open(&path).unwrap();
        store.insert("carol", "h", false).unwrap();
        // Lookups without a pause for longer than MAX_HOLD, while "another process" waits.
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let store = RedbStore::open(path).unwrap();
                store.user_ids().unwrap()
            })
        };
        let start = Instant::now();
        while start.elapsed() < MAX_HOLD * 3 && !waiter.is_finished() {
            assert!(store.password_hash("carol").unwrap().is_some());
        }
        assert_eq!(waiter.join().unwrap(), ["carol"]);
    }

    #[test]
    fn not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, b"this is not redb").unwrap();
        assert!(RedbStore::open(&path).is_err());
    }
}
