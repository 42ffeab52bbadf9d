//! Property tests of the user-space twin of the packet parser (`parse_ethernet` on a byte
//! slice), CI-sized.
//!
//! Two generators feed [`reference::check`] (parser == reference classifier, `ip_len` is the
//! claimed IP-layer length and fits the frame, every truncation inside the IP datagram is
//! unparsed, padding changes nothing):
//!
//! * [`structured`]: frames described by a [`Spec`] (0-3 VLAN tags of both TPIDs; IPv4 with any
//!   version nibble, IHL, options, total length and fragment offset; IPv6 with extension-header
//!   chains of 0-9 headers, some with bogus lengths, and any payload length; TCP with any data
//!   offset, UDP, UDP-Lite, SCTP, ICMP/ICMPv6 in either IP version, other protocols; non-IP
//!   ethertypes; random bytes behind an IP ethertype), then cut anywhere, padded with random
//!   bytes and/or hit by random byte flips. For every frame the `Spec` can predict (built
//!   consistently, not flipped), the verdict must also equal the one computed from the `Spec`
//!   alone: a third oracle that never reads the bytes back.
//! * [`raw_bytes`]: random byte strings of 0-200 bytes.
//!
//! Runs are deterministic: the seed is fixed unless `FLOWLENS_FUZZ_SEED` is set, and a failure
//! names the seed and the shrunk input. `FLOWLENS_FUZZ_CASES` sets the number of cases of each
//! test (default sized for CI, a few seconds in a debug build).

mod reference;

use std::cell::RefCell;
use std::collections::BTreeMap;

use flowlens_abi::{
    FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE,
    VLAN_NONE,
    parse::{FlowMeta, MAX_IPV6_EXT_HEADERS, Parsed, parse_ethernet},
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::{Index, select},
    test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner},
};

// ------------------------------------------------------------------------------------------------
// Frame descriptions and their generators.
// ------------------------------------------------------------------------------------------------

/// A length field: as built, shifted, or anything.
#[derive(Clone, Copy, Debug)]
enum Len {
    Exact,
    Delta(i16),
    Any(u16),
}

impl Len {
    fn apply(self, exact: usize) -> u16 {
        match self {
            Len::Exact => exact as u16,
            Len::Delta(d) => (exact as i32 + i32::from(d)).clamp(0, 0xffff) as u16,
            Len::Any(v) => v,
        }
    }
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        /// Bit 8 = NS.
        flags: u16,
        /// Data-offset nibble as written (the header is 20 + `opt_words * 4` bytes regardless).
        doff: u8,
        opt_words: u8,
    },
    /// UDP or (`lite`) UDP-Lite.
    Udp {
        sport: u16,
        dport: u16,
        lite: bool,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (`v6 = false`, protocol 1) or ICMPv6 (protocol 58), in either IP version.
    Icmp {
        ty: u8,
        code: u8,
        v6: bool,
    },
    /// A protocol without a parsed header (never one of the above nor an IPv6 extension).
    Other {
        proto: u8,
    },
}

impl L4 {
    fn proto(&self) -> u8 {
        match *self {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { lite: false, .. } => IPPROTO_UDP,
            L4::Udp { lite: true, .. } => IPPROTO_UDPLITE,
            L4::Sctp { .. } => IPPROTO_SCTP,
            L4::Icmp { v6: false, .. } => IPPROTO_ICMP,
            L4::Icmp { v6: true, .. } => IPPROTO_ICMPV6,
            L4::Other { proto } => proto,
        }
    }

    fn bytes(&self, payload_len: usize) -> Vec<u8> {
        let mut b = Vec::new();
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
                doff,
                opt_words,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
                b.push(doff << 4 | (flags >> 8) as u8 & 1);
                b.push(flags as u8);
                b.extend_from_slice(&[0x10, 0, 0, 0, 0, 0]);
                b.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4));
            }
            L4::Udp { sport, dport, .. } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
            }
            L4::Sctp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
            }
            L4::Icmp { ty, code, .. } => b.extend_from_slice(&[ty, code, 0, 0, 0, 1, 0, 2]),
            L4::Other { .. } => {}
        }
        b
    }

    /// The key fields and flags the parser takes from this header (first fragments), or `None`
    /// when it must refuse it.
    fn keyed(&self, meta: &mut FlowMeta, v6: bool) -> Option<()> {
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
                doff,
                ..
            } => {
                if doff < 5 {
                    return None;
                }
                meta.key.src_port = sport;
                meta.key.dst_port = dport;
                meta.tcp_flags = flags;
            }
            L4::Udp { sport, dport, .. } | L4::Sctp { sport, dport } => {
                meta.key.src_port = sport;
                meta.key.dst_port = dport;
            }
            // ICMP is only read in IPv4 and ICMPv6 only in IPv6; otherwise keyed without type.
            L4::Icmp {
                ty,
                code,
                v6: icmp6,
            } if icmp6 == v6 => {
                meta.key.icmp_type = ty;
                meta.key.icmp_code = code;
            }
            L4::Icmp { .. } | L4::Other { .. } => {}
        }
        Some(())
    }
}

#[derive(Clone, Debug)]
struct V4 {
    version: u8,
    /// Overrides the IHL nibble computed from the options.
    ihl: Option<u8>,
    opt_words: u8,
    tos: u8,
    total: Len,
    /// Flags and fragment offset as on the wire.
    frag: u16,
    src: [u8; 4],
    dst: [u8; 4],
}

#[derive(Clone, Debug)]
struct Ext {
    /// 0 (hop-by-hop), 43 (routing), 60 (destination options) or 44 (fragment).
    kind: u8,
    /// Length in 8-byte units beyond the first (not for fragments).
    units: u8,
    /// Fragment offset (13 bits) and M flag, for fragment headers.
    offset: u16,
    more: bool,
    /// A header-extension-length byte that lies about the bytes that follow.
    bogus_len: Option<u8>,
}

#[derive(Clone, Debug)]
struct V6 {
    tc: u8,
    exts: Vec<Ext>,
    plen: Len,
    src: [u8; 16],
    dst: [u8; 16],
}

#[derive(Clone, Debug)]
enum Net {
    V4(V4, L4),
    V6(V6, L4),
    /// Any non-IP, non-VLAN ethertype (0x9100 included: not a VLAN TPID for flowlens).
    NonIp(u16),
    /// Random bytes behind the IPv4 (`false`) or IPv6 ethertype.
    RawIp(bool),
}

#[derive(Clone, Debug)]
struct Spec {
    /// (TPID, TCI), outermost first.
    tags: Vec<(u16, u16)>,
    net: Net,
    /// Transport payload (or the whole IP layer for `RawIp`, or the non-IP payload).
    payload: Vec<u8>,
    /// Ethernet padding after the datagram.
    trailing: Vec<u8>,
    /// Truncate the finished frame to `cut.index(len + 1)` bytes.
    cut: Option<Index>,
    /// Byte flips (position, xor) applied last.
    flips: Vec<(Index, u8)>,
}

fn len_field() -> impl Strategy<Value = Len> {
    prop_oneof![
        8 => Just(Len::Exact),
        1 => (-48i16..48).prop_map(Len::Delta),
        1 => any::<u16>().prop_map(Len::Any),
    ]
}

fn l4() -> impl Strategy<Value = L4> {
    let port = any::<u16>;
    prop_oneof![
        3 => (port(), port(), 0u16..0x200, prop_oneof![4 => Just(5u8), 1 => 0u8..16], 0u8..=4)
            .prop_map(|(sport, dport, flags, doff, opt_words)| L4::Tcp {
                sport, dport, flags, doff, opt_words
            }),
        3 => (port(), port(), any::<bool>()).prop_map(|(sport, dport, lite)| L4::Udp {
            sport, dport, lite
        }),
        1 => (port(), port()).prop_map(|(sport, dport)| L4::Sctp { sport, dport }),
        2 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(ty, code, v6)| L4::Icmp {
            ty, code, v6
        }),
        1 => prop_oneof![
            select(vec![2u8, 4, 41, 47, 50, 51, 59, 89, 103, 115, 253, 255]),
            any::<u8>().prop_filter("a protocol with a parsed header", |p| {
                !matches!(*p, 0 | 1 | 6 | 17 | 43 | 44 | 58 | 60 | 132 | 136)
            }),
        ]
        .prop_map(|proto| L4::Other { proto }),
    ]
}

/// A non-zero 13-bit fragment offset; every single bit and the extremes show up often.
fn frag_offset() -> impl Strategy<Value = u16> {
    prop_oneof![
        1 => (0u32..13).prop_map(|b| 1u16 << b),
        1 => Just(0x1fffu16),
        2 => 1u16..0x2000,
    ]
}

fn v4() -> impl Strategy<Value = V4> {
    (
        prop_oneof![19 => Just(4u8), 1 => 0u8..16],
        proptest::option::weighted(0.08, 0u8..16),
        prop_oneof![3 => Just(0u8), 1 => 1u8..=10],
        any::<u8>(),
        len_field(),
        prop_oneof![
            5 => Just(0x4000u16),
            2 => Just(0x2000u16),
            1 => Just(0u16),
            2 => (frag_offset(), any::<bool>()).prop_map(|(o, mf)| o | u16::from(mf) << 13),
        ],
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(version, ihl, opt_words, tos, total, frag, src, dst)| V4 {
            version,
            ihl,
            opt_words,
            tos,
            total,
            frag,
            src,
            dst,
        })
}

fn ext() -> impl Strategy<Value = Ext> {
    (
        select(vec![0u8, 43, 60, 44]),
        prop_oneof![3 => Just(0u8), 1 => 1u8..=3],
        prop_oneof![3 => Just(0u16), 1 => frag_offset()],
        any::<bool>(),
        proptest::option::weighted(0.04, any::<u8>()),
    )
        .prop_map(|(kind, units, offset, more, bogus_len)| Ext {
            kind,
            units,
            offset,
            more,
            bogus_len,
        })
}

fn v6() -> impl Strategy<Value = V6> {
    (
        any::<u8>(),
        prop_oneof![
            5 => vec(ext(), 0..=2),
            2 => vec(ext(), 3..=MAX_IPV6_EXT_HEADERS + 3),
        ],
        len_field(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
    )
        .prop_map(|(tc, exts, plen, src, dst)| V6 {
            tc,
            exts,
            plen,
            src,
            dst,
        })
}

fn net() -> impl Strategy<Value = Net> {
    prop_oneof![
        4 => (v4(), l4()).prop_map(|(h, t)| Net::V4(h, t)),
        4 => (v6(), l4()).prop_map(|(h, t)| Net::V6(h, t)),
        1 => prop_oneof![
            select(vec![0x0806u16, 0x88cc, 0x9100, 0x8847, 0x88e5, 0x0000, 0xffff]),
            any::<u16>(),
        ]
        .prop_filter("an IP or VLAN ethertype", |e| {
            !matches!(*e, 0x0800 | 0x86dd | 0x8100 | 0x88a8)
        })
        .prop_map(Net::NonIp),
        1 => any::<bool>().prop_map(Net::RawIp),
    ]
}

fn structured() -> impl Strategy<Value = Spec> {
    (
        vec((select(vec![0x8100u16, 0x88a8]), any::<u16>()), 0..=3),
        net(),
        prop_oneof![3 => vec(any::<u8>(), 0..16), 1 => vec(any::<u8>(), 16..96)],
        prop_oneof![4 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..24)],
        proptest::option::weighted(0.25, any::<Index>()),
        prop_oneof![5 => Just(Vec::new()), 1 => vec((any::<Index>(), 1u8..=255), 1..=3)],
    )
        .prop_map(|(tags, net, payload, trailing, cut, flips)| Spec {
            tags,
            net,
            payload,
            trailing,
            cut,
            flips,
        })
}

fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..200)
}

// ------------------------------------------------------------------------------------------------
// Building a frame, and what the Spec alone says about it.
// ------------------------------------------------------------------------------------------------

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn build_v4(h: &V4, l4: &L4, payload: &[u8]) -> Vec<u8> {
    let hdr_len = 20 + usize::from(h.opt_words) * 4;
    let seg = [l4.bytes(payload.len()), payload.to_vec()].concat();
    let ihl = h.ihl.unwrap_or(5 + h.opt_words);
    let total = h.total.apply(hdr_len + seg.len());
    let mut b = vec![h.version << 4 | (ihl & 0x0f), h.tos];
    b.extend_from_slice(&total.to_be_bytes());
    b.extend_from_slice(&[0x12, 0x34]);
    b.extend_from_slice(&h.frag.to_be_bytes());
    b.extend_from_slice(&[64, l4.proto(), 0, 0]);
    b.extend_from_slice(&h.src);
    b.extend_from_slice(&h.dst);
    // NOPs, then end of options.
    b.extend(std::iter::repeat_n(1u8, usize::from(h.opt_words) * 4));
    if h.opt_words > 0 {
        *b.last_mut().expect("options") = 0;
    }
    let c = checksum(&b);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(&seg);
    b
}

fn build_v6(h: &V6, l4: &L4, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, e) in h.exts.iter().enumerate() {
        let next = h.exts.get(i + 1).map_or(l4.proto(), |n| n.kind);
        if e.kind == 44 {
            let off = e.offset << 3 | u16::from(e.more);
            body.extend_from_slice(&[next, e.bogus_len.unwrap_or(0)]);
            body.extend_from_slice(&off.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0x0b, 0xad]);
        } else {
            let n = (usize::from(e.units) + 1) * 8;
            body.extend_from_slice(&[next, e.bogus_len.unwrap_or(e.units)]);
            // PadN covering the rest of the header.
            body.extend_from_slice(&[1, (n - 4) as u8]);
            body.extend(std::iter::repeat_n(0u8, n - 4));
        }
    }
    body.extend_from_slice(&l4.bytes(payload.len()));
    body.extend_from_slice(payload);
    let first = h.exts.first().map_or(l4.proto(), |e| e.kind);
    let word = 6u32 << 28 | u32::from(h.tc) << 20 | 0x5_4321;
    let mut b = word.to_be_bytes().to_vec();
    b.extend_from_slice(&h.plen.apply(body.len()).to_be_bytes());
    b.extend_from_slice(&[first, 64]);
    b.extend_from_slice(&h.src);
    b.extend_from_slice(&h.dst);
    b.extend_from_slice(&body);
    b
}

fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10..12].copy_from_slice(&[0xff, 0xff]);
    m[12..].copy_from_slice(&a);
    m
}

impl Spec {
    fn ethertype(&self) -> u16 {
        match self.net {
            Net::V4(..) | Net::RawIp(false) => 0x0800,
            Net::V6(..) | Net::RawIp(true) => 0x86dd,
            Net::NonIp(e) => e,
        }
    }

    fn l3(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    /// The frame before truncation and flips, and the length of its IP layer as built.
    fn build_whole(&self) -> (Vec<u8>, usize) {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for &(tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype().to_be_bytes());
        let l3 = match &self.net {
            Net::V4(h, t) => build_v4(h, t, &self.payload),
            Net::V6(h, t) => build_v6(h, t, &self.payload),
            Net::NonIp(_) | Net::RawIp(_) => self.payload.clone(),
        };
        let n = l3.len();
        f.extend_from_slice(&l3);
        f.extend_from_slice(&self.trailing);
        (f, n)
    }

    fn build(&self) -> Vec<u8> {
        let (mut f, _) = self.build_whole();
        if let Some(cut) = self.cut {
            f.truncate(cut.index(f.len() + 1));
        }
        if !f.is_empty() {
            for (at, x) in &self.flips {
                let i = at.index(f.len());
                f[i] ^= x;
            }
        }
        f
    }

    /// The verdict computed from the description alone (never from the bytes), for frames
    /// whose description determines it: no flips, length fields and IHL as built, extension
    /// headers with true lengths, random bytes excluded.
    fn predicted(&self) -> Option<Parsed> {
        if !self.flips.is_empty() {
            return None;
        }
        let (whole, ip_built) = self.build_whole();
        let cut_to = self.cut.map_or(whole.len(), |c| c.index(whole.len() + 1));
        let l3 = self.l3();
        let vlan = self.tags.first().map_or(VLAN_NONE, |t| t.1 & 0x0fff);
        if self.tags.len() == 3 {
            // A third tag is refused as soon as its TPID is seen; shorter cuts end earlier.
            return Some(Parsed::Unparsed);
        }
        let full = match &self.net {
            Net::NonIp(_) => Parsed::NonIp,
            Net::RawIp(_) => return None,
            Net::V4(h, t) => {
                if h.version != 4 || h.ihl.is_some() || !matches!(h.total, Len::Exact) {
                    return None;
                }
                let mut meta = FlowMeta {
                    key: FlowKey {
                        src_addr: mapped(h.src),
                        dst_addr: mapped(h.dst),
                        ip_version: 4,
                        protocol: t.proto(),
                        vlan_id: vlan,
                        ..FlowKey::ZERO
                    },
                    ip_len: ip_built as u32,
                    tcp_flags: 0,
                    dscp: h.tos >> 2,
                };
                if h.frag & 0x1fff != 0 || t.keyed(&mut meta, false).is_some() {
                    Parsed::Flow(meta)
                } else {
                    Parsed::Unparsed
                }
            }
            Net::V6(h, t) => {
                if !matches!(h.plen, Len::Exact) || h.exts.iter().any(|e| e.bogus_len.is_some()) {
                    return None;
                }
                let mut meta = FlowMeta {
                    key: FlowKey {
                        src_addr: h.src,
                        dst_addr: h.dst,
                        ip_version: 6,
                        protocol: t.proto(),
                        vlan_id: vlan,
                        ..FlowKey::ZERO
                    },
                    ip_len: ip_built as u32,
                    tcp_flags: 0,
                    dscp: h.tc >> 2,
                };
                // The walk ends at the first non-first fragment if it is among the first
                // MAX_IPV6_EXT_HEADERS headers; otherwise a longer chain is refused.
                let stop = h.exts.iter().position(|e| e.kind == 44 && e.offset != 0);
                match stop {
                    Some(i) if i < MAX_IPV6_EXT_HEADERS => {
                        meta.key.protocol = h.exts.get(i + 1).map_or(t.proto(), |n| n.kind);
                        Parsed::Flow(meta)
                    }
                    _ if h.exts.len() > MAX_IPV6_EXT_HEADERS => Parsed::Unparsed,
                    _ => match t.keyed(&mut meta, true) {
                        Some(()) => Parsed::Flow(meta),
                        None => Parsed::Unparsed,
                    },
                }
            }
        };
        // Truncation: unparsed if the cut is before the end of the IP layer (or, for non-IP
        // frames, before the end of the ethertype), unchanged otherwise.
        let needed = match full {
            Parsed::Flow(_) => l3 + ip_built,
            Parsed::NonIp => l3,
            Parsed::Unparsed => 0,
        };
        Some(if cut_to < needed {
            Parsed::Unparsed
        } else {
            full
        })
    }
}

// ------------------------------------------------------------------------------------------------
// The runner.
// ------------------------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|e| panic!("{name}={s}: not a u64 ({e})"))
        }
        Err(_) => default,
    }
}

/// Runs `test` over `cases` values of `strategy` from a fixed (or `FLOWLENS_FUZZ_SEED`) seed,
/// and panics with the seed and the shrunk input on failure.
fn run<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let seed = env_u64("FLOWLENS_FUZZ_SEED", 0xf10e_1e25_f022_2026);
    let cases = env_u64("FLOWLENS_FUZZ_CASES", u64::from(default_cases)) as u32;
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    for c in seed_bytes.chunks_mut(8) {
        c.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = std::time::Instant::now();
    match runner.run(&strategy, test) {
        Ok(()) => println!(
            "{name}: {cases} cases in {:.2?} (seed {seed:#x})",
            started.elapsed()
        ),
        Err(TestError::Fail(why, value)) => panic!(
            "{name}: property failed (FLOWLENS_FUZZ_SEED={seed:#x}, FLOWLENS_FUZZ_CASES={cases}): \
             {why}\nminimal input: {value:#?}"
        ),
        Err(TestError::Abort(why)) => panic!("{name}: aborted (seed {seed:#x}): {why}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts outcomes, so the test fails instead of passing vacuously if a generator stops
/// reaching a region.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, u64>);

impl Tally {
    fn hit(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
    fn require(&self, test: &str, at_least: &[(&'static str, u64)]) {
        for (what, n) in &self.0 {
            println!("  {n:>7}  {what}");
        }
        for &(what, min) in at_least {
            let n = self.0.get(what).copied().unwrap_or(0);
            assert!(
                n >= min,
                "{test}: only {n} cases of '{what}' (want >= {min})"
            );
        }
    }
}

fn outcome(p: &Parsed) -> &'static str {
    match p {
        Parsed::Flow(_) => "verdict: keyed",
        Parsed::NonIp => "verdict: non-IP",
        Parsed::Unparsed => "verdict: unparsed",
    }
}

#[test]
fn structured_frames() {
    let tally = RefCell::new(Tally::default());
    run("structured_frames", 12_000, structured(), |spec| {
        let frame = spec.build();
        let got = reference::check(&frame)
            .map_err(|e| TestCaseError::fail(format!("{e}\nframe {}", hex(&frame))))?;
        let mut t = tally.borrow_mut();
        t.hit(outcome(&got));
        if let Some(want) = spec.predicted() {
            t.hit("predicted from the description");
            if got != want {
                return Err(TestCaseError::fail(format!(
                    "parser says {got:?}, the description says {want:?}\nframe {}",
                    hex(&frame)
                )));
            }
        }
        if spec.cut.is_some() {
            t.hit("truncated");
        }
        if !spec.flips.is_empty() {
            t.hit("flipped");
        }
        if spec.tags.len() == 3 {
            t.hit("three tags");
        }
        if let Net::V6(h, _) = &spec.net {
            if h.exts.len() > MAX_IPV6_EXT_HEADERS {
                t.hit("ipv6: chain longer than the bound");
            }
            if h.exts.iter().any(|e| e.bogus_len.is_some()) {
                t.hit("ipv6: bogus extension length");
            }
            if matches!(got, Parsed::Flow(m) if h.exts.iter().any(|e| e.kind == 44 && e.offset != 0) && m.key.src_port == 0)
            {
                t.hit("ipv6: keyed non-first fragment");
            }
        }
        if let Net::V4(h, _) = &spec.net {
            if h.ihl.is_some() {
                t.hit("ipv4: IHL override");
            }
            if matches!(got, Parsed::Flow(_)) && h.opt_words > 0 {
                t.hit("ipv4: keyed with options");
            }
        }
        Ok(())
    });
    tally.into_inner().require(
        "structured_frames",
        &[
            ("verdict: keyed", 3000),
            ("verdict: non-IP", 300),
            ("verdict: unparsed", 1000),
            ("predicted from the description", 5000),
            ("truncated", 1000),
            ("flipped", 500),
            ("three tags", 1000),
            ("ipv6: chain longer than the bound", 100),
            ("ipv6: bogus extension length", 50),
            ("ipv6: keyed non-first fragment", 100),
            ("ipv4: IHL override", 100),
            ("ipv4: keyed with options", 300),
        ],
    );
}

#[test]
fn raw_bytes_never_break_the_parser() {
    let tally = RefCell::new(Tally::default());
    run("raw_bytes", 12_000, raw_bytes(), |frame| {
        let got = reference::check(&frame)
            .map_err(|e| TestCaseError::fail(format!("{e}\nframe {}", hex(&frame))))?;
        tally.borrow_mut().hit(outcome(&got));
        Ok(())
    });
    // Random bytes are almost never IP; non-IP and short frames must both show up.
    tally.into_inner().require(
        "raw_bytes",
        &[("verdict: non-IP", 5000), ("verdict: unparsed", 50)],
    );
}

/// The reference itself on fixed frames, so a bug shared by the parser and the reference in
/// the same place cannot hide: hand-checked verdicts.
#[test]
fn reference_agrees_with_hand_checked_frames() {
    // Untagged UDP/IPv4, 20 + 8 + 4 bytes.
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0xb8, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4]);
    let Parsed::Flow(m) = reference::check(&f).expect("valid") else {
        panic!("UDP/IPv4 not keyed");
    };
    assert_eq!(
        (
            m.key.src_port,
            m.key.dst_port,
            m.key.protocol,
            m.ip_len,
            m.dscp
        ),
        (12345, 53, 17, 32, 46)
    );
    assert_eq!(m.key.src_addr[10..], [0xff, 0xff, 10, 0, 0, 1]);
    assert_eq!(m.key.vlan_id, VLAN_NONE);
    // Total length one byte longer than the frame.
    let mut g = f.clone();
    g[17] = 33;
    assert_eq!(reference::check(&g), Ok(Parsed::Unparsed));
    // An ARP frame, and a frame of 13 bytes.
    let mut a = vec![0u8; 12];
    a.extend_from_slice(&[0x08, 0x06, 0, 1]);
    assert_eq!(reference::check(&a), Ok(Parsed::NonIp));
    assert_eq!(reference::check(&a[..13]), Ok(Parsed::Unparsed));
    assert_eq!(parse_ethernet(&a[..13]), Parsed::Unparsed);
}
