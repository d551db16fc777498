//! `iocp-server`: the tutorial's echo and chat servers on the iocp-server library, and the chat
//! server's account tool. `cargo run --release` starts the echo server on `127.0.0.1:11021`.
//! Everything is in the library (`src/lib.rs`), so tests can start the servers in-process.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    iocp_server_app::cli::main()
}
