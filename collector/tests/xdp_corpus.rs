//! A deterministic mutation corpus run through the real probe programs by the kernel
//! (`BPF_PROG_TEST_RUN`; needs root or CAP_BPF): tens of thousands of frames, each checked
//! against the user-space twin of the parser (and the twin against the slice-based reference
//! classifier of `abi/tests/reference`).
//!
//! The corpus ([`corpus`]) starts from seeds (IPv4 with every IHL 5-15, TCP/UDP/UDP-Lite/SCTP/
//! ICMP/ICMPv6/GRE/AH, first and non-first fragments; IPv6 with extension-header chains of 0 to
//! `MAX_IPV6_EXT_HEADERS + 2` headers and non-first fragments at several depths; non-IP frames)
//! and derives from each: every truncation point, every IHL and version nibble, boundary values
//! of every length field (IPv4 total length, IPv6 payload length, each extension header's
//! length byte, TCP data offset), random byte flips and random padding; all of that untagged
//! and again under six VLAN stacks of one to three tags of both TPIDs.
//!
//! Frames run in batches: every frame once (its verdict must be XDP_PASS / NF_ACCEPT), then one
//! drain of the flow map and one read of the counters. Attribution stays checkable per frame:
//! before mutation each IP frame's source address is stamped with the frame's number, so
//! nearly every keyed frame has a flow key of its own, and the map must equal the twin's
//! per-key sums exactly (packets, bytes, OR of TCP flags, DSCP of the last packet), the counters
//! its per-verdict totals (seen, non-IP, unparsed, bytes keyed, new flows, no map errors).
//!
//! `FLOWLENS_CORPUS_SEED` changes the random part (flips, padding, which VLAN mutations).

#[path = "../../abi/tests/reference/mod.rs"]
mod reference;

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use flowlens::{
    drain::{Drainer, KernelStats, PerKeyDrainer},
    netfilter::{Family, Hook, btf::Btf, nf_offsets},
    probe::{NF_PROGRAM, Probe, XDP_PROGRAM},
};
use flowlens_schema::{
    FlowKey, FlowValue, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    IPPROTO_UDPLITE, NF_ACCEPT, OBS_NF_PRE_ROUTING, OBS_XDP, VLAN_NONE,
    parse::{MAX_IPV6_EXT_HEADERS, Parsed, parse_ethernet, parse_ipv4, parse_ipv6},
    stats,
};

const XDP_PASS: u32 = 2;
/// `LOOPBACK_IFINDEX`: test runs see the caller's loopback (see xdp_test_run.rs).
const LO_IFINDEX: u32 = 1;
/// Frames per batch, and flow-map capacity well above it so LRU eviction never kicks in.
const BATCH: usize = 4096;
const MAX_FLOWS: u32 = 4 * BATCH as u32;

const IPPROTO_GRE: u8 = 47;
const IPPROTO_AH: u8 = 51;

type Stats = [u64; stats::COUNT as usize];

/// Names of the VLAN stacks of [`corpus`], by index.
const STACKS: [&str; 7] = [
    "untagged",
    "802.1Q",
    "802.1ad",
    "802.1ad + 802.1Q",
    "802.1Q + 802.1Q",
    "three tags (802.1ad, 802.1Q, 802.1Q)",
    "three tags (802.1Q, 802.1ad, 802.1ad)",
];

// ================================================================================================
// The corpus.
// ================================================================================================

/// xorshift64 (Marsaglia).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A frame before mutation: where its IP header and transport header start.
#[derive(Clone)]
struct Seed {
    name: String,
    frame: Vec<u8>,
    /// Offset of the IP header (`None` for non-IP seeds).
    l3: Option<usize>,
    v6: bool,
    /// Offset of the TCP header, if the seed is first-fragment TCP.
    tcp: Option<usize>,
    /// Offsets of the IPv6 extension headers' length bytes (not fragment headers).
    ext_len_bytes: Vec<usize>,
}

/// One corpus frame and the mutation that made it (for failure messages and the tally).
struct Frame {
    bytes: Vec<u8>,
    what: &'static str,
    seed: usize,
    /// Index of the VLAN stack (0 = untagged, then 1, 1, 2, 2, 3, 3 tags).
    stack: usize,
    /// The number written into the source address (see [`stamp`]).
    stamp: u32,
}

fn ether(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x0a, 0x02, 0, 0, 0, 0, 0x0b];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// Transport header (and 6 payload bytes) of `proto`; for TCP `doff` words with options.
fn transport(proto: u8, doff: u8, i: usize) -> Vec<u8> {
    let sport = (1000 + i as u16).to_be_bytes();
    let mut t = match proto {
        IPPROTO_TCP => {
            let mut t = vec![sport[0], sport[1], 0, 80, 0, 0, 0, 1, 0, 0, 0, 2];
            t.push(doff << 4 | (i & 1) as u8);
            t.push(0x12 + (i as u8 & 0x0c)); // SYN|ACK, sometimes PSH/RST
            t.extend_from_slice(&[0x20, 0, 0, 0, 0, 0]);
            t.extend(std::iter::repeat_n(1u8, (usize::from(doff).max(5) - 5) * 4));
            t
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => vec![sport[0], sport[1], 0, 53, 0, 14, 0, 0],
        IPPROTO_SCTP => vec![sport[0], sport[1], 0x0b, 0x59, 1, 2, 3, 4, 0, 0, 0, 0],
        IPPROTO_ICMP | IPPROTO_ICMPV6 => vec![8, i as u8 & 3, 0, 0, 0, 1, 0, 2],
        _ => Vec::new(),
    };
    t.extend_from_slice(&[0xaa; 6]);
    t
}

fn ipv4(ihl: u8, proto: u8, frag: u16, tos: u8, seg: &[u8]) -> Vec<u8> {
    let hl = usize::from(ihl) * 4;
    let total = (hl + seg.len()) as u16;
    let mut h = vec![0x40 | ihl, tos];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0xbe, 0xef]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 9, 8, 7]);
    h.extend(std::iter::repeat_n(1u8, hl - 20)); // NOP options
    h.extend_from_slice(seg);
    h
}

/// IPv6 with the extension headers `exts` (kind, 8-byte units beyond the first, fragment
/// offset) in front of `seg` of protocol `proto`. Returns the packet and the offsets (from the
/// IPv6 header) of the non-fragment headers' length bytes.
fn ipv6(exts: &[(u8, u8, u16)], proto: u8, tc: u8, seg: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut body = Vec::new();
    let mut len_bytes = Vec::new();
    for (i, &(kind, units, offset)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |e| e.0);
        if kind == 44 {
            body.extend_from_slice(&[next, 0]);
            body.extend_from_slice(&(offset << 3 | 1).to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, 7]);
        } else {
            len_bytes.push(40 + body.len() + 1);
            let n = (usize::from(units) + 1) * 8;
            body.extend_from_slice(&[next, units, 1, (n - 4) as u8]);
            body.extend(std::iter::repeat_n(0u8, n - 4));
        }
    }
    body.extend_from_slice(seg);
    let first = exts.first().map_or(proto, |e| e.0);
    let word = 6u32 << 28 | u32::from(tc) << 20 | 0xbeef;
    let mut h = word.to_be_bytes().to_vec();
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend_from_slice(&body);
    (h, len_bytes)
}

fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let l4s = [
        (IPPROTO_TCP, 5u8),
        (IPPROTO_TCP, 8),
        (IPPROTO_UDP, 0),
        (IPPROTO_UDPLITE, 0),
        (IPPROTO_SCTP, 0),
        (IPPROTO_ICMP, 0),
        (IPPROTO_ICMPV6, 0),
        (IPPROTO_GRE, 0),
        (IPPROTO_AH, 0),
    ];
    // IPv4: every IHL, every transport, first fragment (DF or MF) and a non-first fragment.
    for ihl in 5u8..=15 {
        for (j, &(proto, doff)) in l4s.iter().enumerate() {
            for (k, frag) in [0x4000u16, 0x2000, 185].into_iter().enumerate() {
                let i = out.len();
                let seg = transport(proto, doff, i);
                let ip = ipv4(ihl, proto, frag, (j * 4 + k) as u8, &seg);
                out.push(Seed {
                    name: format!("ipv4 ihl {ihl} proto {proto} doff {doff} frag {frag:#x}"),
                    frame: ether(0x0800, &ip),
                    l3: Some(14),
                    v6: false,
                    tcp: (proto == IPPROTO_TCP && frag & 0x1fff == 0)
                        .then_some(14 + usize::from(ihl) * 4),
                    ext_len_bytes: Vec::new(),
                });
            }
        }
    }
    // IPv6: chains of 0 to MAX+2 headers (hop-by-hop first, then routing / destination options /
    // first-fragment headers of growing size), every transport.
    let kinds = [0u8, 43, 60, 44, 43, 60, 43, 60, 43, 60];
    for n in 0..=MAX_IPV6_EXT_HEADERS + 2 {
        let exts: Vec<(u8, u8, u16)> = (0..n).map(|i| (kinds[i], (i % 3) as u8, 0u16)).collect();
        for &(proto, doff) in &l4s {
            let proto = if proto == IPPROTO_AH { 59 } else { proto };
            let i = out.len();
            let seg = transport(proto, doff, i);
            let (ip, len_bytes) = ipv6(&exts, proto, (i * 4) as u8, &seg);
            let ext_bytes = ip.len() - 40 - seg.len();
            out.push(Seed {
                name: format!("ipv6 {n} ext headers proto {proto} doff {doff}"),
                frame: ether(0x86dd, &ip),
                l3: Some(14),
                v6: true,
                tcp: (proto == IPPROTO_TCP).then_some(14 + 40 + ext_bytes),
                ext_len_bytes: len_bytes.iter().map(|o| 14 + o).collect(),
            });
        }
    }
    // IPv6 non-first fragments at depth 0, 2, 5 (the last walked header) and 6 (beyond).
    for depth in [0usize, 2, 5, 6] {
        for proto in [IPPROTO_TCP, IPPROTO_UDP, 60] {
            let mut exts: Vec<(u8, u8, u16)> = (0..depth).map(|i| (kinds[i + 1], 0, 0)).collect();
            exts.push((44, 0, 99));
            let (ip, len_bytes) = ipv6(&exts, proto, 0, &transport(proto, 5, out.len()));
            out.push(Seed {
                name: format!("ipv6 non-first fragment at depth {depth} proto {proto}"),
                frame: ether(0x86dd, &ip),
                l3: Some(14),
                v6: true,
                tcp: None,
                ext_len_bytes: len_bytes.iter().map(|o| 14 + o).collect(),
            });
        }
    }
    // Non-IP: ARP, LLDP, and an IPv4 packet behind the 0x9100 TPID (not a tag for flowlens).
    for (name, et, body) in [
        ("arp", 0x0806u16, vec![0, 1, 8, 0, 6, 4, 0, 1]),
        ("lldp", 0x88cc, vec![2, 7, 4, 0, 0, 0, 0, 0, 1]),
        (
            "0x9100 tag",
            0x9100,
            [
                &[0, 5, 8, 0][..],
                &ipv4(5, IPPROTO_UDP, 0, 0, &transport(17, 0, 0)),
            ]
            .concat(),
        ),
    ] {
        out.push(Seed {
            name: name.to_string(),
            frame: ether(et, &body),
            l3: None,
            v6: false,
            tcp: None,
            ext_len_bytes: Vec::new(),
        });
    }
    out
}

/// Inserts VLAN tags (TPID, TCI), outermost first, after the MAC addresses.
fn tagged(s: &Seed, tags: &[(u16, u16)]) -> Seed {
    let mut t = s.clone();
    let ins: Vec<u8> = tags
        .iter()
        .flat_map(|&(tpid, tci)| [tpid.to_be_bytes(), tci.to_be_bytes()].concat())
        .collect();
    let n = ins.len();
    t.frame.splice(12..12, ins);
    t.l3 = t.l3.map(|o| o + n);
    t.tcp = t.tcp.map(|o| o + n);
    t.ext_len_bytes = t.ext_len_bytes.iter().map(|o| o + n).collect();
    t
}

/// Where a frame's number is written: the low 4 bytes of the IP source address.
fn stamp_range(s: &Seed) -> Option<std::ops::Range<usize>> {
    let at = if s.v6 { s.l3? + 20 } else { s.l3? + 12 };
    Some(at..at + 4)
}

/// Writes the frame number into the low bytes of the IP source address (when the frame still
/// reaches that far), so that keyed frames get keys of their own. Mutations never touch those
/// bytes, so stamping after mutating is the same as stamping before.
fn stamp(s: &Seed, f: &mut [u8], id: u32) {
    if let Some(r) = stamp_range(s)
        && let Some(b) = f.get_mut(r)
    {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The mutations of one seed: `(what, frame)` pairs.
fn mutations(s: &Seed, base: &[u8], r: &mut Rng, out: &mut Vec<(&'static str, Vec<u8>)>) {
    let len = base.len();
    out.push(("unmutated", base.to_vec()));
    for cut in 14..len {
        out.push(("truncated", base[..cut].to_vec()));
    }
    if let Some(l3) = s.l3 {
        let hl = if s.v6 {
            40
        } else {
            usize::from(base[l3] & 0x0f) * 4
        };
        let ip_len = if s.v6 {
            40 + usize::from(u16::from_be_bytes([base[l3 + 4], base[l3 + 5]]))
        } else {
            usize::from(u16::from_be_bytes([base[l3 + 2], base[l3 + 3]]))
        };
        for v in [0u8, 1, 4, 5, 6, 7, 15] {
            let mut f = base.to_vec();
            f[l3] = v << 4 | (f[l3] & 0x0f);
            out.push(("version nibble", f));
        }
        if s.v6 {
            for v in [0, 1, 7, 8, ip_len - 41, ip_len - 39, ip_len - 32, 0xffff] {
                let mut f = base.to_vec();
                put16(&mut f, l3 + 4, v as u16);
                out.push(("ipv6 payload length", f));
            }
            for &at in &s.ext_len_bytes {
                let cur = base[at];
                for v in [
                    0u8,
                    1,
                    2,
                    3,
                    4,
                    31,
                    255,
                    cur.wrapping_sub(1),
                    cur.wrapping_add(1),
                ] {
                    if v != cur {
                        let mut f = base.to_vec();
                        f[at] = v;
                        out.push(("ipv6 extension length", f));
                    }
                }
            }
        } else {
            for ihl in 0u8..16 {
                let mut f = base.to_vec();
                f[l3] = 0x40 | ihl;
                out.push(("ipv4 ihl", f));
            }
            for v in [0, 1, 19, 20, hl - 1, hl, hl + 7, hl + 8, hl + 19, hl + 20] {
                let mut f = base.to_vec();
                put16(&mut f, l3 + 2, v as u16);
                out.push(("ipv4 total length", f));
            }
            for v in [ip_len - 1, ip_len + 1, ip_len + 64, 0xffff] {
                let mut f = base.to_vec();
                put16(&mut f, l3 + 2, v as u16);
                out.push(("ipv4 total length", f));
            }
            for v in [1u16, 0x1000, 0x1fff, 0x2000, 0x8000] {
                let mut f = base.to_vec();
                put16(&mut f, l3 + 6, v);
                out.push(("ipv4 fragment field", f));
            }
        }
        if let Some(t) = s.tcp {
            for doff in 0u8..16 {
                let mut f = base.to_vec();
                f[t + 12] = doff << 4 | (f[t + 12] & 0x0f);
                out.push(("tcp data offset", f));
            }
        }
    }
    // Random flips of 1-3 bytes in the headers, and random padding.
    let hdr_end = s.tcp.map_or(len, |t| t + 20).min(len);
    let stamped = stamp_range(s).unwrap_or(0..0);
    for _ in 0..16 {
        let mut f = base.to_vec();
        for _ in 0..1 + r.below(3) {
            let at = r.below(hdr_end);
            if !stamped.contains(&at) {
                f[at] ^= 1 + r.below(255) as u8;
            }
        }
        out.push(("byte flips", f));
    }
    for _ in 0..2 {
        let mut f = base.to_vec();
        let n = 1 + r.below(40);
        f.extend((0..n).map(|_| r.next() as u8));
        out.push(("random padding", f));
    }
}

fn corpus(seed: u64) -> Vec<Frame> {
    let mut r = Rng(seed | 1);
    let seeds = seeds();
    let mut frames = Vec::new();
    let mut muts = Vec::new();
    let push = |frames: &mut Vec<Frame>, s: &Seed, what, mut bytes: Vec<u8>, seed, stack| {
        let id = frames.len() as u32;
        stamp(s, &mut bytes, id);
        frames.push(Frame {
            bytes,
            what,
            seed,
            stack,
            stamp: id,
        });
    };
    // Every seed untagged and under one to three tags of both TPIDs, each with all its
    // mutations (truncation inside the tags included).
    let stacks: [&[(u16, u16)]; 7] = [
        &[],
        &[(0x8100, 0x0064)],
        &[(0x88a8, 0xf123)],
        &[(0x88a8, 0x0abc), (0x8100, 0x0005)],
        &[(0x8100, 0x0fff), (0x8100, 0x0000)],
        &[(0x88a8, 1), (0x8100, 2), (0x8100, 3)],
        &[(0x8100, 7), (0x88a8, 8), (0x88a8, 9)],
    ];
    for (stack, tags) in stacks.into_iter().enumerate() {
        for (i, s) in seeds.iter().enumerate() {
            let t = tagged(s, tags);
            muts.clear();
            mutations(&t, &t.frame, &mut r, &mut muts);
            for (what, f) in muts.drain(..) {
                push(&mut frames, &t, what, f, i, stack);
            }
        }
    }
    frames
}

// ================================================================================================
// Batches through the kernel.
// ================================================================================================

/// What the twin says a batch must leave in the map and the counters.
#[derive(Default)]
struct Expected {
    flows: BTreeMap<FlowKey, (FlowValue, Vec<usize>)>,
    seen: u64,
    non_ip: u64,
    unparsed: u64,
    bytes_keyed: u64,
}

impl Expected {
    fn add(&mut self, parsed: Parsed, observation_point: u8, ifindex: u32, frame: usize) {
        self.seen += 1;
        match parsed {
            Parsed::NonIp => self.non_ip += 1,
            Parsed::Unparsed => self.unparsed += 1,
            Parsed::Flow(m) => {
                self.bytes_keyed += u64::from(m.ip_len);
                let key = FlowKey {
                    observation_point,
                    ifindex,
                    ..m.key
                };
                let (v, frames) = self.flows.entry(key).or_default();
                v.packets += 1;
                v.bytes += u64::from(m.ip_len);
                v.tcp_flags |= u64::from(m.tcp_flags);
                v.dscp = m.dscp;
                frames.push(frame);
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares one drained batch with the twin's expectation; returns what differs.
fn compare(
    want: &Expected,
    got: &[(FlowKey, FlowValue)],
    delta: &Stats,
    frames: &[Frame],
    seed_names: &[String],
    bytes_of: impl Fn(&Frame) -> &[u8],
) -> Vec<String> {
    let mut errs = Vec::new();
    let s = |i: u32| delta[i as usize];
    let counters = [
        ("packets_seen", s(stats::PACKETS_SEEN), want.seen),
        ("non_ip", s(stats::NON_IP), want.non_ip),
        ("unparsed", s(stats::UNPARSED), want.unparsed),
        ("bytes_keyed", s(stats::BYTES_KEYED), want.bytes_keyed),
        ("new_flows", s(stats::NEW_FLOWS), want.flows.len() as u64),
        ("map_errors", s(stats::MAP_ERRORS), 0),
    ];
    for (name, kernel, twin) in counters {
        if kernel != twin {
            errs.push(format!("counter {name}: kernel {kernel}, twin {twin}"));
        }
    }
    let mut kernel: BTreeMap<FlowKey, FlowValue> = BTreeMap::new();
    for (k, v) in got {
        if kernel.insert(*k, *v).is_some() {
            errs.push(format!("key drained twice: {k:?}"));
        }
    }
    let describe = |idx: &[usize]| -> String {
        idx.iter()
            .take(3)
            .map(|&i| {
                let f = &frames[i];
                format!(
                    "\n    frame #{i} of the batch ({} of seed '{}', {}): {}",
                    f.what,
                    seed_names[f.seed],
                    STACKS[f.stack],
                    hex(bytes_of(f))
                )
            })
            .collect()
    };
    for (k, (w, idx)) in &want.flows {
        match kernel.remove(k) {
            None => errs.push(format!(
                "twin keyed {k:?}, kernel has no entry{}",
                describe(idx)
            )),
            Some(v) => {
                let same = (v.packets, v.bytes, v.tcp_flags, v.dscp, v._pad)
                    == (w.packets, w.bytes, w.tcp_flags, w.dscp, [0; 7]);
                if !same {
                    errs.push(format!(
                        "{k:?}: kernel {v:?}, twin packets {} bytes {} flags {:#x} dscp {}{}",
                        w.packets,
                        w.bytes,
                        w.tcp_flags,
                        w.dscp,
                        describe(idx)
                    ));
                }
            }
        }
    }
    for (k, v) in kernel {
        // The source address carries the frame's stamp (unless a flip or the IP version moved it).
        let id = u32::from_be_bytes([
            k.src_addr[12],
            k.src_addr[13],
            k.src_addr[14],
            k.src_addr[15],
        ]);
        let idx: Vec<usize> = frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.stamp == id)
            .map(|(i, _)| i)
            .collect();
        errs.push(format!(
            "kernel keyed {k:?} {v:?}, the twin never did; stamp {id}:{}",
            describe(&idx)
        ));
    }
    errs
}

struct Maps {
    drainer: PerKeyDrainer,
    stats: KernelStats,
    last: Stats,
}

impl Maps {
    fn take(probe: &mut Probe) -> Maps {
        let (drainer, stats) = probe.take_per_key_drainer().expect("flow map and counters");
        let last = stats.read().expect("reading STATS");
        Maps {
            drainer,
            stats,
            last,
        }
    }

    /// The flows and counter deltas since the previous call. BPF_PROG_TEST_RUN is synchronous,
    /// so the per-key drain of the first buffer is exact here.
    fn drain(&mut self) -> (Vec<(FlowKey, FlowValue)>, Stats) {
        let mut flows = Vec::new();
        self.drainer.drain(&mut flows).expect("draining FLOWS_0");
        let now = self.stats.read().expect("reading STATS");
        let mut d = [0u64; stats::COUNT as usize];
        for (i, x) in d.iter_mut().enumerate() {
            *x = now[i] - self.last[i];
        }
        self.last = now;
        (flows, d)
    }
}

/// Per-mutation outcome counts, printed, and checked so the corpus cannot silently shrink to
/// one verdict.
#[derive(Default)]
struct Tally(BTreeMap<(&'static str, &'static str), u64>);

impl Tally {
    fn hit(&mut self, what: &'static str, p: &Parsed) {
        let v = match p {
            Parsed::Flow(_) => "keyed",
            Parsed::NonIp => "non-IP",
            Parsed::Unparsed => "unparsed",
        };
        *self.0.entry((what, v)).or_default() += 1;
    }
    fn print(&self) {
        for ((what, v), n) in &self.0 {
            println!("  {n:>7}  {what}: {v}");
        }
    }
    fn count(&self, what: &str, v: &str) -> u64 {
        self.0
            .iter()
            .filter(|((w, x), _)| (what.is_empty() || *w == what) && *x == v)
            .map(|(_, n)| n)
            .sum()
    }
}

fn corpus_seed() -> u64 {
    std::env::var("FLOWLENS_CORPUS_SEED").map_or(0xc0de_f10e_1e25_0007, |s| {
        let s = s.trim();
        s.strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
            .expect("FLOWLENS_CORPUS_SEED: u64")
    })
}

#[test]
fn xdp_corpus_matches_the_twin() {
    let seed = corpus_seed();
    let started = std::time::Instant::now();
    let frames = corpus(seed);
    let names: Vec<String> = seeds().into_iter().map(|s| s.name).collect();
    let built = started.elapsed();
    let mut probe = Probe::load_opts(MAX_FLOWS, None, false).expect("loading the probe (root)");
    probe
        .xdp_program(XDP_PROGRAM)
        .expect("verifying flowlens_xdp");
    let mut maps = Maps::take(&mut probe);
    let prog = probe.xdp_program(XDP_PROGRAM).expect("flowlens_xdp");
    let mut tally = Tally::default();
    let mut by_stack = Tally::default();
    let mut errors = Vec::new();
    let mut kernel_time = std::time::Duration::ZERO;
    let mut unique_keyed = 0u64;
    for (b, chunk) in frames.chunks(BATCH).enumerate() {
        let first = b * BATCH;
        let mut want = Expected::default();
        let t = std::time::Instant::now();
        for (j, f) in chunk.iter().enumerate() {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&f.bytes),
                    repeat: 1,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("test run of frame #{}: {e:?}", first + j));
            if r.return_value != XDP_PASS {
                errors.push(format!(
                    "frame #{}: verdict {} instead of XDP_PASS: {}",
                    first + j,
                    r.return_value,
                    hex(&f.bytes)
                ));
            }
        }
        let (got, delta) = maps.drain();
        kernel_time += t.elapsed();
        for (j, f) in chunk.iter().enumerate() {
            let twin = parse_ethernet(&f.bytes[..]);
            let reference = reference::classify(&f.bytes).parsed;
            if twin != reference {
                errors.push(format!(
                    "frame #{}: twin {twin:?}, reference {reference:?}: {}",
                    first + j,
                    hex(&f.bytes)
                ));
            }
            tally.hit(f.what, &twin);
            by_stack.hit(STACKS[f.stack], &twin);
            want.add(twin, OBS_XDP, LO_IFINDEX, j);
        }
        unique_keyed += want.flows.values().filter(|(v, _)| v.packets == 1).count() as u64;
        let errs = compare(&want, &got, &delta, chunk, &names, |f| &f.bytes);
        errors.extend(errs.into_iter().map(|e| format!("batch {b}: {e}")));
        if errors.len() > 20 {
            break;
        }
    }
    let keyed = tally.count("", "keyed");
    println!(
        "xdp corpus: {} frames from {} seeds (seed {seed:#x}), built in {built:.2?}, kernel runs \
         and drains {kernel_time:.2?}, total {:.2?}; {keyed} keyed, {unique_keyed} of them on a \
         key of their own",
        frames.len(),
        names.len(),
        started.elapsed()
    );
    tally.print();
    by_stack.print();
    if !errors.is_empty() {
        panic!(
            "{} disagreements (FLOWLENS_CORPUS_SEED={seed:#x}):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    assert!(frames.len() >= 300_000, "corpus shrank to {}", frames.len());
    // Up to two tags are walked, a third refuses the frame.
    for (i, name) in STACKS.iter().enumerate() {
        let keyed = by_stack.count(name, "keyed");
        assert_eq!(keyed == 0, i >= 5, "{keyed} keyed frames under {name}");
    }
    for (v, min) in [("keyed", 10_000), ("non-IP", 300), ("unparsed", 10_000)] {
        assert!(
            tally.count("", v) >= min,
            "only {} {v} frames",
            tally.count("", v)
        );
    }
    for what in [
        "ipv4 ihl",
        "ipv4 total length",
        "ipv6 payload length",
        "ipv6 extension length",
        "tcp data offset",
        "byte flips",
        "random padding",
    ] {
        assert!(tally.count(what, "keyed") > 0, "no keyed '{what}' frame");
        assert!(
            tally.count(what, "unparsed") > 0,
            "no unparsed '{what}' frame"
        );
    }
    assert!(
        unique_keyed * 10 >= keyed * 9,
        "only {unique_keyed} of {keyed} keyed frames had a key of their own"
    );
}

/// Frames shorter than an Ethernet header never reach the program: the kernel refuses them
/// (EINVAL) and no counter moves.
#[test]
fn xdp_refuses_frames_below_the_ethernet_header() {
    let mut probe = Probe::load_opts(64, None, false).expect("loading the probe (root)");
    probe
        .xdp_program(XDP_PROGRAM)
        .expect("verifying flowlens_xdp");
    let mut maps = Maps::take(&mut probe);
    let prog = probe.xdp_program(XDP_PROGRAM).expect("flowlens_xdp");
    let frame = ether(0x0800, &[0x45, 0, 0, 20]);
    for len in 0..14 {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&frame[..len]),
            repeat: 1,
            ..Default::default()
        });
        assert!(
            r.is_err(),
            "a {len}-byte frame ran: {:?}",
            r.map(|o| o.return_value)
        );
    }
    let (flows, d) = maps.drain();
    assert!(flows.is_empty());
    assert_eq!(d, [0; stats::COUNT as usize]);
}

/// The IP layer of every corpus frame with an IP ethertype, through the netfilter program at
/// LOCAL_OUT (the packet starts at the IP header; the family comes from the ethertype).
#[test]
fn netfilter_corpus_matches_the_twin() {
    let seed = corpus_seed();
    let started = std::time::Instant::now();
    let all = corpus(seed);
    let names: Vec<String> = seeds().into_iter().map(|s| s.name).collect();
    // (frame, IP-layer offset, family): every frame whose ethertype chain is complete and IP.
    // Untagged frames only: under tags the IP layers are the same bytes again.
    let frames: Vec<(Frame, usize, Family)> = all
        .into_iter()
        .filter(|f| f.stack == 0)
        .filter_map(|f| {
            let l3 = reference::classify(&f.bytes).l3?;
            let family = match u16::from_be_bytes([f.bytes[l3 - 2], f.bytes[l3 - 1]]) {
                0x0800 => Family::Ipv4,
                0x86dd => Family::Ipv6,
                _ => return None,
            };
            Some((f, l3, family))
        })
        .collect();
    let offsets = nf_offsets(&Btf::from_kernel().expect("kernel BTF")).expect("nf offsets");
    let mut probe = Probe::load_opts(MAX_FLOWS, Some(offsets), false).expect("loading the probe");
    probe
        .load_netfilter(NF_PROGRAM)
        .expect("verifying flowlens_nf");
    let mut maps = Maps::take(&mut probe);
    let prog = probe.load_netfilter(NF_PROGRAM).expect("flowlens_nf");
    let obs = OBS_NF_PRE_ROUTING + Hook::LocalOut.hooknum() as u8;
    let mut errors = Vec::new();
    let mut refused = 0u64;
    let mut tally = Tally::default();
    let mut ran = 0usize;
    for (b, chunk) in frames.chunks(BATCH).enumerate() {
        let first = b * BATCH;
        let mut want = Expected::default();
        let mut batch = Vec::with_capacity(chunk.len());
        for (j, (f, l3, family)) in chunk.iter().enumerate() {
            let ip = &f.bytes[*l3..];
            match prog.test_run(ip, Hook::LocalOut, *family, 1) {
                Ok((verdict, _)) => {
                    if verdict != NF_ACCEPT as u32 {
                        errors.push(format!("frame #{}: verdict {verdict}", first + j));
                    }
                    let twin = match family {
                        Family::Ipv4 => parse_ipv4(ip, 0, VLAN_NONE),
                        Family::Ipv6 => parse_ipv6(ip, 0, VLAN_NONE),
                    };
                    let reference = match family {
                        Family::Ipv4 => reference::ipv4(ip, VLAN_NONE),
                        Family::Ipv6 => reference::ipv6(ip, VLAN_NONE),
                    };
                    if twin != reference {
                        errors.push(format!(
                            "frame #{}: twin {twin:?}, reference {reference:?}",
                            first + j
                        ));
                    }
                    tally.hit(f.what, &twin);
                    want.add(twin, obs, LO_IFINDEX, batch.len());
                    batch.push(Frame {
                        bytes: ip.to_vec(),
                        what: f.what,
                        seed: f.seed,
                        stack: f.stack,
                        stamp: f.stamp,
                    });
                    ran += 1;
                }
                // The harness refuses packets shorter than the fixed IP header before the
                // program runs; anything else is a failure.
                Err(e) => {
                    let min = if *family == Family::Ipv4 { 20 } else { 40 };
                    if ip.len() >= min {
                        errors.push(format!("frame #{}: {e} ({} bytes)", first + j, ip.len()));
                    }
                    refused += 1;
                }
            }
        }
        let (got, delta) = maps.drain();
        let errs = compare(&want, &got, &delta, &batch, &names, |f| &f.bytes);
        errors.extend(errs.into_iter().map(|e| format!("batch {b}: {e}")));
        if errors.len() > 20 {
            break;
        }
    }
    println!(
        "netfilter corpus: {ran} packets run, {refused} refused by the harness (shorter than the \
         IP header), in {:.2?}",
        started.elapsed()
    );
    tally.print();
    if !errors.is_empty() {
        panic!(
            "{} disagreements (FLOWLENS_CORPUS_SEED={seed:#x}):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    assert!(ran >= 30_000, "only {ran} packets ran");
    for v in ["keyed", "unparsed"] {
        assert!(
            tally.count("", v) >= 1000,
            "only {} {v} packets",
            tally.count("", v)
        );
    }
}
