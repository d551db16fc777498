//! iocp-chat (in progress).
fn main() {}
