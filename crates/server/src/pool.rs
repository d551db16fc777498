//! What every thread of the server shares: the session pool (the slot table and each worker's
//! free slots), the workers' inboxes and counters, and the shutdown flags.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::inbox::{Command, Inbox};
use crate::session::{SessionId, SlotTable};
use crate::stats::WorkerStats;

/// The server's shared state.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) slots: SlotTable,
    /// Free slot indices of each worker (local to that worker).
    free: Vec<Mutex<Vec<u32>>>,
    pub(crate) inboxes: Vec<Inbox>,
    pub(crate) stats: Vec<WorkerStats>,
    shutdown: AtomicBool,
    stopped: (Mutex<bool>, Condvar),
    /// Whether the workers may start (every one of them is ready), once decided.
    go: (Mutex<Option<bool>>, Condvar),
    next_worker: AtomicUsize,
}

impl Shared {
    /// The pool for `config`, split between `workers` workers.
    pub(crate) fn new(config: Config, workers: usize) -> Shared {
        let slots = SlotTable::new(config.max_sessions, workers as u32);
        let per_worker = slots.per_worker();
        let free = (0..workers)
            .map(|w| {
                let first = w as u32 * per_worker;
                let count = per_worker.min(slots.len().saturating_sub(first));
                Mutex::new((0..count).rev().collect())
            })
            .collect();
        Shared {
            slots,
            free,
            inboxes: (0..workers).map(|_| Inbox::new()).collect(),
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            shutdown: AtomicBool::new(false),
            stopped: (Mutex::new(false), Condvar::new()),
            go: (Mutex::new(None), Condvar::new()),
            next_worker: AtomicUsize::new(0),
            config,
        }
    }

    pub(crate) fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Takes a free slot for a new connection, spreading connections over the workers in turn.
    /// `None` when the pool is full.
    pub(crate) fn take_slot(&self) -> Option<(usize, u32)> {
        let n = self.workers();
        let start = self.next_worker.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).find_map(|w| {
            let index = self.free[w]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()?;
            Some((w, index))
        })
    }

    pub(crate) fn free_slot(&self, worker: usize, index: u32) {
        self.free[worker]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
    }

    /// Waits until every worker is ready (or one failed): no worker accepts a connection before
    /// every worker can take one. Returns whether to run.
    pub(crate) fn wait_for_go(&self) -> bool {
        let (lock, cvar) = &self.go;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let guard = cvar
            .wait_while(guard, |go| go.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.unwrap_or(false)
    }

    pub(crate) fn set_go(&self, go: bool) {
        let (lock, cvar) = &self.go;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        cvar.notify_all();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown, once: every worker is told, and waiters are woken.
    pub(crate) fn begin_shutdown(&self) {
        if self.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        for inbox in &self.inboxes {
            inbox.push(Command::Shutdown);
        }
        let (lock, cvar) = &self.stopped;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }

    /// Waits up to `timeout` for shutdown to be asked for; returns whether it was.
    pub(crate) fn wait_for_shutdown(&self, timeout: std::time::Duration) -> bool {
        let (lock, cvar) = &self.stopped;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// The inbox of the worker that owns `session`, if the session is open.
    pub(crate) fn inbox_of(&self, session: SessionId) -> Result<&Inbox> {
        if !self.slots.is_open(session) {
            return Err(Error::SessionClosed(session));
        }
        Ok(&self.inboxes[self.slots.owner(session.index).0])
    }
}
