//! The chat server's metrics: logins by result and their latency, the login and logic queues,
//! rooms, members and notifies. Read from the chat's counters when scraped; the login latency is
//! a `prometheus-client` histogram that the logic thread writes once per login.

use iocp_packet::LogicStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::Metrics;
use super::encode::{self, counter, counters, gauge};
use crate::chat::{ChatServer, ChatStats};

/// Reads the chat's counters at each scrape.
pub struct ChatCollector {
    chat: Box<dyn Fn() -> ChatStats + Send + Sync>,
    logic: Box<dyn Fn() -> LogicStats + Send + Sync>,
}

impl std::fmt::Debug for ChatCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatCollector").finish_non_exhaustive()
    }
}

/// Adds the chat server's metrics to `metrics` (the network server's are added apart, with
/// [`super::server::ServerCollector`]).
pub fn register(metrics: &mut Metrics, server: &ChatServer) {
    metrics.register_collector(ChatCollector {
        chat: Box::new(server.stats_source()),
        logic: Box::new(server.logic_stats_source()),
    });
    metrics.registry().register_with_unit(
        "iocp_chat_login",
        "Time from a login request to its answer, for the logins whose password was checked \
         (the wait in the login queue included).",
        Unit::Seconds,
        server.login_latency().0,
    );
}

impl Collector for ChatCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> encode::Result {
        let c = (self.chat)();
        let l = (self.logic)();
        let e = &mut e;
        // `logins_refused` counts the throttled ones too; here they are apart.
        counters(
            e,
            "iocp_chat_logins",
            "Login requests answered, by result: ok, refused (wrong password, unknown or \
             invalid user, already logged in, server busy, store error), throttled (too many \
             failures or checks waiting: answered without a check).",
            None,
            "result",
            [
                ("ok", c.logins),
                (
                    "refused",
                    c.logins_refused.saturating_sub(c.logins_throttled),
                ),
                ("throttled", c.logins_throttled),
            ],
        )?;
        counter(
            e,
            "iocp_chat_logins_replaced",
            "Logins that replaced an earlier session of the same user.",
            None,
            c.logins_replaced,
        )?;
        counter(
            e,
            "iocp_chat_login_timeouts",
            "Connections closed for not logging in within the login timeout.",
            None,
            c.login_timeouts,
        )?;
        counter(
            e,
            "iocp_chat_login_checks_dropped",
            "Password checks skipped because their session closed while they waited.",
            None,
            c.login_checks_dropped,
        )?;
        gauge(
            e,
            "iocp_chat_login_queue_depth",
            "Logins waiting for their password check or being checked now.",
            None,
            c.login_queue as i64,
        )?;
        gauge(
            e,
            "iocp_chat_logic_queue_depth",
            "Events (packets, connects, disconnects, login answers) waiting for the logic \
             thread now.",
            None,
            l.queue_depth() as i64,
        )?;
        counter(
            e,
            "iocp_chat_logic_events",
            "Events the logic thread handled.",
            None,
            l.events,
        )?;
        counter(
            e,
            "iocp_chat_logic_queue_full_waits",
            "Times an I/O worker found the logic queue full and waited for room.",
            None,
            l.queue_full_waits,
        )?;
        counter(
            e,
            "iocp_chat_logic_queue_full_closes",
            "Sessions closed because the logic queue was full (--when-full disconnect).",
            None,
            l.closed_queue_full,
        )?;
        counter(
            e,
            "iocp_chat_bad_packets",
            "Packets refused: unknown id, malformed, or refused by their handler.",
            None,
            l.bad_packets,
        )?;
        gauge(
            e,
            "iocp_chat_users_online",
            "Users logged in now.",
            None,
            c.online as i64,
        )?;
        gauge(
            e,
            "iocp_chat_rooms_occupied",
            "Rooms with at least one member now.",
            None,
            c.rooms_occupied as i64,
        )?;
        gauge(
            e,
            "iocp_chat_room_members",
            "Members of all rooms together now.",
            None,
            c.members as i64,
        )?;
        counter(
            e,
            "iocp_chat_room_enters",
            "Room entries.",
            None,
            c.room_enters,
        )?;
        counter(
            e,
            "iocp_chat_messages",
            "Chat messages accepted.",
            None,
            c.chats,
        )?;
        counter(
            e,
            "iocp_chat_notifies",
            "Chat notifications queued to room members (one message to a room of 10 is 10).",
            None,
            c.notifies,
        )?;
        Ok(())
    }
}
