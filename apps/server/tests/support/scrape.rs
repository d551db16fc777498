//! For the tests of `--metrics`: the endpoint's address from the server's log, and a small
//! HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::IO_TIMEOUT;
use super::process::ServerProcess;

/// The address in the first line of `server`'s log containing `marker`, right after it and up
/// to `end` (or the end of the line).
pub fn address_after(server: &mut ServerProcess, marker: &str, end: &str) -> SocketAddr {
    let line = match server.seen.iter().find(|l| l.contains(marker)) {
        Some(line) => line.clone(),
        None => server.wait_for(marker),
    };
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    let rest = rest.find(end).map_or(rest, |at| &rest[..at]);
    rest.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{rest:?}: {e}"))
}

/// The metrics endpoint's address, from its log line (`metrics on http://ADDR/metrics`).
pub fn metrics_addr(server: &mut ServerProcess) -> SocketAddr {
    address_after(server, "metrics on http://", "/metrics")
}

/// `GET path` from `addr` (with `accept` as the `Accept` header if given): the status code,
/// the head and the body.
pub fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_owned(), body.to_owned())
}

/// The value of one series (`name` or `name{labels}`) in an exposition.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
