//! The login pool: a few threads that check passwords, off the logic thread.
//!
//! The tutorial sends a login to its Redis thread through a request queue and gets the answer
//! back through a response queue that the logic thread polls. Here the request queue is a
//! bounded channel that the logic thread never waits on (a full queue answers
//! `LOGIN_SERVER_BUSY` at once), and the answer is a message in the logic queue itself, so it
//! is handled in order with everything else.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use iocp_packet::LogicSender;
use iocp_packet::accounts::Accounts;
use iocp_server::SessionId;

/// A password to check, for a session.
pub(crate) struct LoginJob {
    pub(crate) session: SessionId,
    pub(crate) user_id: String,
    pub(crate) password: String,
}

/// What the check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The user exists and the password is right.
    Accepted,
    /// Unknown user or wrong password.
    Refused,
    /// The store failed (logged).
    StoreFailed,
}

/// A checked login, back on the logic thread.
#[derive(Debug)]
pub(crate) struct LoginDone {
    pub(crate) session: SessionId,
    pub(crate) user_id: String,
    pub(crate) outcome: Outcome,
}

/// Messages to the chat's logic thread.
#[derive(Debug)]
pub(crate) enum ChatMessage {
    /// A login was checked.
    LoginDone(LoginDone),
}

/// The threads checking passwords, and their job queue.
pub(crate) struct LoginPool {
    jobs: Option<SyncSender<LoginJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl LoginPool {
    /// Starts `threads` threads checking logins against `accounts`, with room for `queue` jobs
    /// waiting; results go to `results`.
    pub(crate) fn start(
        accounts: Accounts,
        threads: usize,
        queue: usize,
        results: LogicSender<ChatMessage>,
    ) -> std::io::Result<LoginPool> {
        let (tx, rx) = sync_channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = LoginPool {
            jobs: Some(tx),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let (rx, accounts, results) = (rx.clone(), accounts.clone(), results.clone());
            let thread = std::thread::Builder::new()
                .name(format!("login-{i}"))
                .spawn(move || check_logins(&rx, &accounts, &results))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// A pool without threads, that refuses every job (used only when starting one failed).
    pub(crate) fn none() -> LoginPool {
        LoginPool {
            jobs: None,
            threads: Vec::new(),
        }
    }

    /// Hands `job` to the pool without waiting; gives it back if the queue is full.
    pub(crate) fn submit(&self, job: LoginJob) -> Result<(), LoginJob> {
        match &self.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }),
            None => Err(job),
        }
    }
}

impl Drop for LoginPool {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn check_logins(
    jobs: &Mutex<Receiver<LoginJob>>,
    accounts: &Accounts,
    results: &LogicSender<ChatMessage>,
) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let outcome = match accounts.verify(&job.user_id, &job.password) {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Refused,
            Err(e) => {
                tracing::error!("login of {:?}: {e}", job.user_id);
                Outcome::StoreFailed
            }
        };
        let done = LoginDone {
            session: job.session,
            user_id: job.user_id,
            outcome,
        };
        if results.send(ChatMessage::LoginDone(done)).is_err() {
            return; // the logic thread has ended
        }
    }
}
