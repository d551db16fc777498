//! [`RedbStore`]: accounts in an embedded redb file.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, DatabaseError, ReadableTable, StorageBackend, TableDefinition};

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
    /// How the file is opened.
    mode: Mode,
    lease: Mutex<Lease>,
}

/// How a store opens its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Read and write; the file is created if missing.
    Create,
    /// Read and write; the file must exist.
    Existing,
    /// Read only: the file is read into memory and opened there, so that it is never written
    /// (it may be read-only on disk); read again when it changes.
    ReadOnly,
}

/// The open file, if it is open.
struct Lease {
    db: Option<Database>,
    /// In read-only mode: the modification time of the file the snapshot was read from.
    snapshot_of: Option<SystemTime>,
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
    /// If the file cannot be created or opened, or is not a redb database (a damaged file is
    /// reported, never a panic, and left as it is).
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let store = RedbStore::with_mode(path, Mode::Create);
        store.with_db("creating the accounts table", |db| {
            let tx = db.begin_write().map_err(|e| err("starting a write", e))?;
            tx.open_table(ACCOUNTS)
                .map_err(|e| err("opening the accounts table", e))?;
            tx.commit().map_err(|e| err("committing", e))
        })?;
        Ok(store)
    }

    /// Opens the existing store at `path`, for reading and writing — or, if the file cannot be
    /// written (a read-only file), for reading only: it is then read into memory and never
    /// written ([`RedbStore::is_read_only`]; adding or removing accounts fails).
    ///
    /// # Errors
    ///
    /// If the file does not exist, cannot be read, or is not a redb database (reported, never a
    /// panic; the file is left as it is).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let path = path.as_ref();
        let writable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path);
        let mode = match writable {
            Ok(_) => Mode::Existing,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Mode::ReadOnly,
            Err(e) => {
                return Err(StoreError::new(
                    "opening the account file",
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        let store = RedbStore::with_mode(path, mode);
        store.user_ids()?; // checks that it is a whole database, now
        Ok(store)
    }

    /// Opens the existing store at `path` for reading only, never writing the file, even if it
    /// could ([`RedbStore::open_existing`] for the errors).
    ///
    /// # Errors
    ///
    /// As [`RedbStore::open_existing`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let store = RedbStore::with_mode(path, Mode::ReadOnly);
        store.user_ids()?;
        Ok(store)
    }

    /// A store at `path` that touches the file only when first used, creating it then if it
    /// is missing (a server binds its port before it creates its account file). Until the file
    /// has its table, it holds no accounts.
    pub fn create_on_first_use(path: impl AsRef<Path>) -> RedbStore {
        RedbStore::with_mode(path, Mode::Create)
    }

    fn with_mode(path: impl AsRef<Path>, mode: Mode) -> RedbStore {
        let now = Instant::now();
        RedbStore {
            inner: Arc::new(Inner {
                path: path.as_ref().to_owned(),
                mode,
                lease: Mutex::new(Lease {
                    db: None,
                    snapshot_of: None,
                    opened: now,
                    used: now,
                    janitor: false,
                }),
            }),
        }
    }

    fn writable(&self, op: &'static str) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::new(
                op,
                format!(
                    "{}: the account file is opened read-only (make it writable to change \
                     accounts)",
                    self.inner.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Whether the store only reads its file (it was read-only, or opened so).
    pub fn is_read_only(&self) -> bool {
        self.inner.mode == Mode::ReadOnly
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the database, opening it if needed.
    ///
    /// redb answers some damage (a file truncated under it, say) with a panic rather than an
    /// error: it is caught here and reported as a [`StoreError`], the database handle is let go,
    /// and the next operation opens the file again (it works again once the file is restored).
    fn with_db<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut lease = self.inner.lease.lock().unwrap_or_else(|e| e.into_inner());
        let result = catch_unwind(AssertUnwindSafe(|| self.with_lease(&mut lease, op, f)));
        match result {
            Ok(result) => result,
            Err(panic) => {
                // The handle may be in any state: let go of it (and of a panic while dropping).
                let db = lease.db.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
                Err(StoreError::new(
                    op,
                    format!(
                        "{}: the account file is damaged ({})",
                        self.inner.path.display(),
                        panic_text(&*panic)
                    ),
                ))
            }
        }
    }

    fn with_lease<T>(
        &self,
        lease: &mut Lease,
        op: &'static str,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if lease.db.is_some() && lease.opened.elapsed() >= MAX_HOLD {
            lease.db = None;
            std::thread::sleep(YIELD);
        }
        if self.inner.mode == Mode::ReadOnly && lease.db.is_some() {
            // A snapshot is read again when the file changed.
            let modified = std::fs::metadata(&self.inner.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != lease.snapshot_of {
                lease.db = None;
            }
        }
        if lease.db.is_none() {
            let (db, snapshot_of) = self.inner.open_file(op)?;
            lease.db = Some(db);
            lease.snapshot_of = snapshot_of;
            lease.opened = Instant::now();
            if !lease.janitor && self.inner.mode != Mode::ReadOnly {
                lease.janitor = spawn_janitor(Arc::downgrade(&self.inner));
            }
        }
        let result = f(lease.db.as_ref().expect("opened above"));
        lease.used = Instant::now();
        if !lease.janitor && self.inner.mode != Mode::ReadOnly {
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
    /// Opens the file, waiting while another process holds it; in read-only mode, a snapshot of
    /// it in memory, with the modification time it was read at.
    fn open_file(&self, op: &'static str) -> Result<(Database, Option<SystemTime>), StoreError> {
        if self.mode == Mode::ReadOnly {
            let read = |e: io::Error| StoreError::new(op, format!("{}: {e}", self.path.display()));
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .map_err(read)?;
            let bytes = std::fs::read(&self.path).map_err(read)?;
            if bytes.is_empty() {
                return Err(StoreError::new(
                    op,
                    format!("{}: empty, not an account file", self.path.display()),
                ));
            }
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(Snapshot(RwLock::new(bytes)))
                .map_err(|e| StoreError::new(op, format!("{}: {e}", self.path.display())))?;
            return Ok((db, Some(modified)));
        }
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            let opened = match self.mode {
                Mode::Create => builder.create(&self.path),
                _ => builder.open(&self.path),
            };
            match opened {
                Ok(db) => return Ok((db, None)),
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

/// The text of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A copy of an account file in memory, for reading it without ever writing it: redb's writes
/// (it may write on open) go to the copy.
#[derive(Debug)]
struct Snapshot(RwLock<Vec<u8>>);

impl StorageBackend for Snapshot {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        let data = self.0.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        data.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }

    fn sync_data(&self, _: bool) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut bytes = self.0.write().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}

impl AccountStore for RedbStore {
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.with_db("reading an account", |db| {
            let tx = db.begin_read().map_err(|e| err("starting a read", e))?;
            let table = match tx.open_table(ACCOUNTS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(err("opening the accounts table", e)),
            };
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
        self.writable("writing accounts")?;
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
        self.writable("removing an account")?;
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
            let table = match tx.open_table(ACCOUNTS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(err("opening the accounts table", e)),
            };
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
