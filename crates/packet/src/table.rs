//! The packet-id → handler table (the tutorial's `mRecvFuntionDictionary`).

/// Handlers by packet id, kept sorted by id: a lookup is a binary search over a few entries,
/// with no hashing and no lock (the table is fixed once the server starts).
pub(crate) struct Table<F> {
    entries: Vec<(u16, F)>,
}

impl<F> Default for Table<F> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
        }
    }
}

impl<F> Table<F> {
    /// Sets the handler of `id`, replacing an earlier one.
    pub(crate) fn insert(&mut self, id: u16, handler: F) {
        match self.entries.binary_search_by_key(&id, |(k, _)| *k) {
            Ok(i) => self.entries[i].1 = handler,
            Err(i) => self.entries.insert(i, (id, handler)),
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: u16) -> Option<&F> {
        self.entries
            .binary_search_by_key(&id, |(k, _)| *k)
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// The registered ids, in order.
    pub(crate) fn ids(&self) -> Vec<u16> {
        self.entries.iter().map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_replace() {
        let mut t = Table::default();
        t.insert(216, "notify");
        t.insert(201, "login");
        t.insert(209, "leave");
        t.insert(201, "login2");
        assert_eq!(t.ids(), [201, 209, 216]);
        assert_eq!(t.get(201), Some(&"login2"));
        assert_eq!(t.get(202), None);
    }
}
