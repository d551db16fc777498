//! `iocp-load`: the load generator of iocp-server, built on the same completion driver.
//!
//! ```text
//! iocp-load echo --addr 127.0.0.1:11021 --connections 500 --size 64 --pipeline 4 --duration 10s
//! iocp-load echo --connections 100 --rate 50000 --duration 30s      # open loop
//! iocp-load idle --connections 10000 --hold 30s --server-pid PID    # memory per idle connection
//! ```
//!
//! `echo` keeps `--pipeline` messages in flight on each connection (closed loop), or sends at a
//! fixed `--rate` (open loop, latency measured from when each message was due), and checks every
//! byte that comes back as it arrives: the connection id, sequence number and send time of each
//! message's header, and the pattern after it ([`message`]). It reports messages/s, MiB/s,
//! latency percentiles, and its own CPU use.
//!
//! Each client thread owns an [`iocp_driver::Driver`] and its share of the connections
//! ([`worker`]); the main thread paces the steps the threads share and shows progress ([`run`]).
//! Connections are opened with `socket2` at a controlled rate, over several 127.0.0.x source
//! addresses when one would run out of ports ([`connect`]).
//!
//! The exit status is 0 when every byte came back right, 1 when a byte was wrong, missing or out
//! of order, when too many connects failed, or when the server closed connections, and 2 for a
//! bad command line.
#![deny(unsafe_code)]

mod chat;
mod cli;
mod connect;
mod message;
mod os;
mod progress;
mod report;
mod run;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Echo(args) => run::echo(args),
        Command::Idle(args) => run::idle(args),
        Command::Chat(args) => chat::run(args),
    }
}
