//! Who is at the other end of a loopback connection: TCP sockets as the kernel lists them
//! (`/proc/net/tcp{,6}`, or one socket asked of the kernel directly), their owners, and
//! which process holds one.

use std::fs;

/// One TCP socket from `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq)]
struct NetSocket {
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    /// The kernel's state number: 1 established, 10 listening.
    state: u8,
    uid: u32,
    inode: u64,
}

/// An address as `/proc/net/tcp{,6}` prints it: the address as native-endian 32-bit words
/// in hex, a colon, the port in hex.
fn net_address(text: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip.to_canonical(), port))
}

fn parse_net_sockets(text: &str) -> Vec<NetSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(NetSocket {
                local: net_address(f.get(1)?)?,
                remote: net_address(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// This network namespace's TCP sockets, IPv4 and IPv6.
fn net_sockets() -> Vec<NetSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|t| parse_net_sockets(&t))
        .collect()
}

fn canonical(a: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The client's end of a connection Looper accepted, as the kernel knows it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Client {
    /// A process may hold it: its owner (uid) and inode.
    Held { uid: u32, inode: u64 },
    /// Closed: no process holds it any more (the kernel lists it without an inode, or not).
    Gone,
    /// The kernel's socket tables cannot be read here.
    Unknown,
}

/// The client's end of a connection Looper accepted: `peer` is the client's address,
/// `local` Looper's end. Asked of the kernel for that one socket
/// ([`crate::os::sys::tcp_socket_owner`], microseconds), else read from `/proc/net/tcp{,6}`
/// (milliseconds with many sockets about).
pub fn client_socket(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Client {
    let (peer, local) = (canonical(peer), canonical(local));
    if let Some((uid, inode)) = crate::os::sys::tcp_socket_owner(peer, local).filter(|f| f.1 != 0) {
        return Client::Held { uid, inode };
    }
    // The listing holds Looper's own listening socket: empty, it could not be read.
    let all = net_sockets();
    if all.is_empty() {
        return Client::Unknown;
    }
    all.into_iter()
        .find(|s| s.state != 10 && s.local == peer && s.remote == local && s.inode != 0)
        .map_or(Client::Gone, |s| Client::Held {
            uid: s.uid,
            inode: s.inode,
        })
}

/// The user owning the socket that listens on TCP `port` in this network namespace (the
/// process that would receive a connection to it); `None` when none listens.
pub fn listener_uid(port: u16) -> Option<u32> {
    net_sockets()
        .into_iter()
        .find(|s| s.state == 10 && s.local.port() == port)
        .map(|s| s.uid)
}

/// Whether process `pid` holds the socket with `inode` among its descriptors.
pub fn holds_socket(pid: i32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::procs::current_uid;

    #[test]
    fn net_sockets_are_read_as_the_kernel_prints_them() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0D80 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0\n   1: 0100007F:A1B2 0100007F:0D80 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0\n";
        let s = parse_net_sockets(v4);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:3456".parse().unwrap());
        assert_eq!((s[0].state, s[0].uid, s[0].inode), (10, 1000, 12345));
        assert_eq!(s[1].remote, "127.0.0.1:3456".parse().unwrap());
        assert_eq!(s[1].local.port(), 0xA1B2);
        // ::1 and a v4-mapped address, as tcp6 prints them.
        let one = net_address("00000000000000000000000001000000:0D80").unwrap();
        assert_eq!(one, "[::1]:3456".parse().unwrap());
        let mapped = net_address("0000000000000000FFFF00000100007F:0D80").unwrap();
        assert_eq!(mapped, "127.0.0.1:3456".parse().unwrap());
    }

    /// A connection of this very process is found with its owner and descriptor.
    #[test]
    fn the_client_end_of_a_connection_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let Client::Held { uid, inode } = client_socket(peer, l.local_addr().unwrap()) else {
            panic!("not found");
        };
        // The kernel's answer for that one socket agrees with the full listing.
        let listed = net_sockets()
            .into_iter()
            .find(|s| s.local == peer && s.state == 1)
            .map(|s| (s.uid, s.inode));
        assert_eq!(
            crate::os::sys::tcp_socket_owner(peer, l.local_addr().unwrap()),
            listed
        );
        assert_eq!(uid, current_uid());
        assert!(holds_socket(std::process::id() as i32, inode));
        assert_eq!(
            listener_uid(l.local_addr().unwrap().port()),
            Some(current_uid())
        );
        // Closed by its client: nobody holds it, whatever state the kernel keeps it in. (A
        // test thread that forks meanwhile lends the descriptor to its child until that
        // child execs: wait for that to pass.)
        drop(c);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while client_socket(peer, l.local_addr().unwrap()) != Client::Gone {
            assert!(std::time::Instant::now() < deadline, "still held");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
