//! A random-source TCP SYN flood (what `hping3 --flood --rand-source` sends), bounded in packets
//! and time: Ethernet frames written to one end of a [`Link`] with an AF_PACKET socket, so that
//! every frame reaches the other end whatever its source address (no routing, no replies
//! needed). Each frame comes from a pseudo-random IPv4 source address and port in
//! 198.18.0.0/15 (RFC 2544's benchmarking range, never an address of a test link), to one
//! destination address and port: almost every packet opens a new flow.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::{Link, Netns, sys};

/// What a flood sends.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// Stop after this many frames were sent...
    pub max_packets: u64,
    /// ...or after this long, whichever comes first.
    pub max_duration: Duration,
    /// Frames per second at most (0: as fast as the socket takes them).
    pub rate: u64,
    /// Destination port of every SYN.
    pub dst_port: u16,
    /// Seed of the source addresses (two floods with one seed send the same sources).
    pub seed: u64,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// Frames the kernel accepted for transmission.
    pub packets: u64,
    /// Their IP-layer bytes (what flowlens counts as `bytes`).
    pub ip_bytes: u64,
    pub elapsed: Duration,
}

/// IP-layer length of each SYN: 20-byte IPv4 header + 20-byte TCP header.
pub const FLOOD_IP_LEN: u64 = 40;

/// The flood's source addresses lie in 198.18.0.0/15.
pub fn is_flood_source(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 198 && (o[1] & 0xfe) == 18
}

/// xorshift64*: deterministic, fast, good enough to spread sources.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One SYN frame from `src:sport` to `dst:dport`, checksums correct.
fn syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
) -> [u8; 54] {
    let mut f = [0u8; 54];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(FLOOD_IP_LEN as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = checksum(0, ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = 0u32;
    for w in [src.octets(), dst.octets()] {
        pseudo += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    pseudo += 6 + 20;
    let csum = checksum(pseudo, &f[34..54]);
    f[50..52].copy_from_slice(&csum.to_be_bytes());
    f
}

fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Floods from `a` (the namespace of `link.a_if`) to `link.b_v4`: see the module
/// documentation. Blocks until the bound in packets or time is reached.
pub fn syn_flood(a: &Netns, link: &Link, spec: &FloodSpec) -> Result<FloodReport> {
    ensure!(spec.max_packets > 0, "flood of zero packets");
    ensure!(
        spec.max_duration <= Duration::from_secs(120),
        "flood longer than 120 s"
    );
    let (ifname, src_mac, dst_mac, dst) = (link.a_if.clone(), link.a_mac, link.b_mac, link.b_v4);
    let spec = spec.clone();
    a.run_in(move || -> Result<FloodReport> {
        let index = sys::if_nametoindex(&ifname)?;
        // Protocol 0: a send-only socket (receives nothing).
        let fd: OwnedFd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst_mac);
        // SAFETY: binding our own socket to a valid sockaddr_ll of the right size.
        let r = unsafe {
            libc::bind(
                fd.as_fd().as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("binding the flood socket");
        }
        let mut state = spec.seed | 1;
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut no_buffer = 0u64;
        while sent < spec.max_packets {
            let elapsed = t0.elapsed();
            if elapsed >= spec.max_duration {
                break;
            }
            if spec.rate > 0 {
                let due = (elapsed.as_secs_f64() * spec.rate as f64) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
            }
            // A batch between clock reads.
            for _ in 0..64 {
                if sent >= spec.max_packets {
                    break;
                }
                let r = next(&mut state);
                let src = Ipv4Addr::from(0xc612_0000u32 | (r as u32 & 0x0001_ffff));
                let sport = 1024 + ((r >> 32) as u16 % 60_000);
                let frame = syn_frame(
                    src_mac,
                    dst_mac,
                    src,
                    dst,
                    sport,
                    spec.dst_port,
                    (r >> 40) as u32,
                );
                // SAFETY: sending a valid buffer of its own length on our own socket.
                let n = unsafe {
                    libc::send(
                        fd.as_fd().as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                    )
                };
                if n == frame.len() as isize {
                    sent += 1;
                } else {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == io::ErrorKind::WouldBlock
                    {
                        // The device queue is full: not sent, not counted; retry later.
                        no_buffer += 1;
                        ensure!(no_buffer < 100_000_000, "flood socket never drains");
                        std::thread::yield_now();
                        break;
                    }
                    return Err(e).context("sending a flood frame");
                }
            }
        }
        Ok(FloodReport {
            packets: sent,
            ip_bytes: sent * FLOOD_IP_LEN,
            elapsed: t0.elapsed(),
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = syn_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 19, 1, 2),
            Ipv4Addr::new(10, 1, 2, 2),
            4000,
            80,
            7,
        );
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().total_len(), 40);
        assert_eq!(checksum(0, &f[14..34]), 0);
        let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not tcp")
        };
        assert!(tcp.syn() && !tcp.ack());
        let sum = tcp
            .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
            .unwrap();
        assert_eq!(sum, tcp.checksum());
        assert!(is_flood_source(Ipv4Addr::new(198, 19, 1, 2)));
        assert!(!is_flood_source(Ipv4Addr::new(198, 20, 1, 2)));
        assert!(!is_flood_source(Ipv4Addr::new(10, 1, 2, 2)));
    }
}
