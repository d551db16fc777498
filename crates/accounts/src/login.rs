//! The login pool: a few threads that check passwords, off the caller's thread.
//!
//! The tutorial sends a login to its Redis thread through a request queue and gets the answer
//! back through a response queue that the logic thread polls. Here the request queue is a
//! bounded channel that the submitter never waits on (a full queue gives the job back at once,
//! for a "server busy" answer), and each answer goes to a function the owner gives — the chat
//! server posts it into its logic queue, so that it is handled in order with everything else.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::Accounts;

/// A password to check. `T` says whom the answer is for (a session id, say).
pub struct LoginJob<T> {
    /// Whom the answer is for.
    pub ticket: T,
    /// The user id to check.
    pub user_id: String,
    /// The password to check.
    pub password: String,
}

/// What the check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The user exists and the password is right.
    Accepted,
    /// Unknown user or wrong password.
    Refused,
    /// The store failed (logged).
    StoreFailed,
    /// Not checked: nobody wanted the answer any more (the session closed while the job
    /// waited), so no time was spent hashing.
    Dropped,
}

/// A checked login.
#[derive(Debug)]
pub struct LoginDone<T> {
    /// Whom the answer is for, as given in the [`LoginJob`].
    pub ticket: T,
    /// The user id checked.
    pub user_id: String,
    /// The answer.
    pub outcome: Outcome,
}

/// The threads checking passwords, and their job queue. Dropping it closes the queue and joins
/// the threads (each after its current job).
pub struct LoginPool<T> {
    jobs: Option<SyncSender<LoginJob<T>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> LoginPool<T> {
    /// Starts `threads` threads checking logins against `accounts`, with room for `queue` jobs
    /// waiting. A job whose ticket `wanted` no longer accepts when its turn comes is not checked
    /// ([`Outcome::Dropped`]). Each answer is handed to `deliver`; a thread ends when `deliver`
    /// returns `false` (nobody listens any more).
    ///
    /// # Errors
    ///
    /// If a thread cannot be spawned.
    pub fn start<W, D>(
        accounts: Accounts,
        threads: usize,
        queue: usize,
        wanted: W,
        deliver: D,
    ) -> std::io::Result<LoginPool<T>>
    where
        W: Fn(&T) -> bool + Send + Sync + 'static,
        D: Fn(LoginDone<T>) -> bool + Send + Sync + 'static,
    {
        let (tx, rx) = sync_channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let deliver = Arc::new(deliver);
        let wanted = Arc::new(wanted);
        let mut pool = LoginPool {
            jobs: Some(tx),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let (rx, accounts) = (rx.clone(), accounts.clone());
            let (wanted, deliver) = (wanted.clone(), deliver.clone());
            let thread = std::thread::Builder::new()
                .name(format!("login-{i}"))
                .spawn(move || check_logins(&rx, &accounts, &*wanted, &*deliver))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }
}

impl<T> LoginPool<T> {
    /// A pool without threads, that refuses every job (used only when starting one failed).
    pub fn none() -> LoginPool<T> {
        LoginPool {
            jobs: None,
            threads: Vec::new(),
        }
    }

    /// Hands `job` to the pool without waiting; gives it back if the queue is full.
    ///
    /// # Errors
    ///
    /// The job, when the queue is full or the pool has no threads.
    pub fn submit(&self, job: LoginJob<T>) -> Result<(), LoginJob<T>> {
        match &self.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }),
            None => Err(job),
        }
    }
}

impl<T> Drop for LoginPool<T> {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn check_logins<T>(
    jobs: &Mutex<Receiver<LoginJob<T>>>,
    accounts: &Accounts,
    wanted: &dyn Fn(&T) -> bool,
    deliver: &dyn Fn(LoginDone<T>) -> bool,
) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if !wanted(&job.ticket) {
            let done = LoginDone {
                ticket: job.ticket,
                user_id: job.user_id,
                outcome: Outcome::Dropped,
            };
            if !deliver(done) {
                return;
            }
            continue;
        }
        // A panic in the check (a store that panics on a damaged file, say) costs this login
        // only: the thread goes on with the next.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            accounts.verify(&job.user_id, &job.password)
        }));
        let outcome = match checked {
            Ok(Ok(true)) => Outcome::Accepted,
            Ok(Ok(false)) => Outcome::Refused,
            Ok(Err(e)) => {
                tracing::error!("login of {:?}: {e}", job.user_id);
                Outcome::StoreFailed
            }
            Err(_) => {
                tracing::error!("login of {:?}: the password check panicked", job.user_id);
                Outcome::StoreFailed
            }
        };
        let done = LoginDone {
            ticket: job.ticket,
            user_id: job.user_id,
            outcome,
        };
        if !deliver(done) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashCost, MemoryStore};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn checks_logins_and_refuses_when_full() {
        let accounts = Accounts::new(Arc::new(MemoryStore::new()));
        accounts.add("alice", "pw", HashCost::LIGHT, false).unwrap();
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let pool = LoginPool::start(
            accounts,
            2,
            4,
            |ticket: &i32| *ticket != 3,
            move |done| tx.lock().unwrap().send(done).is_ok(),
        )
        .unwrap();
        for (ticket, pw) in [(1, "pw"), (2, "wrong"), (3, "pw")] {
            let job = LoginJob {
                ticket,
                user_id: "alice".into(),
                password: pw.into(),
            };
            assert!(pool.submit(job).is_ok());
        }
        let mut got: Vec<(i32, Outcome)> = (0..3)
            .map(|_| {
                let d = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                (d.ticket, d.outcome)
            })
            .collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            [
                (1, Outcome::Accepted),
                (2, Outcome::Refused),
                (3, Outcome::Dropped)
            ]
        );
        drop(pool);
        let none = LoginPool::<i32>::none();
        let job = LoginJob {
            ticket: 3,
            user_id: "alice".into(),
            password: "pw".into(),
        };
        assert_eq!(none.submit(job).unwrap_err().ticket, 3);
    }
}
