//! The chat's side of the login pool (`iocp_accounts::LoginPool`): jobs carry the session and
//! its address, a job whose session closed while it waited is not checked, and each answer comes
//! back as a message in the logic queue, handled in order with everything else.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use iocp_accounts::{LoginDone, LoginPool};
use iocp_packet::LogicSender;
use iocp_server::{ServerHandle, SessionId};

/// Whom a login job is for: the session, and the address it connected from.
pub(crate) type Ticket = (SessionId, IpAddr);

/// The login pool of the chat server.
pub(crate) type ChatLoginPool = LoginPool<Ticket>;

/// Messages to the chat's logic thread.
#[derive(Debug)]
pub(crate) enum ChatMessage {
    /// A login was checked (or dropped).
    LoginDone(LoginDone<Ticket>),
    /// The shared engine's answers and news ([`super::engine::Output`]).
    Engine(Vec<super::engine::Output>),
    /// These logged-in users' accounts no longer exist (removed with `users remove`).
    AccountsRemoved(Vec<(SessionId, String)>),
}

/// The thread that checks, now and then, that the logged-in users' accounts still exist: a
/// user removed while logged in loses its session within the check's interval.
pub(crate) struct Audit {
    jobs: Option<std::sync::mpsc::SyncSender<Vec<(SessionId, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Audit {
    /// Starts the thread; answers go to the logic thread through `results`.
    pub(crate) fn start(
        accounts: iocp_accounts::Accounts,
        results: LogicSender<ChatMessage>,
    ) -> std::io::Result<Audit> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(SessionId, String)>>(1);
        let thread = std::thread::Builder::new()
            .name("account-audit".into())
            .spawn(move || {
                while let Ok(users) = rx.recv() {
                    let removed: Vec<(SessionId, String)> = users
                        .into_iter()
                        .filter(|(_, user_id)| {
                            matches!(accounts.store().password_hash(user_id), Ok(None))
                        })
                        .collect();
                    if !removed.is_empty()
                        && results.send(ChatMessage::AccountsRemoved(removed)).is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Audit {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// An audit that does nothing (used only when starting one failed).
    pub(crate) fn none() -> Audit {
        Audit {
            jobs: None,
            thread: None,
        }
    }

    /// Asks for a check of `users`, unless one is still running.
    pub(crate) fn check(&self, users: Vec<(SessionId, String)>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.try_send(users);
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the pool; answers go to the logic thread through `results`. Once `server` is set, a
/// job of a session that has closed is dropped unchecked.
pub(crate) fn start(
    accounts: iocp_accounts::Accounts,
    threads: usize,
    queue: usize,
    server: Arc<OnceLock<ServerHandle>>,
    results: LogicSender<ChatMessage>,
) -> std::io::Result<ChatLoginPool> {
    LoginPool::start(
        accounts,
        threads,
        queue,
        move |(session, _): &Ticket| server.get().is_none_or(|h| h.is_open(*session)),
        move |done| results.send(ChatMessage::LoginDone(done)).is_ok(),
    )
}
