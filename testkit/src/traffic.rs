use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::{Netns, sys};

/// How long `udp_exchange` and `icmp_echo` wait for the last datagram / reply.
const DATAGRAM_WAIT: Duration = Duration::from_secs(5);
/// Overall bound of `tcp_transfer`.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling granularity of receive loops (they also check an abort flag this often).
const POLL: Duration = Duration::from_millis(50);
/// Receive buffer for traffic sockets: large enough that bursts are not dropped.
const RCVBUF: libc::c_int = 8 << 20;
/// `udp_exchange` never lets more than this many datagrams be in flight, so the receiver's
/// socket buffer cannot overflow whatever `count` is.
const UDP_WINDOW: u32 = 512;
/// Safety net for receiver threads in case the caller's abort never comes.
const THREAD_HARD_LIMIT: Duration = Duration::from_secs(60);

/// Sets an abort flag when dropped, so that helper threads stop on every exit path.
struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Deterministic payload bytes.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends `count` UDP datagrams of `payload` bytes from `src` (socket bound in `from`, so the
/// source port is `src.port()`; 0 picks one) to `dst` (socket bound in `to`) and counts those
/// that arrive from the sender with the right length. At most 512 datagrams are
/// in flight at once; waits at most 5 s for progress (and the receiver gives up after 60 s
/// in total). Returns the number received.
pub fn udp_exchange(
    from: &Netns,
    to: &Netns,
    src: SocketAddr,
    dst: SocketAddr,
    count: u32,
    payload: usize,
) -> Result<u32> {
    ensure!(
        src.is_ipv4() == dst.is_ipv4(),
        "udp_exchange: {src} and {dst} differ in family"
    );
    let rx = to
        .run_in(move || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(dst)?;
            sys::set_rcvbuf(s.as_fd(), RCVBUF)?;
            s.set_read_timeout(Some(POLL))?;
            Ok(s)
        })?
        .with_context(|| format!("binding the UDP receiver to {dst} in {}", to.name()))?;
    let tx = from
        .run_in(move || UdpSocket::bind(src))?
        .with_context(|| format!("binding the UDP sender to {src} in {}", from.name()))?;
    let sender = tx.local_addr()?;

    let received = Arc::new(AtomicU32::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let _stop = AbortOnDrop(abort.clone());
    let receiver = {
        let (received, abort) = (received.clone(), abort.clone());
        std::thread::Builder::new()
            .name("udp-rx".into())
            .spawn(move || -> io::Result<()> {
                let started = Instant::now();
                let mut buf = vec![0u8; payload.max(1) + 1];
                while received.load(Ordering::SeqCst) < count
                    && !abort.load(Ordering::SeqCst)
                    && started.elapsed() < THREAD_HARD_LIMIT
                {
                    match rx.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            let from_sender = peer.port() == sender.port()
                                && (sender.ip().is_unspecified() || peer.ip() == sender.ip());
                            if from_sender && n == payload {
                                received.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })?
    };

    let data = pattern(payload, 0x55);
    let mut send_result = Ok(());
    'send: for sent in 0..count {
        // Keep the window bounded; give up if the receiver makes no progress for 5 s.
        let mut last = received.load(Ordering::SeqCst);
        let mut since = Instant::now();
        while sent - received.load(Ordering::SeqCst).min(sent) >= UDP_WINDOW {
            if receiver.is_finished() {
                break 'send;
            }
            let now = received.load(Ordering::SeqCst);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= DATAGRAM_WAIT {
                break 'send;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = tx.send_to(&data, dst) {
            send_result = Err(anyhow!(e).context(format!("sending datagram {sent} to {dst}")));
            break;
        }
    }

    // Wait for the stragglers, at most 5 s after the last progress.
    let mut last = received.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while send_result.is_ok() && !receiver.is_finished() {
        let now = received.load(Ordering::SeqCst);
        if now >= count {
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= DATAGRAM_WAIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    abort.store(true, Ordering::SeqCst);
    let rx_result = receiver
        .join()
        .map_err(|_| anyhow!("UDP receiver thread panicked"))?;
    send_result?;
    rx_result.context("receiving UDP datagrams")?;
    Ok(received.load(Ordering::SeqCst))
}

/// Connects from `src` (bound in `from`; port 0 picks one) to a listener on `dst` (in `to`),
/// writes `bytes` bytes, shuts the write side down and waits for the receiver, which reads to
/// EOF and closes. Everything must finish within 10 s. Returns the bytes received.
///
/// The client closes first, so its end lingers in TIME_WAIT for a minute: reusing the same
/// fixed `src` port towards the same `dst` within that time fails to connect.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: usize,
) -> Result<usize> {
    ensure!(
        src.is_ipv4() == dst.is_ipv4(),
        "tcp_transfer: {src} and {dst} differ in family"
    );
    let deadline = Instant::now() + TCP_TIMEOUT;
    let remaining = move || deadline.saturating_duration_since(Instant::now());

    let listener = to
        .run_in(move || -> io::Result<TcpListener> {
            let l = TcpListener::bind(dst)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?
        .with_context(|| format!("listening on {dst} in {}", to.name()))?;
    let client: OwnedFd = from
        .run_in(move || -> io::Result<OwnedFd> {
            let domain = if src.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let fd = sys::socket(domain, libc::SOCK_STREAM, 0)?;
            sys::setsockopt::<libc::c_int>(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            sys::bind(fd.as_fd(), src)?;
            Ok(fd)
        })?
        .with_context(|| format!("binding the TCP client to {src} in {}", from.name()))?;

    let abort = Arc::new(AtomicBool::new(false));
    let _stop = AbortOnDrop(abort.clone());
    let server = {
        let abort = abort.clone();
        std::thread::Builder::new().name("tcp-rx".into()).spawn(
            move || -> Result<(usize, SocketAddr)> {
                let (mut stream, peer) = loop {
                    match listener.accept() {
                        Ok(conn) => break conn,
                        Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(anyhow!(e).context("accept")),
                    }
                    if abort.load(Ordering::SeqCst) || remaining().is_zero() {
                        bail!("no connection to {dst} within {TCP_TIMEOUT:?}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(POLL))?;
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0usize;
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(anyhow!(e).context(format!("reading from {peer}"))),
                    }
                    if abort.load(Ordering::SeqCst) || remaining().is_zero() {
                        bail!("receiver got {total} of the bytes, no EOF within {TCP_TIMEOUT:?}");
                    }
                }
                Ok((total, peer))
            },
        )?
    };

    let client_result = (|| -> Result<SocketAddr> {
        // A blocking connect honours SO_SNDTIMEO (and fails with EINPROGRESS when it expires).
        sys::set_timeout(client.as_fd(), libc::SO_SNDTIMEO, remaining())?;
        sys::connect(client.as_fd(), dst).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINPROGRESS) {
                anyhow!("connect {src} -> {dst} timed out")
            } else {
                anyhow!(e).context(format!("connect {src} -> {dst}"))
            }
        })?;
        let mut stream = TcpStream::from(client);
        let local = stream.local_addr()?;
        let data = pattern(bytes.min(64 << 10), 0xa5);
        let mut left = bytes;
        while left > 0 {
            stream.set_write_timeout(Some(remaining().max(Duration::from_millis(1))))?;
            let chunk = left.min(data.len());
            stream
                .write_all(&data[..chunk])
                .with_context(|| format!("writing to {dst}"))?;
            left -= chunk;
        }
        stream.shutdown(Shutdown::Write)?;
        // Wait for the receiver's close (EOF) so the exchange is complete on return.
        let mut sink = [0u8; 4096];
        loop {
            stream.set_read_timeout(Some(remaining().max(Duration::from_millis(1))))?;
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => bail!("no close from {dst} within {TCP_TIMEOUT:?}"),
                Err(e) => return Err(anyhow!(e).context(format!("waiting for {dst} to close"))),
            }
            if remaining().is_zero() {
                bail!("no close from {dst} within {TCP_TIMEOUT:?}");
            }
        }
        Ok(local)
    })();
    if client_result.is_err() {
        abort.store(true, Ordering::SeqCst);
    }
    let server_result = server
        .join()
        .map_err(|_| anyhow!("TCP receiver thread panicked"))?;
    let local = client_result?;
    let (total, peer) = server_result?;
    ensure!(
        peer == local,
        "receiver accepted {peer}, expected the client at {local}"
    );
    Ok(total)
}

/// Sends `count` ICMP (IPv4) or ICMPv6 echo requests with identifier `ident`, sequence numbers
/// 0..count and `payload` data bytes from `src` to `dst` over a raw socket created in `from`,
/// and waits (at most 5 s after the last reply) for the matching replies from `dst`. Returns
/// the number of distinct replies. `count` is at most 65536 (one per sequence number).
///
/// Replies are matched on identifier only, so concurrent calls in one namespace need
/// different identifiers.
pub fn icmp_echo(
    from: &Netns,
    src: IpAddr,
    dst: IpAddr,
    count: u32,
    payload: usize,
    ident: u16,
) -> Result<u32> {
    ensure!(
        src.is_ipv4() == dst.is_ipv4(),
        "icmp_echo: {src} and {dst} differ in family"
    );
    ensure!(
        count <= 1 << 16,
        "icmp_echo: at most 65536 requests (one per sequence number)"
    );
    ensure!(payload <= 65_000, "icmp_echo: payload too large");
    let v4 = src.is_ipv4();
    let fd = from
        .run_in(move || -> io::Result<OwnedFd> {
            let fd = if v4 {
                sys::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?
            } else {
                sys::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?
            };
            sys::bind(fd.as_fd(), SocketAddr::new(src, 0))?;
            sys::set_rcvbuf(fd.as_fd(), RCVBUF)?;
            Ok(fd)
        })?
        .with_context(|| format!("opening a raw ICMP socket on {src} in {}", from.name()))?;

    let data = pattern(payload, 0x3c);
    let (request_type, reply_type) = if v4 { (8u8, 0u8) } else { (128u8, 129u8) };
    let mut replies: HashSet<u16> = HashSet::new();
    let mut buf = vec![0u8; 65_536 + 128];

    // Reads replies until none is pending (`wait` zero) or until all arrived / no progress
    // for `wait` since `last_progress`.
    let mut collect =
        |replies: &mut HashSet<u16>, last_progress: &mut Instant, wait: Duration| -> Result<()> {
            loop {
                if replies.len() as u32 >= count {
                    return Ok(());
                }
                let budget = if wait.is_zero() {
                    Duration::ZERO
                } else {
                    let left = wait.saturating_sub(last_progress.elapsed());
                    if left.is_zero() {
                        return Ok(());
                    }
                    left.min(POLL)
                };
                if !sys::poll_readable(fd.as_fd(), budget)? {
                    if wait.is_zero() {
                        return Ok(());
                    }
                    continue;
                }
                let (n, peer) = match sys::recvfrom::<libc::sockaddr_storage>(
                    fd.as_fd(),
                    &mut buf,
                    libc::MSG_DONTWAIT,
                ) {
                    Ok(r) => r,
                    Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(anyhow!(e).context("receiving ICMP")),
                };
                let pkt = &buf[..n];
                // IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
                let icmp = if v4 {
                    let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
                    if pkt.len() < ihl + 8 || ihl < 20 || pkt[9] != libc::IPPROTO_ICMP as u8 {
                        continue;
                    }
                    if IpAddr::from([pkt[12], pkt[13], pkt[14], pkt[15]]) != dst {
                        continue;
                    }
                    &pkt[ihl..]
                } else {
                    if sys::from_sockaddr(&peer).map(|a| a.ip()) != Some(dst) || pkt.len() < 8 {
                        continue;
                    }
                    pkt
                };
                let id = u16::from_be_bytes([icmp[4], icmp[5]]);
                let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
                if icmp[0] == reply_type
                    && icmp[1] == 0
                    && id == ident
                    && u32::from(seq) < count
                    && icmp[8..] == data[..]
                    && replies.insert(seq)
                {
                    *last_progress = Instant::now();
                }
            }
        };

    let dst_sa = SocketAddr::new(dst, 0);
    let mut msg = vec![0u8; 8 + payload];
    msg[0] = request_type;
    msg[4..6].copy_from_slice(&ident.to_be_bytes());
    msg[8..].copy_from_slice(&data);
    for seq in 0..count {
        let seq = seq as u16;
        msg[2..4].copy_from_slice(&[0, 0]);
        msg[6..8].copy_from_slice(&seq.to_be_bytes());
        if v4 {
            // The kernel fills in the ICMPv6 checksum itself, not the ICMPv4 one.
            let sum = internet_checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        sys::sendto(fd.as_fd(), &msg, dst_sa)
            .with_context(|| format!("sending echo request {seq} to {dst}"))?;
        collect(&mut replies, &mut Instant::now(), Duration::ZERO)?;
    }
    collect(&mut replies, &mut Instant::now(), DATAGRAM_WAIT)?;
    Ok(replies.len() as u32)
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::internet_checksum;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // Odd length pads with zero.
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }
}
