//! Unit tests of the user-space twin of the packet parser ([`crate::parse::parse_ethernet`] on a
//! byte slice). Frames are built by hand with the tiny builder below (no etherparse here, so the
//! schema crate keeps its dependency list); every test asserts the complete [`Parsed`] value.
//!
//! The kernel side of the same shapes is covered by `collector/tests/xdp_test_run.rs`.

extern crate std;

use std::{vec, vec::Vec};

use crate::flow::*;
use crate::parse::*;

// ------------------------------------------------------------------------------------------------
// A tiny frame builder.
// ------------------------------------------------------------------------------------------------

const MAC_DST: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];

const V4_SRC: [u8; 4] = [192, 0, 2, 1];
const V4_DST: [u8; 4] = [198, 51, 100, 7];
const V6_SRC: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0x01,
];
const V6_DST: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xcd, 0, 0, 0x02,
];

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_LLDP: u16 = 0x88cc;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// TCP flag bits as the parser reports them (bit 8 = NS).
const FIN: u16 = 0x001;
const SYN: u16 = 0x002;
const RST: u16 = 0x004;
const PSH: u16 = 0x008;
const ACK: u16 = 0x010;
const URG: u16 = 0x020;
const ECE: u16 = 0x040;
const CWR: u16 = 0x080;
const NS: u16 = 0x100;

/// Ethernet II frame: `tags` are (TPID, TCI) pairs written outermost first.
fn ether(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    for &(tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn eth_v4(payload: &[u8]) -> Vec<u8> {
    ether(&[], ETH_P_IPV4, payload)
}

fn eth_v6(payload: &[u8]) -> Vec<u8> {
    ether(&[], ETH_P_IPV6, payload)
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header description; the defaults make a valid header.
#[derive(Clone)]
struct V4 {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    /// The whole TOS byte (DSCP << 2 | ECN).
    tos: u8,
    /// Option bytes (padded by the caller to a multiple of 4).
    options: Vec<u8>,
    /// Flags (3 bits) and fragment offset (13 bits), as on the wire.
    frag: u16,
    /// Overrides of the IHL nibble and the total-length field.
    ihl: Option<u8>,
    total_len: Option<u16>,
    version: u8,
}

fn v4(proto: u8) -> V4 {
    V4 {
        src: V4_SRC,
        dst: V4_DST,
        proto,
        tos: 0,
        options: Vec::new(),
        frag: 0x4000, // DF
        ihl: None,
        total_len: None,
        version: 4,
    }
}

impl V4 {
    fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }
    fn options(mut self, n: usize) -> Self {
        // NOPs, ending with an End-of-options byte.
        self.options = vec![1u8; n];
        if n > 0 {
            self.options[n - 1] = 0;
        }
        self
    }
    fn frag(mut self, more_fragments: bool, offset_units: u16) -> Self {
        self.frag = (u16::from(more_fragments) << 13) | offset_units;
        self
    }
    fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }
    fn total_len(mut self, total: u16) -> Self {
        self.total_len = Some(total);
        self
    }
    fn version(mut self, v: u8) -> Self {
        self.version = v;
        self
    }
    fn header_len(&self) -> usize {
        20 + self.options.len()
    }
    fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let ihl = self.ihl.unwrap_or((5 + self.options.len() / 4) as u8);
        let total = self
            .total_len
            .unwrap_or((self.header_len() + payload.len()) as u16);
        let mut h = vec![(self.version << 4) | (ihl & 0x0f), self.tos];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1c46u16.to_be_bytes()); // identification
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(64); // TTL
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// IPv6 packet with next header `next`, traffic class `tc` and `payload` (extension headers
/// included). `plen` overrides the payload-length field.
fn ipv6(next: u8, tc: u8, payload: &[u8], plen: Option<u16>) -> Vec<u8> {
    let plen = plen.unwrap_or(payload.len() as u16);
    let flow_label: u32 = 0x9_abcd;
    let word = (6u32 << 28) | (u32::from(tc) << 20) | flow_label;
    let mut h = Vec::with_capacity(40 + payload.len());
    h.extend_from_slice(&word.to_be_bytes());
    h.extend_from_slice(&plen.to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&V6_SRC);
    h.extend_from_slice(&V6_DST);
    h.extend_from_slice(payload);
    h
}

/// TCP header with `flags` (bit 8 = NS), data offset `doff` (in words) and `opt_len` option bytes.
fn tcp(sport: u16, dport: u16, flags: u16, doff: u8, opt_len: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + opt_len);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    t.push((doff << 4) | ((flags >> 8) as u8 & 1));
    t.push(flags as u8);
    t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent pointer
    t.extend(core::iter::repeat_n(1u8, opt_len));
    t
}

/// A plain 20-byte TCP header.
fn tcp20(sport: u16, dport: u16, flags: u16) -> Vec<u8> {
    tcp(sport, dport, flags, 5, 0)
}

fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend((0..payload_len).map(|i| i as u8));
    u
}

fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]); // verification tag, checksum
    s
}

fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0x12, 0x34, 0x00, 0x01]
}

/// A hop-by-hop / routing / destination-options header of `(hdr_ext_len + 1) * 8` bytes.
fn ext(next: u8, hdr_ext_len: u8) -> Vec<u8> {
    let mut e = vec![0u8; (usize::from(hdr_ext_len) + 1) * 8];
    e[0] = next;
    e[1] = hdr_ext_len;
    // PadN option filling the rest (harmless for routing headers here: type/segments left).
    e[2] = 1;
    e[3] = (e.len() - 4) as u8;
    e
}

/// A fragment header (8 bytes), offset in 8-byte units.
fn frag6(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut e = vec![next, 0];
    e.extend_from_slice(&field.to_be_bytes());
    e.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    e
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

// ------------------------------------------------------------------------------------------------
// Expected values.
// ------------------------------------------------------------------------------------------------

fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The key of a v4 test flow (default addresses, no VLAN).
fn key4(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: mapped(V4_SRC),
        dst_addr: mapped(V4_DST),
        src_port,
        dst_port,
        vlan_id: VLAN_NONE,
        ip_version: 4,
        protocol,
        icmp_type: 0,
        icmp_code: 0,
        observation_point: 0,
        _pad: 0,
        ifindex: 0,
    }
}

fn key6(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: V6_SRC,
        dst_addr: V6_DST,
        src_port,
        dst_port,
        vlan_id: VLAN_NONE,
        ip_version: 6,
        protocol,
        icmp_type: 0,
        icmp_code: 0,
        observation_point: 0,
        _pad: 0,
        ifindex: 0,
    }
}

fn flow(key: FlowKey, ip_len: u32, tcp_flags: u16, dscp: u8) -> Parsed {
    Parsed::Flow(FlowMeta {
        key,
        ip_len,
        tcp_flags,
        dscp,
    })
}

fn parse(frame: &[u8]) -> Parsed {
    parse_ethernet(frame)
}

// ------------------------------------------------------------------------------------------------
// IPv4.
// ------------------------------------------------------------------------------------------------

#[test]
fn ipv4_tcp() {
    // DSCP 46 (EF) with ECN CE: the ECN bits must not leak into dscp.
    let seg = cat(&[&tcp20(40000, 443, SYN | ACK | NS), &payload(10)]);
    let f = eth_v4(&v4(IPPROTO_TCP).tos((46 << 2) | 3).build(&seg));
    assert_eq!(
        parse(&f),
        flow(key4(IPPROTO_TCP, 40000, 443), 50, SYN | ACK | NS, 46)
    );
}

#[test]
fn ipv4_tcp_every_flag_bit() {
    for bit in 0..9 {
        let flags = 1u16 << bit;
        let f = eth_v4(&v4(IPPROTO_TCP).build(&tcp20(1, 2, flags)));
        assert_eq!(
            parse(&f),
            flow(key4(IPPROTO_TCP, 1, 2), 40, flags, 0),
            "flag bit {bit}"
        );
    }
    let all = FIN | SYN | RST | PSH | ACK | URG | ECE | CWR | NS;
    assert_eq!(all, 0x1ff);
    let f = eth_v4(&v4(IPPROTO_TCP).build(&tcp20(65535, 0, all)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_TCP, 65535, 0), 40, all, 0));
    // The three reserved bits between data offset and NS are not flags.
    let mut seg = tcp20(7, 8, ACK);
    seg[12] |= 0x0e;
    let f = eth_v4(&v4(IPPROTO_TCP).build(&seg));
    assert_eq!(parse(&f), flow(key4(IPPROTO_TCP, 7, 8), 40, ACK, 0));
}

#[test]
fn ipv4_tcp_with_options_keyed_by_fixed_header() {
    // Data offset 15 (60-byte header) fully present.
    let seg = cat(&[&tcp(5000, 80, PSH | ACK, 15, 40), &payload(3)]);
    let f = eth_v4(&v4(IPPROTO_TCP).build(&seg));
    assert_eq!(
        parse(&f),
        flow(key4(IPPROTO_TCP, 5000, 80), 83, PSH | ACK, 0)
    );
    // Documented rule: TCP needs its 20-byte header only, so options cut short by the datagram
    // end still key the packet.
    let seg = tcp(5000, 80, FIN, 15, 0);
    let f = eth_v4(&v4(IPPROTO_TCP).build(&seg));
    assert_eq!(parse(&f), flow(key4(IPPROTO_TCP, 5000, 80), 40, FIN, 0));
}

#[test]
fn ipv4_udp() {
    let f = eth_v4(&v4(IPPROTO_UDP).tos(0x28 << 2).build(&udp(53, 33000, 30)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 53, 33000), 58, 0, 0x28));
}

#[test]
fn ipv4_udplite() {
    let f = eth_v4(&v4(IPPROTO_UDPLITE).build(&udp(1234, 5678, 4)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDPLITE, 1234, 5678), 32, 0, 0));
}

#[test]
fn ipv4_sctp() {
    let seg = cat(&[&sctp(2905, 36412), &payload(16)]);
    let f = eth_v4(&v4(IPPROTO_SCTP).tos(0xff).build(&seg));
    assert_eq!(parse(&f), flow(key4(IPPROTO_SCTP, 2905, 36412), 48, 0, 63));
}

#[test]
fn ipv4_icmp() {
    let f = eth_v4(&v4(IPPROTO_ICMP).build(&cat(&[&icmp(8, 0), &payload(56)])));
    let key = FlowKey {
        icmp_type: 8,
        ..key4(IPPROTO_ICMP, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 84, 0, 0));

    let f = eth_v4(&v4(IPPROTO_ICMP).build(&icmp(3, 13)));
    let key = FlowKey {
        icmp_type: 3,
        icmp_code: 13,
        ..key4(IPPROTO_ICMP, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 28, 0, 0));
}

#[test]
fn ipv4_with_every_option_length() {
    for ihl in 6u8..=15 {
        let opts = usize::from(ihl - 5) * 4;
        let hdr = v4(IPPROTO_TCP).options(opts);
        assert_eq!(hdr.header_len(), usize::from(ihl) * 4);
        let seg = cat(&[&tcp20(1000 + u16::from(ihl), 22, ACK), &payload(5)]);
        let f = eth_v4(&hdr.tos(4 << 2).build(&seg));
        let ip_len = (usize::from(ihl) * 4 + 25) as u32;
        assert_eq!(
            parse(&f),
            flow(key4(IPPROTO_TCP, 1000 + u16::from(ihl), 22), ip_len, ACK, 4),
            "ihl {ihl}"
        );

        let f = eth_v4(&v4(IPPROTO_UDP).options(opts).build(&udp(9, 10, 0)));
        assert_eq!(
            parse(&f),
            flow(key4(IPPROTO_UDP, 9, 10), (opts + 28) as u32, 0, 0),
            "ihl {ihl}"
        );
    }
}

#[test]
fn ipv4_first_fragment_has_ports() {
    // MF set, offset 0: the transport header is present and keyed.
    let seg = cat(&[&udp(4000, 4001, 1000)[..16]]);
    let f = eth_v4(&v4(IPPROTO_UDP).frag(true, 0).build(&seg));
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 4000, 4001), 36, 0, 0));
    let f = eth_v4(&v4(IPPROTO_TCP).frag(true, 0).build(&tcp20(80, 8080, ACK)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_TCP, 80, 8080), 40, ACK, 0));
}

#[test]
fn ipv4_non_first_fragment_has_no_ports() {
    // Offset != 0 (with and without MF): the payload is fragment data, even if it looks like a
    // transport header.
    for (more, off) in [(true, 1u16), (false, 185), (true, 0x1fff)] {
        let data = cat(&[&tcp20(80, 8080, SYN), &payload(8)]);
        let f = eth_v4(&v4(IPPROTO_TCP).frag(more, off).tos(8 << 2).build(&data));
        assert_eq!(
            parse(&f),
            flow(key4(IPPROTO_TCP, 0, 0), 48, 0, 8),
            "MF {more} offset {off}"
        );
        let f = eth_v4(&v4(IPPROTO_UDP).frag(more, off).build(&udp(1, 2, 0)));
        assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 0, 0), 28, 0, 0));
        let f = eth_v4(&v4(IPPROTO_ICMP).frag(more, off).build(&icmp(8, 0)));
        assert_eq!(parse(&f), flow(key4(IPPROTO_ICMP, 0, 0), 28, 0, 0));
        // A non-first fragment needs no transport bytes at all.
        let f = eth_v4(&v4(IPPROTO_TCP).frag(more, off).build(&[0xaa; 3]));
        assert_eq!(parse(&f), flow(key4(IPPROTO_TCP, 0, 0), 23, 0, 0));
        let f = eth_v4(&v4(IPPROTO_SCTP).frag(more, off).build(&[]));
        assert_eq!(parse(&f), flow(key4(IPPROTO_SCTP, 0, 0), 20, 0, 0));
    }
    // Flag bits alone (DF, reserved) do not make a fragment.
    let f = eth_v4(
        &V4 {
            frag: 0xc000,
            ..v4(IPPROTO_UDP)
        }
        .build(&udp(1, 2, 0)),
    );
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 1, 2), 28, 0, 0));
}

#[test]
fn ipv4_unknown_protocol_keyed_without_ports() {
    // GRE: the first bytes would be "ports" if the parser guessed.
    let gre = [0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x14];
    let f = eth_v4(&v4(IPPROTO_GRE).tos(10 << 2).build(&gre));
    assert_eq!(parse(&f), flow(key4(IPPROTO_GRE, 0, 0), 28, 0, 10));
    let f = eth_v4(&v4(IPPROTO_GRE).build(&[]));
    assert_eq!(parse(&f), flow(key4(IPPROTO_GRE, 0, 0), 20, 0, 0));
    let f = eth_v4(&v4(255).build(&payload(40)));
    assert_eq!(parse(&f), flow(key4(255, 0, 0), 60, 0, 0));
}

#[test]
fn icmp_in_the_wrong_ip_version_has_no_type() {
    // ICMPv6 over IPv4 and ICMP over IPv6 are other protocols: no type/code.
    let f = eth_v4(&v4(IPPROTO_ICMPV6).build(&icmp(128, 0)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_ICMPV6, 0, 0), 28, 0, 0));
    let f = eth_v6(&ipv6(IPPROTO_ICMP, 0, &icmp(8, 0), None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_ICMP, 0, 0), 48, 0, 0));
    // ... and need no 8 bytes either.
    let f = eth_v4(&v4(IPPROTO_ICMPV6).build(&[1, 2]));
    assert_eq!(parse(&f), flow(key4(IPPROTO_ICMPV6, 0, 0), 22, 0, 0));
}

#[test]
fn ethernet_padding_is_not_counted() {
    // 28-byte UDP datagram padded to the 60-byte Ethernet minimum with non-zero garbage.
    let mut f = eth_v4(&v4(IPPROTO_UDP).build(&udp(67, 68, 0)));
    assert_eq!(f.len(), 42);
    f.resize(60, 0xa5);
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 67, 68), 28, 0, 0));
    // A frame check sequence or other trailer after an IPv6 packet is ignored too.
    let mut f = eth_v6(&ipv6(IPPROTO_UDP, 0, &udp(546, 547, 0), None));
    f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDP, 546, 547), 48, 0, 0));
    // The transport header must lie inside the datagram, not in the padding: a 19-byte "TCP
    // header" followed by padding is unparsed.
    let mut f = eth_v4(&v4(IPPROTO_TCP).build(&tcp20(1, 2, SYN)[..19]));
    f.resize(80, 0);
    assert_eq!(parse(&f), Parsed::Unparsed);
}

// ------------------------------------------------------------------------------------------------
// IPv6.
// ------------------------------------------------------------------------------------------------

#[test]
fn ipv6_tcp() {
    // Traffic class 0xb9 = DSCP 46, ECN 1; the nibbles straddle bytes 0 and 1.
    let seg = cat(&[
        &tcp20(443, 51000, PSH | ACK | ECE | CWR | NS),
        &payload(100),
    ]);
    let f = eth_v6(&ipv6(IPPROTO_TCP, 0xb9, &seg, None));
    assert_eq!(
        parse(&f),
        flow(
            key6(IPPROTO_TCP, 443, 51000),
            160,
            PSH | ACK | ECE | CWR | NS,
            46
        )
    );
}

#[test]
fn ipv6_udp() {
    let f = eth_v6(&ipv6(IPPROTO_UDP, 0x28, &udp(5353, 5353, 20), None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDP, 5353, 5353), 68, 0, 10));
}

#[test]
fn ipv6_sctp_and_udplite() {
    let f = eth_v6(&ipv6(IPPROTO_SCTP, 0, &sctp(9, 10), None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_SCTP, 9, 10), 52, 0, 0));
    let f = eth_v6(&ipv6(IPPROTO_UDPLITE, 0, &udp(11, 12, 0), None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDPLITE, 11, 12), 48, 0, 0));
}

#[test]
fn ipv6_icmpv6() {
    let f = eth_v6(&ipv6(
        IPPROTO_ICMPV6,
        0,
        &cat(&[&icmp(128, 0), &payload(56)]),
        None,
    ));
    let key = FlowKey {
        icmp_type: 128,
        ..key6(IPPROTO_ICMPV6, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 104, 0, 0));
    let f = eth_v6(&ipv6(IPPROTO_ICMPV6, 0xfc, &icmp(1, 4), None));
    let key = FlowKey {
        icmp_type: 1,
        icmp_code: 4,
        ..key6(IPPROTO_ICMPV6, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 48, 0, 63));
}

#[test]
fn ipv6_extension_chain_first_fragment_has_ports() {
    // HBH -> routing (16 bytes) -> destination options -> fragment (offset 0, MF) -> TCP.
    let tail = cat(&[&tcp20(22, 60000, ACK), &payload(20)]);
    let p = cat(&[
        &ext(IPPROTO_ROUTING, 0),
        &ext(IPPROTO_DSTOPTS, 1),
        &ext(IPPROTO_FRAGMENT, 0),
        &frag6(IPPROTO_TCP, 0, true),
        &tail,
    ]);
    assert_eq!(p.len(), 8 + 16 + 8 + 8 + 40);
    let f = eth_v6(&ipv6(IPPROTO_HOPOPTS, 0, &p, None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_TCP, 22, 60000), 120, ACK, 0));

    // Atomic fragment (offset 0, no MF) after the chain, UDP.
    let p = cat(&[
        &ext(IPPROTO_FRAGMENT, 2),
        &frag6(IPPROTO_UDP, 0, false),
        &udp(1, 2, 3),
    ]);
    let f = eth_v6(&ipv6(IPPROTO_DSTOPTS, 0, &p, None));
    assert_eq!(
        parse(&f),
        flow(key6(IPPROTO_UDP, 1, 2), 40 + 24 + 8 + 11, 0, 0)
    );

    // Routing -> ICMPv6.
    let p = cat(&[&ext(IPPROTO_ICMPV6, 0), &icmp(135, 0)]);
    let f = eth_v6(&ipv6(IPPROTO_ROUTING, 0, &p, None));
    let key = FlowKey {
        icmp_type: 135,
        ..key6(IPPROTO_ICMPV6, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 56, 0, 0));
}

#[test]
fn ipv6_extension_chain_non_first_fragment_has_no_ports() {
    let data = cat(&[&tcp20(22, 60000, SYN), &payload(4)]);
    for more in [false, true] {
        let p = cat(&[
            &ext(IPPROTO_ROUTING, 0),
            &ext(IPPROTO_DSTOPTS, 0),
            &ext(IPPROTO_FRAGMENT, 0),
            &frag6(IPPROTO_TCP, 3, more),
            &data,
        ]);
        let f = eth_v6(&ipv6(IPPROTO_HOPOPTS, 0x40, &p, None));
        assert_eq!(
            parse(&f),
            flow(key6(IPPROTO_TCP, 0, 0), 40 + 32 + 24, 0, 16),
            "MF {more}"
        );
    }
    // Directly after the fixed header, with no data at all, and with the largest offset.
    let f = eth_v6(&ipv6(
        IPPROTO_FRAGMENT,
        0,
        &frag6(IPPROTO_UDP, 0x1fff, false),
        None,
    ));
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDP, 0, 0), 48, 0, 0));
    let f = eth_v6(&ipv6(
        IPPROTO_FRAGMENT,
        0,
        &cat(&[&frag6(IPPROTO_ICMPV6, 1, true), &icmp(128, 0)]),
        None,
    ));
    assert_eq!(parse(&f), flow(key6(IPPROTO_ICMPV6, 0, 0), 56, 0, 0));
    // The protocol is the fragment header's next header, whatever it is.
    let f = eth_v6(&ipv6(
        IPPROTO_FRAGMENT,
        0,
        &cat(&[&frag6(IPPROTO_DSTOPTS, 1, true), &[0; 8]]),
        None,
    ));
    assert_eq!(parse(&f), flow(key6(IPPROTO_DSTOPTS, 0, 0), 56, 0, 0));
}

#[test]
fn ipv6_extension_chain_bound() {
    // n destination-options headers (each 8 bytes) followed by UDP.
    let chain = |n: usize, last_next: u8| {
        let mut p = Vec::new();
        for i in 0..n {
            p.extend(ext(
                if i + 1 == n {
                    last_next
                } else {
                    IPPROTO_DSTOPTS
                },
                0,
            ));
        }
        p
    };
    for n in 0..=MAX_IPV6_EXT_HEADERS {
        let p = cat(&[&chain(n, IPPROTO_UDP), &udp(7, 9, 0)]);
        let first = if n == 0 { IPPROTO_UDP } else { IPPROTO_DSTOPTS };
        let f = eth_v6(&ipv6(first, 0, &p, None));
        assert_eq!(
            parse(&f),
            flow(key6(IPPROTO_UDP, 7, 9), (48 + 8 * n) as u32, 0, 0),
            "{n} headers"
        );
    }
    // One more than the bound: unparsed, also when the extra one is a fragment header.
    let n = MAX_IPV6_EXT_HEADERS + 1;
    let p = cat(&[&chain(n, IPPROTO_UDP), &udp(7, 9, 0)]);
    let f = eth_v6(&ipv6(IPPROTO_DSTOPTS, 0, &p, None));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let p = cat(&[
        &chain(MAX_IPV6_EXT_HEADERS, IPPROTO_FRAGMENT),
        &frag6(IPPROTO_UDP, 0, true),
        &udp(7, 9, 0),
    ]);
    let f = eth_v6(&ipv6(IPPROTO_DSTOPTS, 0, &p, None));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let p = cat(&[
        &chain(MAX_IPV6_EXT_HEADERS, IPPROTO_FRAGMENT),
        &frag6(IPPROTO_UDP, 5, true),
        &udp(7, 9, 0),
    ]);
    let f = eth_v6(&ipv6(IPPROTO_DSTOPTS, 0, &p, None));
    assert_eq!(parse(&f), Parsed::Unparsed);
    // Six headers followed by "no next header" are keyed.
    let f = eth_v6(&ipv6(
        IPPROTO_DSTOPTS,
        0,
        &chain(MAX_IPV6_EXT_HEADERS, IPPROTO_NONE),
        None,
    ));
    assert_eq!(parse(&f), flow(key6(IPPROTO_NONE, 0, 0), 40 + 48, 0, 0));
}

#[test]
fn ipv6_extension_headers_must_lie_inside_the_datagram() {
    // A 16-byte routing header in a datagram holding only 8 bytes of it (frame holds all 16).
    let mut f = eth_v6(&ipv6(IPPROTO_ROUTING, 0, &ext(IPPROTO_NONE, 1), Some(8)));
    assert_eq!(f.len(), 14 + 40 + 16);
    assert_eq!(parse(&f), Parsed::Unparsed);
    f.truncate(14 + 48);
    assert_eq!(parse(&f), Parsed::Unparsed);
    // Chain ends with an extension header but the datagram ends right after the previous one.
    let f = eth_v6(&ipv6(IPPROTO_DSTOPTS, 0, &ext(IPPROTO_DSTOPTS, 0), None));
    assert_eq!(parse(&f), Parsed::Unparsed);
    // Fragment header cut short by the payload length.
    let mut p = frag6(IPPROTO_UDP, 0, false);
    p.extend(udp(1, 2, 0));
    let f = eth_v6(&ipv6(IPPROTO_FRAGMENT, 0, &p, Some(7)));
    assert_eq!(parse(&f), Parsed::Unparsed);
    // Transport header after the chain cut short.
    let p = cat(&[&ext(IPPROTO_TCP, 0), &tcp20(1, 2, SYN)[..19]]);
    let f = eth_v6(&ipv6(IPPROTO_HOPOPTS, 0, &p, None));
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn ipv6_payload_length_zero() {
    // No jumbogram support: the datagram is the 40-byte header; what follows is padding.
    let f = eth_v6(&ipv6(IPPROTO_NONE, 0, &payload(30), Some(0)));
    assert_eq!(parse(&f), flow(key6(IPPROTO_NONE, 0, 0), 40, 0, 0));
    let f = eth_v6(&ipv6(IPPROTO_TCP, 0, &tcp20(1, 2, SYN), Some(0)));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let f = eth_v6(&ipv6(IPPROTO_GRE, 0, &[], None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_GRE, 0, 0), 40, 0, 0));
}

// ------------------------------------------------------------------------------------------------
// VLAN tags and non-IP frames.
// ------------------------------------------------------------------------------------------------

#[test]
fn single_8021q_tag() {
    // PCP 5, DEI 1, VID 100: only the VID is kept.
    let tci = (5 << 13) | (1 << 12) | 100;
    let f = ether(
        &[(ETH_P_8021Q, tci)],
        ETH_P_IPV4,
        &v4(IPPROTO_UDP).build(&udp(1, 2, 0)),
    );
    let key = FlowKey {
        vlan_id: 100,
        ..key4(IPPROTO_UDP, 1, 2)
    };
    assert_eq!(parse(&f), flow(key, 28, 0, 0));
    // VID 0 (priority tag) and 4095 are VIDs like any other, distinct from VLAN_NONE.
    for vid in [0u16, 4095] {
        let f = ether(
            &[(ETH_P_8021Q, 0xe000 | vid)],
            ETH_P_IPV6,
            &ipv6(IPPROTO_TCP, 0, &tcp20(3, 4, RST), None),
        );
        let key = FlowKey {
            vlan_id: vid,
            ..key6(IPPROTO_TCP, 3, 4)
        };
        assert_eq!(parse(&f), flow(key, 60, RST, 0));
    }
    // A single 802.1ad tag.
    let f = ether(
        &[(ETH_P_8021AD, 7)],
        ETH_P_IPV4,
        &v4(IPPROTO_GRE).build(&[]),
    );
    let key = FlowKey {
        vlan_id: 7,
        ..key4(IPPROTO_GRE, 0, 0)
    };
    assert_eq!(parse(&f), flow(key, 20, 0, 0));
}

#[test]
fn qinq_keeps_the_outer_vid() {
    let ip = v4(IPPROTO_TCP).build(&tcp20(1, 2, SYN));
    let f = ether(&[(ETH_P_8021AD, 200), (ETH_P_8021Q, 300)], ETH_P_IPV4, &ip);
    let key = FlowKey {
        vlan_id: 200,
        ..key4(IPPROTO_TCP, 1, 2)
    };
    assert_eq!(parse(&f), flow(key, 40, SYN, 0));
    // Two 802.1Q tags (old-style stacking) as well.
    let f = ether(
        &[(ETH_P_8021Q, 0x2fff), (ETH_P_8021Q, 1)],
        ETH_P_IPV6,
        &ipv6(IPPROTO_UDP, 0, &udp(5, 6, 0), None),
    );
    let key = FlowKey {
        vlan_id: 0xfff,
        ..key6(IPPROTO_UDP, 5, 6)
    };
    assert_eq!(parse(&f), flow(key, 48, 0, 0));
}

#[test]
fn three_tags_are_unparsed() {
    let ip = v4(IPPROTO_TCP).build(&tcp20(1, 2, SYN));
    for tpids in [
        [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        [ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q],
        [ETH_P_8021AD, ETH_P_8021AD, ETH_P_8021AD],
    ] {
        let f = ether(
            &[(tpids[0], 10), (tpids[1], 20), (tpids[2], 30)],
            ETH_P_IPV4,
            &ip,
        );
        assert_eq!(parse(&f), Parsed::Unparsed, "{tpids:x?}");
    }
    // Even when the third tag is cut short.
    let f = ether(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)], ETH_P_8021Q, &[]);
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn non_ip_frames() {
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0x5e, 0, 0, 2, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2,
    ];
    let mut f = ether(&[], ETH_P_ARP, &arp);
    f.resize(60, 0);
    assert_eq!(parse(&f), Parsed::NonIp);
    // Non-IP payloads are not validated: a short ARP body is still non-IP.
    assert_eq!(parse(&ether(&[], ETH_P_ARP, &[])), Parsed::NonIp);
    assert_eq!(
        parse(&ether(&[(ETH_P_8021Q, 5)], ETH_P_ARP, &arp)),
        Parsed::NonIp
    );
    assert_eq!(
        parse(&ether(
            &[(ETH_P_8021AD, 5), (ETH_P_8021Q, 6)],
            ETH_P_LLDP,
            &[0; 30]
        )),
        Parsed::NonIp
    );
    // 0x9100 (pre-standard QinQ) is not a VLAN TPID for flowlens: non-IP.
    let ip = v4(IPPROTO_UDP).build(&udp(1, 2, 0));
    assert_eq!(
        parse(&ether(&[(0x9100, 5)], ETH_P_IPV4, &ip)),
        Parsed::NonIp
    );
    // An 802.3 length field in place of the ethertype.
    assert_eq!(parse(&ether(&[], 46, &[0; 46])), Parsed::NonIp);
}

// ------------------------------------------------------------------------------------------------
// Truncated and malformed frames.
// ------------------------------------------------------------------------------------------------

fn assert_every_prefix_unparsed(frame: &[u8], what: &str) {
    assert!(
        matches!(parse(frame), Parsed::Flow(_)),
        "{what}: the full frame must be keyed"
    );
    for len in 0..frame.len() {
        assert_eq!(
            parse(&frame[..len]),
            Parsed::Unparsed,
            "{what}: prefix of {len} of {} bytes",
            frame.len()
        );
    }
}

#[test]
fn every_truncation_of_tcp_ipv4_is_unparsed() {
    let seg = cat(&[&tcp(33000, 80, SYN, 8, 12), &payload(9)]);
    let f = eth_v4(&v4(IPPROTO_TCP).options(8).build(&seg));
    assert_eq!(
        parse(&f),
        flow(key4(IPPROTO_TCP, 33000, 80), 28 + 32 + 9, SYN, 0)
    );
    assert_every_prefix_unparsed(&f, "TCP/IPv4");
    let f = ether(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
        ETH_P_IPV4,
        &v4(IPPROTO_TCP).build(&tcp20(1, 2, ACK)),
    );
    assert_every_prefix_unparsed(&f, "TCP/IPv4 in QinQ");
}

#[test]
fn every_truncation_of_udp_ipv6_is_unparsed() {
    let f = eth_v6(&ipv6(IPPROTO_UDP, 0, &udp(53, 53, 17), None));
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDP, 53, 53), 65, 0, 0));
    assert_every_prefix_unparsed(&f, "UDP/IPv6");
    let p = cat(&[
        &ext(IPPROTO_FRAGMENT, 1),
        &frag6(IPPROTO_UDP, 0, true),
        &udp(53, 53, 3),
    ]);
    let f = ether(
        &[(ETH_P_8021Q, 9)],
        ETH_P_IPV6,
        &ipv6(IPPROTO_HOPOPTS, 0, &p, None),
    );
    assert_every_prefix_unparsed(&f, "UDP/IPv6 with extension headers, tagged");
}

#[test]
fn every_truncation_of_other_shapes_is_unparsed() {
    let f = eth_v4(&v4(IPPROTO_SCTP).build(&sctp(1, 2)));
    assert_every_prefix_unparsed(&f, "SCTP/IPv4");
    let f = eth_v6(&ipv6(IPPROTO_ICMPV6, 0, &icmp(128, 0), None));
    assert_every_prefix_unparsed(&f, "ICMPv6");
    let f = eth_v4(&v4(IPPROTO_ICMP).build(&icmp(0, 0)));
    assert_every_prefix_unparsed(&f, "ICMP");
}

#[test]
fn bogus_ihl_is_unparsed() {
    for ihl in 0u8..5 {
        let f = eth_v4(&v4(IPPROTO_UDP).ihl(ihl).build(&udp(1, 2, 20)));
        assert_eq!(parse(&f), Parsed::Unparsed, "ihl {ihl}");
    }
    // IHL larger than the datagram (IHL 15 = 60 bytes, total length 40).
    let f = eth_v4(&v4(IPPROTO_UDP).ihl(15).build(&udp(1, 2, 12)));
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn total_length_below_header_length_is_unparsed() {
    for total in [0u16, 1, 19] {
        let f = eth_v4(&v4(IPPROTO_UDP).total_len(total).build(&udp(1, 2, 0)));
        assert_eq!(parse(&f), Parsed::Unparsed, "total {total}");
    }
    // IHL 6 with total length 20 (< 24).
    let f = eth_v4(&v4(IPPROTO_GRE).options(4).total_len(20).build(&[]));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let f = eth_v4(&v4(IPPROTO_GRE).options(4).total_len(23).build(&[0; 8]));
    assert_eq!(parse(&f), Parsed::Unparsed);
    // total == IHL*4 exactly is a valid (empty) datagram.
    let f = eth_v4(&v4(IPPROTO_GRE).options(4).total_len(24).build(&[0; 8]));
    assert_eq!(parse(&f), flow(key4(IPPROTO_GRE, 0, 0), 24, 0, 0));
}

#[test]
fn total_length_beyond_frame_is_unparsed() {
    let ok = v4(IPPROTO_UDP).build(&udp(1, 2, 10));
    assert_eq!(parse(&eth_v4(&ok)), flow(key4(IPPROTO_UDP, 1, 2), 38, 0, 0));
    for total in [39u16, 60, 1500, 65535] {
        let f = eth_v4(&v4(IPPROTO_UDP).total_len(total).build(&udp(1, 2, 10)));
        assert_eq!(parse(&f), Parsed::Unparsed, "total {total}");
    }
    // A shorter total length than the frame carries is fine (the rest is padding): then the
    // transport header must fit into what the total length says.
    let f = eth_v4(&v4(IPPROTO_UDP).total_len(28).build(&udp(1, 2, 10)));
    assert_eq!(parse(&f), flow(key4(IPPROTO_UDP, 1, 2), 28, 0, 0));
    let f = eth_v4(&v4(IPPROTO_UDP).total_len(27).build(&udp(1, 2, 10)));
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn ipv6_payload_length_beyond_frame_is_unparsed() {
    let p = udp(1, 2, 10);
    assert_eq!(
        parse(&eth_v6(&ipv6(IPPROTO_UDP, 0, &p, None))),
        flow(key6(IPPROTO_UDP, 1, 2), 58, 0, 0)
    );
    for plen in [19u16, 100, 65535] {
        let f = eth_v6(&ipv6(IPPROTO_UDP, 0, &p, Some(plen)));
        assert_eq!(parse(&f), Parsed::Unparsed, "payload length {plen}");
    }
    // Shorter than the frame: keyed with the header's length, if the transport header fits.
    let f = eth_v6(&ipv6(IPPROTO_UDP, 0, &p, Some(8)));
    assert_eq!(parse(&f), flow(key6(IPPROTO_UDP, 1, 2), 48, 0, 0));
    let f = eth_v6(&ipv6(IPPROTO_UDP, 0, &p, Some(7)));
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn wrong_ip_version_is_unparsed() {
    let f = eth_v4(&v4(IPPROTO_UDP).version(6).build(&udp(1, 2, 40)));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let mut f = eth_v6(&ipv6(IPPROTO_UDP, 0, &udp(1, 2, 0), None));
    f[14] = (f[14] & 0x0f) | 0x40;
    assert_eq!(parse(&f), Parsed::Unparsed);
    // IPv6 packet behind the IPv4 ethertype and vice versa.
    let f = eth_v4(&ipv6(IPPROTO_UDP, 0, &udp(1, 2, 0), None));
    assert_eq!(parse(&f), Parsed::Unparsed);
    let f = eth_v6(&v4(IPPROTO_UDP).build(&udp(1, 2, 40)));
    assert_eq!(parse(&f), Parsed::Unparsed);
}

#[test]
fn tcp_data_offset_below_five_is_unparsed() {
    for doff in 0u8..5 {
        let f = eth_v4(&v4(IPPROTO_TCP).build(&cat(&[&tcp(1, 2, SYN, doff, 0), &payload(20)])));
        assert_eq!(parse(&f), Parsed::Unparsed, "v4 doff {doff}");
        let f = eth_v6(&ipv6(IPPROTO_TCP, 0, &tcp(1, 2, SYN, doff, 0), None));
        assert_eq!(parse(&f), Parsed::Unparsed, "v6 doff {doff}");
    }
}

#[test]
fn transport_header_cut_short_inside_the_datagram_is_unparsed() {
    let cases: [(u8, Vec<u8>, usize); 6] = [
        (IPPROTO_TCP, tcp20(1, 2, SYN), 20),
        (IPPROTO_UDP, udp(1, 2, 0), 8),
        (IPPROTO_UDPLITE, udp(1, 2, 0), 8),
        (IPPROTO_SCTP, sctp(1, 2), 12),
        (IPPROTO_ICMP, icmp(8, 0), 8),
        (IPPROTO_ICMPV6, icmp(128, 0), 8),
    ];
    for (proto, hdr, need) in cases {
        assert_eq!(hdr.len(), need);
        for cut in 0..need {
            let v4_frame = eth_v4(&v4(proto).build(&hdr[..cut]));
            let v6_frame = eth_v6(&ipv6(proto, 0, &hdr[..cut], None));
            let v4_expect = if proto == IPPROTO_ICMPV6 {
                flow(key4(proto, 0, 0), (20 + cut) as u32, 0, 0)
            } else {
                Parsed::Unparsed
            };
            let v6_expect = if proto == IPPROTO_ICMP {
                flow(key6(proto, 0, 0), (40 + cut) as u32, 0, 0)
            } else {
                Parsed::Unparsed
            };
            assert_eq!(parse(&v4_frame), v4_expect, "v4 proto {proto} cut {cut}");
            assert_eq!(parse(&v6_frame), v6_expect, "v6 proto {proto} cut {cut}");
        }
    }
}

#[test]
fn parser_is_deterministic_over_all_single_byte_values_of_the_headers() {
    // Every value of every header byte of a TCP/IPv4 frame: the parser never panics and keys a
    // packet only with a consistent length.
    let base = eth_v4(&v4(IPPROTO_TCP).build(&cat(&[&tcp20(1, 2, SYN), &payload(6)])));
    for pos in 0..base.len() {
        for b in 0..=255u8 {
            let mut f = base.clone();
            f[pos] = b;
            if let Parsed::Flow(m) = parse(&f) {
                assert!(m.ip_len as usize <= f.len() - 14, "pos {pos} byte {b}");
            }
        }
    }
}
