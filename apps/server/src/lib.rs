//! The `iocp-server` binary's servers, as a library so that tests start them in-process:
//!
//! - [`echo`]: the seed's echo server — send back what arrived.
//! - [`chat`]: the tutorial's chat server — login against an account store, rooms, chat — on
//!   the packet manager's logic thread ([`iocp_packet::logic`]).
//! - [`users`]: `iocp-server users add|remove|list`, the chat server's account tool.
//! - [`redis`]: the chat's Redis engine and account store, for several instances.
//! - [`cli`]: the command line that puts them together.
//! - [`config_file`]: `--config FILE` (TOML) and `iocp-server config print`.
//! - [`metrics`]: `--metrics ADDR`, the Prometheus endpoint and what it reads.
#![forbid(unsafe_code)]

pub mod chat;
pub mod cli;
pub mod echo;
pub mod redis;
mod run;
pub mod users;

pub mod config_file;
pub mod metrics;
