//! Opening the client's connections: which source address, which options.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::os;

/// Connections per source address above which `--source-addrs 0` (auto) spreads them over
/// several 127.0.0.x addresses: Linux hands out about 28,000 ephemeral ports per address.
pub const CONNECTIONS_PER_SOURCE: u32 = 25_000;

/// Where and how to connect.
pub struct Target {
    /// The server.
    pub addr: SocketAddr,
    /// Number of source addresses 127.0.0.1 ..= 127.0.0.N to bind to, round robin; `None`: let
    /// the kernel choose (no bind).
    pub sources: Option<u8>,
    /// Limit of one connect.
    pub timeout: Duration,
}

impl Target {
    /// Works out the source addresses for `connections` connections to `addr`. `source_addrs` is
    /// the `--source-addrs` setting (0: automatic).
    pub fn new(
        addr: SocketAddr,
        connections: u32,
        source_addrs: u8,
        timeout: Duration,
    ) -> Result<Target, String> {
        let loopback_v4 = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let sources = match source_addrs {
            0 => {
                let needed = connections.div_ceil(CONNECTIONS_PER_SOURCE);
                if needed <= 1 {
                    None
                } else if !loopback_v4 {
                    return Err(format!(
                        "{connections} connections need more than one source address, which \
                         iocp-load only picks on IPv4 loopback (the server is at {addr})"
                    ));
                } else {
                    Some(u8::try_from(needed).map_err(|_| {
                        format!("{connections} connections need more than 255 source addresses")
                    })?)
                }
            }
            n if loopback_v4 => Some(n),
            _ => {
                return Err(format!(
                    "--source-addrs binds to 127.0.0.x, which cannot reach {addr}"
                ));
            }
        };
        Ok(Target {
            addr,
            sources,
            timeout,
        })
    }

    /// The source address of connection number `k`, if the connections are spread.
    pub fn source(&self, k: u32) -> Option<SocketAddr> {
        let n = self.sources?;
        let last = 1 + (k % u32::from(n)) as u8;
        Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
    }

    /// Opens connection number `k`: binds it to its source address, connects (blocking, up to
    /// the timeout) and turns Nagle's algorithm off.
    pub fn connect(&self, k: u32) -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(self.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if let Some(source) = self.source(k) {
            // Without it the port would be reserved at bind for every destination.
            let _ = os::bind_address_no_port(&socket);
            socket.bind(&source.into())?;
        }
        socket.connect_timeout(&self.addr.into(), self.timeout)?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(connections: u32, sources: u8) -> Result<Target, String> {
        Target::new(
            "127.0.0.1:1".parse().unwrap(),
            connections,
            sources,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn source_addresses() {
        assert_eq!(target(10_000, 0).unwrap().sources, None);
        let t = target(60_000, 0).unwrap();
        assert_eq!(t.sources, Some(3));
        assert_eq!(t.source(0), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(t.source(4), Some("127.0.0.2:0".parse().unwrap()));
        assert_eq!(
            target(10, 2).unwrap().source(1),
            Some("127.0.0.2:0".parse().unwrap())
        );
        assert!(Target::new("[::1]:1".parse().unwrap(), 10, 2, Duration::from_secs(1)).is_err());
    }
}
