//! [`MemoryStore`]: accounts in memory, for tests and examples.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{AccountStore, StoreError};

/// Accounts in a map in memory; gone when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    accounts: Mutex<BTreeMap<String, String>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AccountStore for MemoryStore {
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.map().get(user_id).cloned())
    }

    fn insert(&self, user_id: &str, hash: &str, replace: bool) -> Result<bool, StoreError> {
        let mut map = self.map();
        if !replace && map.contains_key(user_id) {
            return Ok(false);
        }
        map.insert(user_id.to_owned(), hash.to_owned());
        Ok(true)
    }

    fn remove(&self, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.map().remove(user_id).is_some())
    }

    fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.map().keys().cloned().collect())
    }
}
