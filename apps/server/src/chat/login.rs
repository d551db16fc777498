//! The chat's side of the login pool (`iocp_accounts::LoginPool`): jobs carry the session, and
//! each answer comes back as a message in the logic queue, handled in order with everything else.

use iocp_accounts::{LoginDone, LoginPool};
use iocp_packet::LogicSender;
use iocp_server::SessionId;

/// The login pool of the chat server.
pub(crate) type ChatLoginPool = LoginPool<SessionId>;

/// Messages to the chat's logic thread.
#[derive(Debug)]
pub(crate) enum ChatMessage {
    /// A login was checked.
    LoginDone(LoginDone<SessionId>),
}

/// Starts the pool; answers go to the logic thread through `results`.
pub(crate) fn start(
    accounts: iocp_accounts::Accounts,
    threads: usize,
    queue: usize,
    results: LogicSender<ChatMessage>,
) -> std::io::Result<ChatLoginPool> {
    LoginPool::start(accounts, threads, queue, move |done| {
        results.send(ChatMessage::LoginDone(done)).is_ok()
    })
}
