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
