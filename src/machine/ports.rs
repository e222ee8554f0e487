//! Host ports for machines (SSH forwards), allocated
//! without races between concurrent vmcheck processes.
//!
//! A port is held by binding the *abstract* Unix socket `vmcheck/port/<port>` for as long
//! as the returned [`PortLease`] lives. Abstract sockets are atomic to claim, belong to the
//! network namespace (as ports do), leave no file behind and are released by the kernel when
//! the process dies, even by SIGKILL. A trial bind skips ports other programs use; QEMU can
//! still lose a race against a foreign program, which the caller handles by trying again.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

/// The range vmcheck allocates from (below Linux's default ephemeral range).
pub const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Which kind of socket the port is for, so the trial bind checks the right protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Tcp,
    Udp,
}

/// A port reserved for this process until dropped.
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    _lock: UnixListener,
}

/// Reserve a free port on 127.0.0.1.
pub fn lease(kind: PortKind) -> std::io::Result<PortLease> {
    lease_in(kind, PORT_RANGE, start_offset())
}

fn lease_in(
    kind: PortKind,
    range: std::ops::Range<u16>,
    offset: u32,
) -> std::io::Result<PortLease> {
    let len = u32::from(range.end - range.start);
    for i in 0..len {
        let port = range.start + ((offset + i) % len) as u16;
        let Ok(lock) = claim(port) else { continue };
        let free = match kind {
            PortKind::Tcp => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            PortKind::Udp => std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok(),
        };
        if free {
            return Ok(PortLease { port, _lock: lock });
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {}..{}", range.start, range.end),
    ))
}

fn claim(port: u16) -> std::io::Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(format!("vmcheck/port/{port}"))?;
    UnixListener::bind_addr(&addr)
}

/// Spread concurrent processes over the range so they rarely probe the same ports.
fn start_offset() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(2_654_435_761) ^ nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_until_dropped() {
        let a = lease_in(PortKind::Tcp, 30500..30510, 0).unwrap();
        let b = lease_in(PortKind::Tcp, 30500..30510, 0).unwrap();
        assert_ne!(a.port, b.port);
        let port = a.port;
        drop(a);
        let c = lease_in(PortKind::Tcp, 30500..30510, 0).unwrap();
        assert_eq!(c.port, port);
    }

    #[test]
    fn ports_in_use_by_others_are_skipped() {
        let busy = std::net::TcpListener::bind(("127.0.0.1", 30520)).unwrap();
        let l = lease_in(PortKind::Tcp, 30520..30522, 0).unwrap();
        assert_eq!(l.port, 30521);
        drop(busy);
    }

    #[test]
    fn exhausted_range_is_an_error() {
        let _a = lease_in(PortKind::Udp, 30530..30531, 0).unwrap();
        let e = lease_in(PortKind::Udp, 30530..30531, 0).unwrap_err();
        assert!(e.to_string().contains("no free port"), "{e}");
    }
}
