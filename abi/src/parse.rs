//! The packet parser, shared by the kernel probe and user space.
//!
//! The code is generic over [`Packet`], so the eBPF program (direct packet access, bounds-checked
//! against `data_end`) and user-space tests (a byte slice) run the very same decisions. The rules:
//!
//! * Ethernet, then up to two VLAN tags (802.1Q `0x8100`, 802.1ad `0x88a8`); the outer VID is
//!   kept. A third tag makes the frame [`Parsed::Unparsed`].
//! * Frames that are neither IPv4 nor IPv6 are [`Parsed::NonIp`].
//! * IPv4: version 4, IHL >= 5, total length >= IHL*4 and the whole datagram present in the frame
//!   (Ethernet padding after it is ignored). IPv6: version 6 and `40 + payload length` present.
//!   Otherwise the packet is truncated or malformed: [`Parsed::Unparsed`], never keyed.
//! * IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are walked up to
//!   [`MAX_IPV6_EXT_HEADERS`]; a longer chain is unparsed. Each header must lie inside the datagram.
//! * Non-first fragments (IPv4 offset != 0, IPv6 fragment offset != 0) carry no transport header:
//!   they are keyed with ports, ICMP type and code zero. The protocol of an IPv6 non-first fragment
//!   is the fragment header's next header, i.e. whatever starts the fragmentable part; when that is
//!   a destination-options header (RFC 8200 order) it is 60, not the transport, because the
//!   transport is only named in the first fragment. Without reassembly no exporter can do better.
//! * TCP needs its 20-byte header (data offset >= 5), UDP/UDP-Lite 8 bytes, SCTP its 12-byte common
//!   header, ICMP (in IPv4) and ICMPv6 (in IPv6) 8 bytes, all inside the datagram; a transport header
//!   that is cut short makes the packet unparsed. Other protocols are keyed without ports.
//! * `ip_len` is the IP-layer length (IPFIX octetDeltaCount): IPv4 total length, IPv6 40 + payload.

use crate::flow::*;

/// Longest IPv6 extension-header chain the parser walks.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Bytes of a packet, read with bounds checks.
pub trait Packet {
    /// `N` bytes at offset `off`, or `None` if the packet ends before `off + N`.
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
    /// Whether the packet holds at least `end` bytes.
    fn covers(&self, end: usize) -> bool;
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let s = self.get(off..off.checked_add(N)?)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Some(out)
    }
    #[inline(always)]
    fn covers(&self, end: usize) -> bool {
        end <= self.len()
    }
}

/// What the parser made of one packet (the flow key lacks `ifindex` and `observation_point`,
/// which the caller fills in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Flow(FlowMeta),
    NonIp,
    Unparsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowMeta {
    pub key: FlowKey,
    /// IP-layer length of this packet.
    pub ip_len: u32,
    /// TCP flags (bit 8 = NS), zero for other protocols.
    pub tcp_flags: u16,
    pub dscp: u8,
}

impl FlowMeta {
    /// Where [`parse_ethernet_into`] and friends start: a zero key (VLAN [`VLAN_NONE`]).
    pub const EMPTY: FlowMeta = FlowMeta {
        key: FlowKey::ZERO,
        ip_len: 0,
        tcp_flags: 0,
        dscp: 0,
    };
}

/// [`Parsed`] without its flow: what the `*_into` parsers return. They write the flow into a
/// caller's [`FlowMeta`] (which must start as [`FlowMeta::EMPTY`]) instead of returning it, so
/// the probe keeps one key on its stack and its early exits carry one small number, not a
/// 56-byte value (which LLVM's BPF code generation spilled to the stack at every exit). The
/// meta is meaningful only after [`Outcome::Flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Flow,
    NonIp,
    Unparsed,
}

#[inline(always)]
fn outcome(o: Outcome, m: FlowMeta) -> Parsed {
    match o {
        Outcome::Flow => Parsed::Flow(m),
        Outcome::NonIp => Parsed::NonIp,
        Outcome::Unparsed => Parsed::Unparsed,
    }
}

/// The 16 bytes of `h` at `at` as two 64-bit words: a plain slice copy here becomes, in the
/// probe, a call to an out-of-line byte-by-byte `memmove` from the packet (LLVM cannot tell the
/// packet from the key on the stack).
#[inline(always)]
fn addr16(h: &[u8; 40], at: usize) -> [u8; 16] {
    let w = |i: usize| {
        u64::from_ne_bytes([
            h[i],
            h[i + 1],
            h[i + 2],
            h[i + 3],
            h[i + 4],
            h[i + 5],
            h[i + 6],
            h[i + 7],
        ])
    };
    let (lo, hi) = (w(at).to_ne_bytes(), w(at + 8).to_ne_bytes());
    [
        lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4],
        hi[5], hi[6], hi[7],
    ]
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

/// Parses an Ethernet frame.
#[inline(always)]
pub fn parse_ethernet<P: Packet + ?Sized>(p: &P) -> Parsed {
    let mut m = FlowMeta::EMPTY;
    outcome(parse_ethernet_into(p, &mut m), m)
}

/// Parses an IPv4 datagram starting at `off`.
#[inline(always)]
pub fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize, vlan: u16) -> Parsed {
    let mut m = FlowMeta::EMPTY;
    outcome(parse_ipv4_into(p, off, vlan, &mut m), m)
}

/// Parses an IPv6 packet starting at `off`.
#[inline(always)]
pub fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize, vlan: u16) -> Parsed {
    let mut m = FlowMeta::EMPTY;
    outcome(parse_ipv6_into(p, off, vlan, &mut m), m)
}

/// [`parse_ethernet`], writing the flow into `m` (which starts as [`FlowMeta::EMPTY`]).
#[inline(always)]
pub fn parse_ethernet_into<P: Packet + ?Sized>(p: &P, m: &mut FlowMeta) -> Outcome {
    let Some(eth) = p.load::<14>(0) else {
        return Outcome::Unparsed;
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut off = 14usize;
    let mut vlan = VLAN_NONE;
    // Two tags at most: an unrolled pair keeps the verifier's job trivial.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = p.load::<4>(off) else {
            return Outcome::Unparsed;
        };
        vlan = be16(tag[0], tag[1]) & 0x0fff;
        ethertype = be16(tag[2], tag[3]);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = p.load::<4>(off) else {
                return Outcome::Unparsed;
            };
            ethertype = be16(tag[2], tag[3]);
            off += 4;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Outcome::Unparsed;
            }
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4_into(p, off, vlan, m),
        ETH_P_IPV6 => parse_ipv6_into(p, off, vlan, m),
        _ => Outcome::NonIp,
    }
}

/// [`parse_ipv4`], writing the flow into `m` (which starts as [`FlowMeta::EMPTY`]).
#[inline(always)]
pub fn parse_ipv4_into<P: Packet + ?Sized>(
    p: &P,
    off: usize,
    vlan: u16,
    m: &mut FlowMeta,
) -> Outcome {
    let Some(h) = p.load::<20>(off) else {
        return Outcome::Unparsed;
    };
    if h[0] >> 4 != 4 {
        return Outcome::Unparsed;
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16(h[2], h[3]) as usize;
    if ihl < 20 || total < ihl || !p.covers(off + total) {
        return Outcome::Unparsed;
    }
    let key = &mut m.key;
    key.ip_version = 4;
    key.vlan_id = vlan;
    key.protocol = h[9];
    key.src_addr[10] = 0xff;
    key.src_addr[11] = 0xff;
    key.src_addr[12..16].copy_from_slice(&h[12..16]);
    key.dst_addr[10] = 0xff;
    key.dst_addr[11] = 0xff;
    key.dst_addr[12..16].copy_from_slice(&h[16..20]);
    let first_fragment = be16(h[6], h[7]) & 0x1fff == 0;
    m.ip_len = total as u32;
    m.dscp = h[1] >> 2;
    if !first_fragment {
        return Outcome::Flow;
    }
    parse_transport(p, m, off + ihl, off + total, false)
}

/// [`parse_ipv6`], writing the flow into `m` (which starts as [`FlowMeta::EMPTY`]).
#[inline(always)]
pub fn parse_ipv6_into<P: Packet + ?Sized>(
    p: &P,
    off: usize,
    vlan: u16,
    m: &mut FlowMeta,
) -> Outcome {
    let Some(h) = p.load::<40>(off) else {
        return Outcome::Unparsed;
    };
    if h[0] >> 4 != 6 {
        return Outcome::Unparsed;
    }
    let total = 40 + be16(h[4], h[5]) as usize;
    let end = off + total;
    if !p.covers(end) {
        return Outcome::Unparsed;
    }
    let key = &mut m.key;
    key.ip_version = 6;
    key.vlan_id = vlan;
    key.src_addr = addr16(&h, 8);
    key.dst_addr = addr16(&h, 24);
    let traffic_class = ((h[0] & 0x0f) << 4) | (h[1] >> 4);
    let mut next = h[6];
    let mut cur = off + 40;
    let mut first_fragment = true;
    let mut ext = 0;
    while ext < MAX_IPV6_EXT_HEADERS {
        match next {
            0 | 43 | 60 => {
                let Some(e) = p.load::<2>(cur) else {
                    return Outcome::Unparsed;
                };
                let len = (e[1] as usize + 1) * 8;
                if cur + len > end {
                    return Outcome::Unparsed;
                }
                next = e[0];
                cur += len;
            }
            44 => {
                let Some(e) = p.load::<8>(cur) else {
                    return Outcome::Unparsed;
                };
                if cur + 8 > end {
                    return Outcome::Unparsed;
                }
                next = e[0];
                cur += 8;
                if be16(e[2], e[3]) >> 3 != 0 {
                    first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
        ext += 1;
    }
    if first_fragment && matches!(next, 0 | 43 | 44 | 60) {
        return Outcome::Unparsed;
    }
    m.key.protocol = next;
    m.ip_len = total as u32;
    m.dscp = traffic_class >> 2;
    if !first_fragment {
        return Outcome::Flow;
    }
    parse_transport(p, m, cur, end, true)
}

#[inline(always)]
fn parse_transport<P: Packet + ?Sized>(
    p: &P,
    meta: &mut FlowMeta,
    off: usize,
    end: usize,
    v6: bool,
) -> Outcome {
    let avail = end - off;
    match meta.key.protocol {
        IPPROTO_TCP => {
            let Some(t) = p.load::<20>(off) else {
                return Outcome::Unparsed;
            };
            if avail < 20 || (t[12] >> 4) < 5 {
                return Outcome::Unparsed;
            }
            meta.key.src_port = be16(t[0], t[1]);
            meta.key.dst_port = be16(t[2], t[3]);
            meta.tcp_flags = (((t[12] & 1) as u16) << 8) | t[13] as u16;
        }
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            let need = if meta.key.protocol == IPPROTO_SCTP {
                12
            } else {
                8
            };
            let Some(t) = p.load::<8>(off) else {
                return Outcome::Unparsed;
            };
            if avail < need || !p.covers(off + need) {
                return Outcome::Unparsed;
            }
            meta.key.src_port = be16(t[0], t[1]);
            meta.key.dst_port = be16(t[2], t[3]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if v6 == (meta.key.protocol == IPPROTO_ICMPV6) => {
            let Some(t) = p.load::<8>(off) else {
                return Outcome::Unparsed;
            };
            if avail < 8 {
                return Outcome::Unparsed;
            }
            meta.key.icmp_type = t[0];
            meta.key.icmp_code = t[1];
        }
        _ => {}
    }
    Outcome::Flow
}
