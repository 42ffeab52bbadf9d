//! The real XDP probe, run by the kernel through `BPF_PROG_TEST_RUN` (needs root or CAP_BPF).
//!
//! * Shape tests: every packet shape of `abi/src/parse_tests.rs`, built here independently
//!   with etherparse (its `PacketBuilder` where it can, by hand with etherparse's header types
//!   otherwise), is run `N` times through the loaded `flowlens_xdp` program, once with
//!   `repeat = N` and once as `N` separate runs. The flow map must then hold exactly the expected
//!   key with exact counts, and the per-CPU counters must have moved by exactly the runs.
//! * [`differential_kernel_twin_etherparse`]: random valid packets and mutations of them, each
//!   run once through the kernel and compared with the user-space twin of the parser and with an
//!   expectation computed with etherparse plus the documented flowlens rules.
//!
//! Test runs attach nothing: the program is loaded, run on a copy of the frame by the kernel and
//! unloaded when the `Probe` is dropped.
//!
//! `ingress_ifindex` under test runs: without `ctx_in`, `bpf_prog_test_run_xdp`
//! (net/bpf/test_run.c) sets up the XDP buffer on RX queue 0 of the *loopback device of the
//! caller's network namespace*, so `ingress_ifindex` is the loopback's index, which is always
//! `LOOPBACK_IFINDEX` = 1 (checked against `if_nametoindex("lo")` in
//! [`ingress_ifindex_is_loopback`]). Frames shorter than `ETH_HLEN` (14 bytes) are refused with
//! `EINVAL` before the program runs.

use std::collections::BTreeMap;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Slice, IpDscp, IpEcn, IpFragOffset,
    IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv4Slice, Ipv6Extensions, Ipv6FlowLabel,
    Ipv6FragmentHeader, Ipv6FragmentHeaderSlice, Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeader,
    Ipv6RawExtHeaderSlice, Ipv6RoutingExtensions, Ipv6Slice, LinkExtSlice, LinkSlice, NetSlice,
    PacketBuilder, PacketBuilderStep, SingleVlanSlice, SlicedPacket, TcpHeader, TcpSlice,
    TransportSlice, UdpHeaderSlice, UdpSlice, VlanId, err, ether_type, ip_number,
};
use flowlens::{
    drain::{Drainer, KernelStats, PerKeyDrainer},
    probe::{Probe, XDP_PROGRAM},
};
use flowlens_schema::{
    FlowKey, FlowValue, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    IPPROTO_UDPLITE, OBS_XDP, VLAN_NONE,
    parse::{FlowMeta, MAX_IPV6_EXT_HEADERS, Parsed, parse_ethernet},
    stats,
};

const XDP_PASS: u32 = 2;
/// `LOOPBACK_IFINDEX`: the index of `lo` in every network namespace.
const LO_IFINDEX: u32 = 1;
const MAX_FLOWS: u32 = 4096;

const IPPROTO_IGMP: u8 = 2;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_AH: u8 = 51;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

const FIN: u16 = 0x001;
const SYN: u16 = 0x002;
const RST: u16 = 0x004;
const PSH: u16 = 0x008;
const ACK: u16 = 0x010;
const URG: u16 = 0x020;
const ECE: u16 = 0x040;
const CWR: u16 = 0x080;
const NS: u16 = 0x100;

type Stats = [u64; stats::COUNT as usize];

// ================================================================================================
// The kernel side: a loaded probe, its flow map and its counters.
// ================================================================================================

struct Kernel {
    probe: Probe,
    drainer: PerKeyDrainer,
    stats: KernelStats,
    /// Counters at the previous [`Kernel::delta`].
    seen: Stats,
}

impl Kernel {
    fn load() -> Kernel {
        // Precise timestamps: these tests check that each packet's time lands in its flow.
        // (The coarse default is checked in `coarse_timestamps_are_within_a_tick`.)
        let mut probe = Probe::load_opts(MAX_FLOWS, None, true)
            .expect("loading the probe (root or CAP_BPF needed)");
        probe
            .xdp_program(XDP_PROGRAM)
            .expect("verifying flowlens_xdp");
        // BPF_PROG_TEST_RUN is synchronous: when it returns, the program is done, so the simple
        // per-key drain of the first buffer is exact here (and avoids an RCU grace period per
        // packet). The buffer swap is tested in xdp_concurrency.rs.
        let (drainer, stats) = probe.take_per_key_drainer().expect("flow map");
        let seen = stats.read().expect("reading STATS");
        Kernel {
            probe,
            drainer,
            stats,
            seen,
        }
    }

    fn try_run(&mut self, frame: &[u8], repeat: u32) -> Result<u32, ProgramError> {
        let prog = self.probe.xdp_program(XDP_PROGRAM).expect("flowlens_xdp");
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        Ok(r.return_value)
    }

    /// Runs the program `repeat` times on `frame` (one syscall) and returns its verdict.
    fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        self.try_run(frame, repeat)
            .unwrap_or_else(|e| panic!("test run of a {}-byte frame: {e:?}", frame.len()))
    }

    /// Moves every flow out of the kernel map.
    fn drain(&mut self) -> Vec<(FlowKey, FlowValue)> {
        let mut out = Vec::new();
        self.drainer.drain(&mut out).expect("draining FLOWS_0");
        out
    }

    /// How far each counter moved since the previous call.
    fn delta(&mut self) -> Stats {
        let now = self.stats.read().expect("reading STATS");
        let mut d = [0u64; stats::COUNT as usize];
        for i in 0..d.len() {
            d[i] = now[i] - self.seen[i];
        }
        self.seen = now;
        d
    }
}

fn slot(d: &Stats, s: u32) -> u64 {
    d[s as usize]
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the kernel made of exactly one run of `frame`, reconstructed as a [`Parsed`] from the
/// map entry and counters (the key's observation point and ifindex are checked, then cleared, so
/// the result compares with the parser's).
fn observe_one(k: &mut Kernel, frame: &[u8]) -> Result<Parsed, String> {
    let verdict = k.run(frame, 1);
    if verdict != XDP_PASS {
        return Err(format!("verdict {verdict}, expected XDP_PASS"));
    }
    let flows = k.drain();
    let d = k.delta();
    if slot(&d, stats::PACKETS_SEEN) != 1 || slot(&d, stats::MAP_ERRORS) != 0 {
        return Err(format!("counter deltas {d:?}"));
    }
    match flows.as_slice() {
        [] => match (
            slot(&d, stats::NON_IP),
            slot(&d, stats::UNPARSED),
            slot(&d, stats::BYTES_KEYED),
        ) {
            _ if slot(&d, stats::NEW_FLOWS) != 0 => {
                Err(format!("no flow but counter deltas {d:?}"))
            }
            (1, 0, 0) => Ok(Parsed::NonIp),
            (0, 1, 0) => Ok(Parsed::Unparsed),
            _ => Err(format!("no flow but counter deltas {d:?}")),
        },
        [(key, v)] => {
            let ok = key.observation_point == OBS_XDP
                && key.ifindex == LO_IFINDEX
                && key._pad == 0
                && v.packets == 1
                && v.first_seen_ns == v.last_seen_ns
                && v.tcp_flags <= 0x1ff
                && v._pad == [0; 7]
                && slot(&d, stats::BYTES_KEYED) == v.bytes
                && slot(&d, stats::NEW_FLOWS) == 1
                && slot(&d, stats::NON_IP) == 0
                && slot(&d, stats::UNPARSED) == 0;
            if !ok {
                return Err(format!(
                    "inconsistent entry {key:?} {v:?} with counter deltas {d:?}"
                ));
            }
            Ok(Parsed::Flow(FlowMeta {
                key: FlowKey {
                    observation_point: 0,
                    ifindex: 0,
                    ..*key
                },
                ip_len: v.bytes as u32,
                tcp_flags: v.tcp_flags as u16,
                dscp: v.dscp,
            }))
        }
        many => Err(format!(
            "{} map entries for one packet: {many:?}",
            many.len()
        )),
    }
}

// ================================================================================================
// Frame construction.
// ================================================================================================

const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x01];
const MAC_DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x02];
const SRC4: [u8; 4] = [10, 20, 30, 1];
const DST4: [u8; 4] = [172, 16, 254, 9];
const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x01,
];
const DST6: [u8; 16] = [
    0xfd, 0x00, 0x0d, 0xb8, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0x22, 0, 0, 0x02,
];

#[derive(Clone, Copy, Debug)]
enum Tags {
    Untagged,
    /// One 802.1Q tag (etherparse's `single_vlan`).
    Q(u16),
    /// 802.1ad outer + 802.1Q inner (etherparse's `double_vlan`).
    QinQ(u16, u16),
}

impl Tags {
    fn len(self) -> usize {
        match self {
            Tags::Untagged => 0,
            Tags::Q(_) => 4,
            Tags::QinQ(..) => 8,
        }
    }
    fn outer(self) -> u16 {
        match self {
            Tags::Untagged => VLAN_NONE,
            Tags::Q(v) | Tags::QinQ(v, _) => v,
        }
    }
    /// As (TPID, TCI) pairs for hand-built frames.
    fn raw(self) -> Vec<(u16, u16)> {
        match self {
            Tags::Untagged => vec![],
            Tags::Q(v) => vec![(0x8100, v)],
            Tags::QinQ(o, i) => vec![(0x88a8, o), (0x8100, i)],
        }
    }
}

fn ipv4_hdr(dscp: u8, ecn: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, 64, ip_number::UDP, SRC4, DST4).unwrap();
    h.dscp = IpDscp::try_new(dscp).unwrap();
    h.ecn = IpEcn::try_new(ecn).unwrap();
    h.identification = 0x4242;
    h
}

fn ipv6_hdr(traffic_class: u8) -> Ipv6Header {
    Ipv6Header {
        traffic_class,
        flow_label: Ipv6FlowLabel::try_new(0x5_4321).unwrap(),
        payload_length: 0,
        next_header: ip_number::UDP,
        hop_limit: 64,
        source: SRC6,
        destination: DST6,
    }
}

fn ip4(h: Ipv4Header) -> IpHeaders {
    IpHeaders::Ipv4(h, Default::default())
}

fn ip6(h: Ipv6Header) -> IpHeaders {
    IpHeaders::Ipv6(h, Default::default())
}

fn vid(v: u16) -> VlanId {
    VlanId::try_new(v).unwrap()
}

fn builder(tags: Tags, ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_SRC, MAC_DST);
    match tags {
        Tags::Untagged => eth.ip(ip),
        Tags::Q(v) => eth.single_vlan(vid(v)).ip(ip),
        Tags::QinQ(o, i) => eth.double_vlan(vid(o), vid(i)).ip(ip),
    }
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp(TcpHeader),
    Udp(u16, u16),
    Icmp4(u8, u8),
    Icmp6(u8, u8),
}

/// A frame from etherparse's `PacketBuilder`.
fn build(tags: Tags, ip: IpHeaders, l4: L4, payload: &[u8]) -> Vec<u8> {
    let b = builder(tags, ip);
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(t) => b.tcp_header(t).write(&mut out, payload),
        L4::Udp(s, d) => b.udp(s, d).write(&mut out, payload),
        L4::Icmp4(t, c) => b
            .icmpv4_raw(t, c, [0x12, 0x34, 0x00, 0x01])
            .write(&mut out, payload),
        L4::Icmp6(t, c) => b
            .icmpv6_raw(t, c, [0x12, 0x34, 0x00, 0x01])
            .write(&mut out, payload),
    }
    .expect("etherparse PacketBuilder");
    out
}

fn tcp_hdr(sport: u16, dport: u16, flags: u16) -> TcpHeader {
    let mut t = TcpHeader::new(sport, dport, 0x0102_0304, 65535);
    t.fin = flags & FIN != 0;
    t.syn = flags & SYN != 0;
    t.rst = flags & RST != 0;
    t.psh = flags & PSH != 0;
    if flags & ACK != 0 {
        t.ack = true;
        t.acknowledgment_number = 0x0a0b_0c0d;
    }
    t.urg = flags & URG != 0;
    t.ece = flags & ECE != 0;
    t.cwr = flags & CWR != 0;
    t.ns = flags & NS != 0;
    t
}

/// A frame built by hand: `tags` as (TPID, TCI) pairs, then `ether_type` and `l3`.
fn raw_frame(tags: &[(u16, u16)], ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + l3.len());
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    for &(tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 datagram serialized from etherparse's header type (protocol, length, checksum set).
fn raw_v4(mut h: Ipv4Header, proto: u8, payload: &[u8]) -> Vec<u8> {
    h.protocol = IpNumber(proto);
    h.set_payload_len(payload.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// An IPv6 packet serialized from etherparse's header type; `payload` includes any extension
/// headers.
fn raw_v6(mut h: Ipv6Header, next: u8, payload: &[u8]) -> Vec<u8> {
    h.next_header = IpNumber(next);
    h.payload_length = payload.len() as u16;
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Hop-by-hop / routing / destination-options header of `(units + 1) * 8` bytes.
fn ext6(next: u8, units: usize) -> Vec<u8> {
    Ipv6RawExtHeader::new_raw(IpNumber(next), &vec![0u8; 6 + 8 * units])
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    Ipv6FragmentHeader::new(
        IpNumber(next),
        IpFragOffset::try_new(offset).unwrap(),
        more,
        0xfeed_f00d,
    )
    .to_bytes()
    .to_vec()
}

fn be16(a: u16, b: u16) -> Vec<u8> {
    let mut v = a.to_be_bytes().to_vec();
    v.extend_from_slice(&b.to_be_bytes());
    v
}

fn sctp_common(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = be16(sport, dport);
    v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    v
}

fn filler(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + 5) as u8).collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

fn key4(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: mapped(SRC4),
        dst_addr: mapped(DST4),
        src_port,
        dst_port,
        ip_version: 4,
        protocol,
        ..FlowKey::ZERO
    }
}

fn key6(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: SRC6,
        dst_addr: DST6,
        src_port,
        dst_port,
        ip_version: 6,
        protocol,
        ..FlowKey::ZERO
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

fn patch(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

// ================================================================================================
// The shapes of parse_tests.rs, with their expected results written out.
// ================================================================================================

struct Shape {
    name: String,
    frame: Vec<u8>,
    expect: Parsed,
}

fn shape(name: impl Into<String>, frame: Vec<u8>, expect: Parsed) -> Shape {
    Shape {
        name: name.into(),
        frame,
        expect,
    }
}

fn shapes() -> Vec<Shape> {
    let mut s = Vec::new();
    let u = Tags::Untagged;

    // --- IPv4 transports.
    let tcp4 = build(
        u,
        ip4(ipv4_hdr(46, 3)),
        L4::Tcp(tcp_hdr(40000, 443, SYN | ACK | NS)),
        &filler(10),
    );
    s.push(shape(
        "tcp/ipv4",
        tcp4.clone(),
        flow(key4(IPPROTO_TCP, 40000, 443), 50, SYN | ACK | NS, 46),
    ));
    let all = FIN | SYN | RST | PSH | ACK | URG | ECE | CWR | NS;
    s.push(shape(
        "tcp/ipv4 all nine flags",
        build(u, ip4(ipv4_hdr(0, 0)), L4::Tcp(tcp_hdr(65535, 1, all)), &[]),
        flow(key4(IPPROTO_TCP, 65535, 1), 40, all, 0),
    ));
    let udp4 = build(u, ip4(ipv4_hdr(10, 0)), L4::Udp(53, 33000), &filler(30));
    s.push(shape(
        "udp/ipv4",
        udp4.clone(),
        flow(key4(IPPROTO_UDP, 53, 33000), 58, 0, 10),
    ));
    s.push(shape(
        "sctp/ipv4",
        raw_frame(
            &[],
            0x0800,
            &raw_v4(
                ipv4_hdr(63, 3),
                IPPROTO_SCTP,
                &cat(&[&sctp_common(2905, 36412), &filler(16)]),
            ),
        ),
        flow(key4(IPPROTO_SCTP, 2905, 36412), 48, 0, 63),
    ));
    s.push(shape(
        "udplite/ipv4",
        raw_frame(
            &[],
            0x0800,
            &raw_v4(
                ipv4_hdr(0, 0),
                IPPROTO_UDPLITE,
                &cat(&[&be16(1234, 5678), &be16(8, 0), &filler(4)]),
            ),
        ),
        flow(key4(IPPROTO_UDPLITE, 1234, 5678), 32, 0, 0),
    ));
    s.push(shape(
        "icmp/ipv4 echo",
        build(u, ip4(ipv4_hdr(0, 0)), L4::Icmp4(8, 0), &filler(56)),
        flow(
            FlowKey {
                icmp_type: 8,
                ..key4(IPPROTO_ICMP, 0, 0)
            },
            84,
            0,
            0,
        ),
    ));
    s.push(shape(
        "icmp/ipv4 unreachable 3/13",
        build(u, ip4(ipv4_hdr(0, 0)), L4::Icmp4(3, 13), &[]),
        flow(
            FlowKey {
                icmp_type: 3,
                icmp_code: 13,
                ..key4(IPPROTO_ICMP, 0, 0)
            },
            28,
            0,
            0,
        ),
    ));

    // --- IPv4 options, IHL 6..15.
    for ihl in 6u16..=15 {
        let mut h = ipv4_hdr(4, 0);
        h.options = Ipv4Options::try_from(&vec![1u8; usize::from(ihl - 5) * 4][..]).unwrap();
        let f = build(u, ip4(h), L4::Tcp(tcp_hdr(1000 + ihl, 22, ACK)), &filler(5));
        s.push(shape(
            format!("tcp/ipv4 IHL {ihl}"),
            f,
            flow(
                key4(IPPROTO_TCP, 1000 + ihl, 22),
                u32::from(ihl) * 4 + 25,
                ACK,
                4,
            ),
        ));
    }

    // --- IPv6 transports.
    s.push(shape(
        "tcp/ipv6",
        build(
            u,
            ip6(ipv6_hdr(0xb9)),
            L4::Tcp(tcp_hdr(443, 51000, PSH | ACK | ECE | CWR | NS)),
            &filler(100),
        ),
        flow(
            key6(IPPROTO_TCP, 443, 51000),
            160,
            PSH | ACK | ECE | CWR | NS,
            46,
        ),
    ));
    let udp6 = build(u, ip6(ipv6_hdr(0x28)), L4::Udp(5353, 5353), &filler(20));
    s.push(shape(
        "udp/ipv6",
        udp6.clone(),
        flow(key6(IPPROTO_UDP, 5353, 5353), 68, 0, 10),
    ));
    s.push(shape(
        "icmpv6/ipv6 echo",
        build(u, ip6(ipv6_hdr(0)), L4::Icmp6(128, 0), &filler(56)),
        flow(
            FlowKey {
                icmp_type: 128,
                ..key6(IPPROTO_ICMPV6, 0, 0)
            },
            104,
            0,
            0,
        ),
    ));
    s.push(shape(
        "icmpv6/ipv6 1/4",
        build(u, ip6(ipv6_hdr(0xfc)), L4::Icmp6(1, 4), &[]),
        flow(
            FlowKey {
                icmp_type: 1,
                icmp_code: 4,
                ..key6(IPPROTO_ICMPV6, 0, 0)
            },
            48,
            0,
            63,
        ),
    ));
    s.push(shape(
        "sctp/ipv6",
        raw_frame(
            &[],
            0x86dd,
            &raw_v6(ipv6_hdr(0), IPPROTO_SCTP, &sctp_common(9, 10)),
        ),
        flow(key6(IPPROTO_SCTP, 9, 10), 52, 0, 0),
    ));

    // --- IPv6 extension headers (etherparse writes hop-by-hop, destination options, routing,
    // fragment, and the final destination options after the fragment header: RFC 8200 order)
    // plus TCP.
    let exts = |offset: u16, final_dest: bool| Ipv6Extensions {
        hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(ip_number::UDP, &[0; 6]).unwrap()),
        destination_options: Some(Ipv6RawExtHeader::new_raw(ip_number::UDP, &[0; 14]).unwrap()),
        routing: Some(Ipv6RoutingExtensions {
            routing: Ipv6RawExtHeader::new_raw(ip_number::UDP, &[0, 0, 0, 0, 0, 0]).unwrap(),
            final_destination_options: final_dest
                .then(|| Ipv6RawExtHeader::new_raw(ip_number::UDP, &[0; 6]).unwrap()),
        }),
        fragment: Some(Ipv6FragmentHeader::new(
            ip_number::UDP,
            IpFragOffset::try_new(offset).unwrap(),
            true,
            7,
        )),
        auth: None,
    };
    let f = build(
        u,
        IpHeaders::Ipv6(ipv6_hdr(0), exts(0, true)),
        L4::Tcp(tcp_hdr(22, 60000, ACK)),
        &filler(20),
    );
    s.push(shape(
        "tcp/ipv6 hop-by-hop + dest + routing + first fragment + dest",
        f,
        flow(key6(IPPROTO_TCP, 22, 60000), 40 + 48 + 40, ACK, 0),
    ));
    let f = build(
        u,
        IpHeaders::Ipv6(ipv6_hdr(0x40), exts(100, false)),
        L4::Tcp(tcp_hdr(22, 60000, SYN)),
        &filler(20),
    );
    s.push(shape(
        "tcp/ipv6 hop-by-hop + dest + routing + non-first fragment",
        f,
        flow(key6(IPPROTO_TCP, 0, 0), 40 + 40 + 40, 0, 16),
    ));
    // A non-first fragment's payload is fragment data: its protocol is the fragment header's
    // next header, here the destination-options header that starts the fragmentable part.
    let f = build(
        u,
        IpHeaders::Ipv6(ipv6_hdr(0), exts(100, true)),
        L4::Tcp(tcp_hdr(22, 60000, SYN)),
        &filler(20),
    );
    s.push(shape(
        "tcp/ipv6 hop-by-hop + dest + routing + non-first fragment + dest",
        f,
        flow(key6(IPPROTO_DSTOPTS, 0, 0), 40 + 48 + 40, 0, 0),
    ));
    let atomic = Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            ip_number::UDP,
            IpFragOffset::ZERO,
            false,
            1,
        )),
        ..Default::default()
    };
    s.push(shape(
        "udp/ipv6 atomic fragment",
        build(
            u,
            IpHeaders::Ipv6(ipv6_hdr(0), atomic),
            L4::Udp(1, 2),
            &filler(3),
        ),
        flow(key6(IPPROTO_UDP, 1, 2), 40 + 8 + 11, 0, 0),
    ));
    // Exactly MAX_IPV6_EXT_HEADERS destination options, then one more.
    let chain = |n: usize| {
        let mut p = Vec::new();
        for i in 0..n {
            p.extend(ext6(
                if i + 1 == n {
                    IPPROTO_UDP
                } else {
                    IPPROTO_DSTOPTS
                },
                0,
            ));
        }
        p.extend(cat(&[&be16(7, 9), &be16(8, 0)]));
        raw_frame(&[], 0x86dd, &raw_v6(ipv6_hdr(0), IPPROTO_DSTOPTS, &p))
    };
    s.push(shape(
        format!("udp/ipv6 behind {MAX_IPV6_EXT_HEADERS} extension headers"),
        chain(MAX_IPV6_EXT_HEADERS),
        flow(
            key6(IPPROTO_UDP, 7, 9),
            (48 + 8 * MAX_IPV6_EXT_HEADERS) as u32,
            0,
            0,
        ),
    ));
    s.push(shape(
        format!(
            "udp/ipv6 behind {} extension headers",
            MAX_IPV6_EXT_HEADERS + 1
        ),
        chain(MAX_IPV6_EXT_HEADERS + 1),
        Parsed::Unparsed,
    ));

    // --- IPv4 fragments.
    let mut h = ipv4_hdr(0, 0);
    h.dont_fragment = false;
    h.more_fragments = true;
    s.push(shape(
        "udp/ipv4 first fragment",
        build(u, ip4(h.clone()), L4::Udp(4000, 4001), &filler(8)),
        flow(key4(IPPROTO_UDP, 4000, 4001), 36, 0, 0),
    ));
    h.more_fragments = false;
    h.fragment_offset = IpFragOffset::try_new(185).unwrap();
    s.push(shape(
        "udp/ipv4 non-first fragment",
        build(u, ip4(h.clone()), L4::Udp(4000, 4001), &filler(8)),
        flow(key4(IPPROTO_UDP, 0, 0), 36, 0, 0),
    ));
    h.more_fragments = true;
    s.push(shape(
        "tcp/ipv4 middle fragment",
        build(u, ip4(h), L4::Tcp(tcp_hdr(80, 8080, SYN)), &[]),
        flow(key4(IPPROTO_TCP, 0, 0), 40, 0, 0),
    ));

    // --- VLAN tags.
    s.push(shape(
        "udp/ipv4 802.1Q",
        build(Tags::Q(100), ip4(ipv4_hdr(0, 0)), L4::Udp(1, 2), &[]),
        flow(
            FlowKey {
                vlan_id: 100,
                ..key4(IPPROTO_UDP, 1, 2)
            },
            28,
            0,
            0,
        ),
    ));
    s.push(shape(
        "udp/ipv4 802.1Q with PCP and DEI",
        raw_frame(
            &[(0x8100, (5 << 13) | (1 << 12) | 100)],
            0x0800,
            &raw_v4(
                ipv4_hdr(0, 0),
                IPPROTO_UDP,
                &cat(&[&be16(1, 2), &be16(8, 0)]),
            ),
        ),
        flow(
            FlowKey {
                vlan_id: 100,
                ..key4(IPPROTO_UDP, 1, 2)
            },
            28,
            0,
            0,
        ),
    ));
    s.push(shape(
        "tcp/ipv6 QinQ",
        build(
            Tags::QinQ(200, 300),
            ip6(ipv6_hdr(0)),
            L4::Tcp(tcp_hdr(1, 2, RST)),
            &[],
        ),
        flow(
            FlowKey {
                vlan_id: 200,
                ..key6(IPPROTO_TCP, 1, 2)
            },
            60,
            RST,
            0,
        ),
    ));
    s.push(shape(
        "udp/ipv4 VID 4095 in QinQ",
        build(Tags::QinQ(4095, 1), ip4(ipv4_hdr(0, 0)), L4::Udp(3, 4), &[]),
        flow(
            FlowKey {
                vlan_id: 4095,
                ..key4(IPPROTO_UDP, 3, 4)
            },
            28,
            0,
            0,
        ),
    ));
    for tpids in 0..8u16 {
        let t = |bit: u16| {
            if tpids & (1 << bit) != 0 {
                0x88a8
            } else {
                0x8100
            }
        };
        s.push(shape(
            format!("three tags {:#x} {:#x} {:#x}", t(0), t(1), t(2)),
            raw_frame(&[(t(0), 10), (t(1), 20), (t(2), 30)], 0x0800, &tcp4[14..]),
            Parsed::Unparsed,
        ));
    }
    s.push(shape(
        "third tag cut short",
        raw_frame(&[(0x88a8, 10), (0x8100, 20)], 0x88a8, &[0x00]),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "0x9100 after an 802.1Q tag",
        raw_frame(&[(0x8100, 10), (0x9100, 20)], 0x0800, &tcp4[14..]),
        Parsed::NonIp,
    ));

    // --- Non-IP.
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &MAC_SRC,
        &SRC4,
        &[0; 6],
        &DST4,
    )
    .unwrap();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .arp(arp.clone())
        .write(&mut f)
        .unwrap();
    s.push(shape("arp", f, Parsed::NonIp));
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .single_vlan(vid(5))
        .arp(arp)
        .write(&mut f)
        .unwrap();
    s.push(shape("arp 802.1Q", f, Parsed::NonIp));
    s.push(shape(
        "lldp",
        raw_frame(&[], 0x88cc, &[0; 46]),
        Parsed::NonIp,
    ));

    // --- Ethernet padding after a short datagram.
    let mut f = build(u, ip4(ipv4_hdr(0, 0)), L4::Udp(67, 68), &[]);
    assert_eq!(f.len(), 42);
    f.resize(60, 0xa5);
    s.push(shape(
        "udp/ipv4 padded to 60 bytes",
        f,
        flow(key4(IPPROTO_UDP, 67, 68), 28, 0, 0),
    ));

    // --- Unknown protocols and ICMP in the other IP version.
    s.push(shape(
        "gre/ipv4",
        raw_frame(
            &[],
            0x0800,
            &raw_v4(
                ipv4_hdr(10, 0),
                IPPROTO_GRE,
                &[0, 0, 0x08, 0, 0x45, 0, 0, 0x14],
            ),
        ),
        flow(key4(IPPROTO_GRE, 0, 0), 28, 0, 10),
    ));
    s.push(shape(
        "gre/ipv6",
        raw_frame(
            &[],
            0x86dd,
            &raw_v6(ipv6_hdr(0), IPPROTO_GRE, &[0, 0, 0x86, 0xdd]),
        ),
        flow(key6(IPPROTO_GRE, 0, 0), 44, 0, 0),
    ));
    s.push(shape(
        "icmpv6 over ipv4",
        raw_frame(
            &[],
            0x0800,
            &raw_v4(ipv4_hdr(0, 0), IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
        ),
        flow(key4(IPPROTO_ICMPV6, 0, 0), 28, 0, 0),
    ));
    s.push(shape(
        "icmp over ipv6",
        raw_frame(
            &[],
            0x86dd,
            &raw_v6(ipv6_hdr(0), IPPROTO_ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]),
        ),
        flow(key6(IPPROTO_ICMP, 0, 0), 48, 0, 0),
    ));

    // --- Malformed (offsets: IPv4 header at 14).
    for ihl in [0u8, 4] {
        s.push(shape(
            format!("IHL {ihl}"),
            patch(&udp4, 14, &[0x40 | ihl]),
            Parsed::Unparsed,
        ));
    }
    s.push(shape(
        "total length 19 < IHL*4",
        patch(&udp4, 16, &19u16.to_be_bytes()),
        Parsed::Unparsed,
    ));
    let mut h = ipv4_hdr(0, 0);
    h.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
    let opt4 = build(u, ip4(h), L4::Udp(1, 2), &[]);
    s.push(shape(
        "IHL 6 with total length 20",
        patch(&opt4, 16, &20u16.to_be_bytes()),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "total length 59 > datagram",
        patch(&udp4, 16, &59u16.to_be_bytes()),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "ip version 6 in ipv4 ethertype",
        patch(&udp4, 14, &[0x65]),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "ipv6 payload length 29 > frame",
        patch(&udp6, 18, &29u16.to_be_bytes()),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "ipv6 payload length 7 < udp header",
        patch(&udp6, 18, &7u16.to_be_bytes()),
        Parsed::Unparsed,
    ));
    s.push(shape(
        "ipv6 payload length 8 < frame: keyed short",
        patch(&udp6, 18, &8u16.to_be_bytes()),
        flow(key6(IPPROTO_UDP, 5353, 5353), 48, 0, 10),
    ));
    for doff in [0u8, 4] {
        // TCP header at 14 + 20; byte 12 holds data offset and NS.
        s.push(shape(
            format!("tcp data offset {doff}"),
            patch(&tcp4, 14 + 20 + 12, &[(doff << 4) | 1]),
            Parsed::Unparsed,
        ));
    }
    s.push(shape(
        "tcp data offset 15 beyond the datagram: keyed by its 20 bytes",
        patch(&tcp4, 14 + 20 + 12, &[0xf1]),
        flow(key4(IPPROTO_TCP, 40000, 443), 50, SYN | ACK | NS, 46),
    ));
    let mut f = raw_frame(
        &[],
        0x0800,
        &raw_v4(ipv4_hdr(0, 0), IPPROTO_TCP, &tcp4[34..34 + 19]),
    );
    f.resize(90, 0);
    s.push(shape(
        "tcp header cut by the total length, frame padded",
        f,
        Parsed::Unparsed,
    ));

    s
}

/// Runs every shape `n` times, with `repeat = n` or as `n` separate runs, and checks map and
/// counters after each shape.
fn run_shapes(n: u32, separate: bool) {
    let mut k = Kernel::load();
    for s in shapes() {
        let t0 = monotonic_ns();
        if separate {
            for _ in 0..n {
                assert_eq!(k.run(&s.frame, 1), XDP_PASS, "{}", s.name);
            }
        } else {
            assert_eq!(k.run(&s.frame, n), XDP_PASS, "{}", s.name);
        }
        let t1 = monotonic_ns();
        check_shape(&mut k, &s, u64::from(n), (t0, t1));
    }
}

fn check_shape(k: &mut Kernel, s: &Shape, n: u64, (t0, t1): (u64, u64)) {
    let flows = k.drain();
    let d = k.delta();
    let name = &s.name;
    assert_eq!(slot(&d, stats::PACKETS_SEEN), n, "{name}: packets_seen");
    assert_eq!(slot(&d, stats::MAP_ERRORS), 0, "{name}: map_errors");
    match s.expect {
        Parsed::Flow(m) => {
            assert_eq!(flows.len(), 1, "{name}: {flows:?}");
            let (key, v) = flows[0];
            assert_eq!(
                key,
                FlowKey {
                    observation_point: OBS_XDP,
                    ifindex: LO_IFINDEX,
                    ..m.key
                },
                "{name}"
            );
            assert_eq!(v.packets, n, "{name}: packets");
            assert_eq!(v.bytes, n * u64::from(m.ip_len), "{name}: bytes");
            assert_eq!(v.tcp_flags, u64::from(m.tcp_flags), "{name}: tcp_flags");
            assert_eq!(v.dscp, m.dscp, "{name}: dscp");
            assert_eq!(v._pad, [0; 7], "{name}");
            assert!(
                t0 <= v.first_seen_ns,
                "{name}: first_seen {} before the run at {t0}",
                v.first_seen_ns
            );
            assert!(
                v.first_seen_ns <= v.last_seen_ns,
                "{name}: first_seen > last_seen"
            );
            assert!(
                v.last_seen_ns <= t1,
                "{name}: last_seen {} after the run ended at {t1}",
                v.last_seen_ns
            );
            assert_eq!(
                slot(&d, stats::BYTES_KEYED),
                n * u64::from(m.ip_len),
                "{name}: bytes_keyed"
            );
            assert_eq!(slot(&d, stats::NON_IP), 0, "{name}: non_ip");
            assert_eq!(slot(&d, stats::UNPARSED), 0, "{name}: unparsed");
        }
        Parsed::NonIp => {
            assert!(flows.is_empty(), "{name}: {flows:?}");
            assert_eq!(slot(&d, stats::NON_IP), n, "{name}: non_ip");
            assert_eq!(slot(&d, stats::UNPARSED), 0, "{name}: unparsed");
            assert_eq!(slot(&d, stats::BYTES_KEYED), 0, "{name}: bytes_keyed");
        }
        Parsed::Unparsed => {
            assert!(flows.is_empty(), "{name}: {flows:?}");
            assert_eq!(slot(&d, stats::UNPARSED), n, "{name}: unparsed");
            assert_eq!(slot(&d, stats::NON_IP), 0, "{name}: non_ip");
            assert_eq!(slot(&d, stats::BYTES_KEYED), 0, "{name}: bytes_keyed");
        }
    }
}

#[test]
fn shapes_are_what_the_twin_says() {
    // The hand-written expectations above are the twin's results too (the twin has its own unit
    // tests; this ties the kernel tests below to the same decisions).
    for s in shapes() {
        assert_eq!(parse_ethernet(&s.frame[..]), s.expect, "{}", s.name);
    }
}

#[test]
fn shapes_once() {
    run_shapes(1, false);
}

#[test]
fn shapes_with_repeat() {
    run_shapes(7, false);
}

#[test]
fn shapes_as_separate_runs() {
    run_shapes(5, true);
}

#[test]
fn all_shapes_in_one_map_aggregate_per_key() {
    // Every shape once (the keyed ones three times), one drain: per key, packets and bytes are the
    // sums over the shapes with that key; distinct keys never merge.
    let mut k = Kernel::load();
    let shapes = shapes();
    let mut want: BTreeMap<FlowKey, (u64, u64)> = BTreeMap::new();
    let (mut non_ip, mut unparsed, mut total) = (0u64, 0u64, 0u64);
    for s in &shapes {
        let n = if matches!(s.expect, Parsed::Flow(_)) {
            3
        } else {
            1
        };
        assert_eq!(k.run(&s.frame, n), XDP_PASS);
        total += u64::from(n);
        match s.expect {
            Parsed::Flow(m) => {
                let e = want
                    .entry(FlowKey {
                        observation_point: OBS_XDP,
                        ifindex: LO_IFINDEX,
                        ..m.key
                    })
                    .or_default();
                e.0 += u64::from(n);
                e.1 += u64::from(n) * u64::from(m.ip_len);
            }
            Parsed::NonIp => non_ip += 1,
            Parsed::Unparsed => unparsed += 1,
        }
    }
    let got: BTreeMap<FlowKey, (u64, u64)> = k
        .drain()
        .into_iter()
        .map(|(key, v)| (key, (v.packets, v.bytes)))
        .collect();
    assert_eq!(got, want);
    let d = k.delta();
    assert_eq!(slot(&d, stats::PACKETS_SEEN), total);
    assert_eq!(slot(&d, stats::NON_IP), non_ip);
    assert_eq!(slot(&d, stats::UNPARSED), unparsed);
    assert_eq!(
        slot(&d, stats::BYTES_KEYED),
        want.values().map(|v| v.1).sum::<u64>()
    );
    assert_eq!(slot(&d, stats::MAP_ERRORS), 0);
}

#[test]
fn tcp_flags_are_ored_and_dscp_is_the_last_packets() {
    let mut k = Kernel::load();
    for tags in [Tags::Untagged, Tags::Q(42), Tags::QinQ(7, 8)] {
        for v6 in [false, true] {
            // Same flow, three packets with different flags, DSCP and sizes, 2 ms apart.
            let pkts: [(u16, u8, usize); 3] =
                [(SYN, 10, 0), (ACK | NS, 46, 100), (FIN | PSH | ACK, 0, 7)];
            let mut bytes = 0u64;
            let mut times = Vec::new();
            for (flags, dscp, len) in pkts {
                let ip = if v6 {
                    ip6(ipv6_hdr(dscp << 2))
                } else {
                    ip4(ipv4_hdr(dscp, 1))
                };
                let f = build(tags, ip, L4::Tcp(tcp_hdr(5555, 80, flags)), &filler(len));
                bytes += (f.len() - 14 - tags.len()) as u64;
                let t0 = monotonic_ns();
                assert_eq!(k.run(&f, 1), XDP_PASS);
                times.push((t0, monotonic_ns()));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let flows = k.drain();
            assert_eq!(flows.len(), 1, "{tags:?} v6 {v6}: {flows:?}");
            let (key, v) = flows[0];
            let base = if v6 {
                key6(IPPROTO_TCP, 5555, 80)
            } else {
                key4(IPPROTO_TCP, 5555, 80)
            };
            assert_eq!(
                key,
                FlowKey {
                    vlan_id: tags.outer(),
                    observation_point: OBS_XDP,
                    ifindex: LO_IFINDEX,
                    ..base
                }
            );
            assert_eq!(v.packets, 3);
            assert_eq!(v.bytes, bytes);
            assert_eq!(v.tcp_flags, u64::from(SYN | ACK | NS | FIN | PSH));
            assert_eq!(v.dscp, 0, "DSCP of the last packet");
            assert!(
                times[0].0 <= v.first_seen_ns && v.first_seen_ns <= times[0].1,
                "first_seen is the first packet's"
            );
            assert!(
                times[2].0 <= v.last_seen_ns && v.last_seen_ns <= times[2].1,
                "last_seen is the last packet's"
            );
            assert!(v.last_seen_ns - v.first_seen_ns >= 4_000_000);
            let d = k.delta();
            assert_eq!(slot(&d, stats::PACKETS_SEEN), 3);
            assert_eq!(slot(&d, stats::BYTES_KEYED), bytes);
        }
    }
    // DSCP of the last packet also when it is the middle value, and flags never cleared by a
    // packet without flags (a non-first fragment of the same key is another key: no ports).
    let f = |dscp: u8, flags: u16| {
        build(
            Tags::Untagged,
            ip4(ipv4_hdr(dscp, 0)),
            L4::Tcp(tcp_hdr(1, 2, flags)),
            &[],
        )
    };
    for (dscp, flags) in [(63, URG), (0, 0), (17, ECE | CWR)] {
        assert_eq!(k.run(&f(dscp, flags), 1), XDP_PASS);
    }
    let flows = k.drain();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.tcp_flags, u64::from(URG | ECE | CWR));
    assert_eq!(flows[0].1.dscp, 17);
    assert_eq!(flows[0].1.packets, 3);
    // Each of the nine flag bits alone, added to an existing entry (the update path), for a new
    // flow per bit: the entry starts without flags, then gets exactly that bit.
    for bit in 0..9 {
        let flag = 1u16 << bit;
        let g = |flags: u16| {
            build(
                Tags::Untagged,
                ip4(ipv4_hdr(0, 0)),
                L4::Tcp(tcp_hdr(100 + bit, 2, flags)),
                &[],
            )
        };
        assert_eq!(k.run(&g(0), 1), XDP_PASS);
        assert_eq!(k.run(&g(flag), 2), XDP_PASS);
        assert_eq!(k.run(&g(0), 1), XDP_PASS);
        let flows = k.drain();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].0.src_port, 100 + bit);
        assert_eq!(flows[0].1.packets, 4);
        assert_eq!(
            flows[0].1.tcp_flags,
            u64::from(flag),
            "flag bit {bit} via the update path"
        );
    }
}

#[test]
fn every_truncation_is_unparsed() {
    let mut k = Kernel::load();
    let frames = [
        (
            "tcp/ipv4",
            build(
                Tags::Untagged,
                ip4(ipv4_hdr(0, 0)),
                L4::Tcp(tcp_hdr(33000, 80, SYN)),
                &filler(9),
            ),
        ),
        (
            "udp/ipv6",
            build(
                Tags::Untagged,
                ip6(ipv6_hdr(0)),
                L4::Udp(53, 53),
                &filler(17),
            ),
        ),
        (
            "tcp/ipv4 QinQ",
            build(
                Tags::QinQ(1, 2),
                ip4(ipv4_hdr(0, 0)),
                L4::Tcp(tcp_hdr(1, 2, ACK)),
                &[],
            ),
        ),
        (
            "udp/ipv6 802.1Q",
            build(Tags::Q(9), ip6(ipv6_hdr(0)), L4::Udp(1, 2), &filler(3)),
        ),
    ];
    for (name, full) in &frames {
        assert!(matches!(parse_ethernet(&full[..]), Parsed::Flow(_)));
        assert_eq!(k.run(full, 1), XDP_PASS);
        assert_eq!(k.drain().len(), 1, "{name}: the full frame is keyed");
        k.delta();
        for len in 0..full.len() {
            let prefix = &full[..len];
            if len < 14 {
                // The kernel refuses frames shorter than an Ethernet header: the program does
                // not run at all (the twin's answer for these is Unparsed).
                assert_eq!(parse_ethernet(prefix), Parsed::Unparsed);
                match k.try_run(prefix, 1) {
                    Err(ProgramError::SyscallError(e)) => {
                        assert_eq!(
                            e.io_error.raw_os_error(),
                            Some(libc::EINVAL),
                            "{name} prefix {len}"
                        )
                    }
                    other => panic!("{name}: prefix of {len} bytes: {other:?}"),
                }
                assert_eq!(k.delta(), [0; stats::COUNT as usize], "{name} prefix {len}");
                continue;
            }
            // Three runs as one repeat, two as separate runs.
            assert_eq!(k.run(prefix, 3), XDP_PASS);
            assert_eq!(k.run(prefix, 1), XDP_PASS);
            assert_eq!(k.run(prefix, 1), XDP_PASS);
            assert!(
                k.drain().is_empty(),
                "{name}: prefix of {len} bytes was keyed"
            );
            let d = k.delta();
            assert_eq!(slot(&d, stats::UNPARSED), 5, "{name} prefix {len}: {d:?}");
            assert_eq!(slot(&d, stats::PACKETS_SEEN), 5, "{name} prefix {len}");
            assert_eq!(slot(&d, stats::NON_IP), 0, "{name} prefix {len}");
            assert_eq!(slot(&d, stats::BYTES_KEYED), 0, "{name} prefix {len}");
        }
    }
}

#[test]
fn ingress_ifindex_is_loopback() {
    // SAFETY: NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert_eq!(lo, LO_IFINDEX, "loopback is LOOPBACK_IFINDEX");
    let mut k = Kernel::load();
    let f = build(Tags::Untagged, ip4(ipv4_hdr(0, 0)), L4::Udp(1, 2), &[]);
    assert_eq!(k.run(&f, 1), XDP_PASS);
    let flows = k.drain();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].0.ifindex, lo);
    assert_eq!(flows[0].0.observation_point, OBS_XDP);
}

#[test]
fn ingress_ifindex_follows_ctx_in() {
    // With an `xdp_md` as ctx_in, the kernel runs the program on RX queue 0 of the interface
    // named by `ingress_ifindex` (looked up in the caller's namespace): the key must carry it.
    let mut ifaces = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        assert!(!list.is_null());
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            ifaces.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    let mut k = Kernel::load();
    let f = build(Tags::Untagged, ip4(ipv4_hdr(0, 0)), L4::Udp(1, 2), &[]);
    let mut checked = Vec::new();
    for (index, name) in &ifaces {
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let md: [u32; 6] = [0, f.len() as u32, 0, *index, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let prog = k.probe.xdp_program(XDP_PROGRAM).unwrap();
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&f),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        });
        match r {
            Ok(r) => assert_eq!(r.return_value, XDP_PASS),
            // Interfaces without registered XDP RX queue info are refused by the kernel.
            Err(e) => {
                println!("{name} (ifindex {index}): not usable as test-run ingress: {e:?}");
                assert!(k.drain().is_empty());
                continue;
            }
        }
        let flows = k.drain();
        assert_eq!(flows.len(), 1, "{name}");
        assert_eq!(
            flows[0].0,
            FlowKey {
                observation_point: OBS_XDP,
                ifindex: *index,
                ..key4(IPPROTO_UDP, 1, 2)
            },
            "{name}"
        );
        checked.push(name.clone());
    }
    println!("ingress_ifindex checked on {checked:?}");
    assert!(
        checked.iter().any(|n| n == "lo"),
        "lo must be usable: {ifaces:?}"
    );
}

// ================================================================================================
// Differential test.
// ================================================================================================

/// xorshift64 (Marsaglia); no rand crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Per-decision counters. Every category must be hit, so the test cannot pass vacuously, and
/// every category hit must be declared in [`CATEGORIES`].
#[derive(Default)]
struct Cats(BTreeMap<&'static str, u64>);

impl Cats {
    fn hit(&mut self, c: &'static str) {
        *self.0.entry(c).or_default() += 1;
    }
}

mod cat {
    // Generator.
    pub const GEN_VALID: &str = "gen: valid packet, no mutation";
    pub const GEN_TRUNCATE: &str = "gen: truncated at a random point";
    pub const GEN_FLIP: &str = "gen: random header bytes flipped";
    pub const GEN_IHL: &str = "gen: random IPv4 IHL";
    pub const GEN_TOTAL_LEN: &str = "gen: random IPv4 total length";
    pub const GEN_V6_PLEN: &str = "gen: random IPv6 payload length";
    pub const GEN_EXT_CHAIN: &str = "gen: random IPv6 extension chain spliced in";
    pub const GEN_PAD: &str = "gen: trailing padding";
    pub const GEN_EXTRA_TAG: &str = "gen: extra 802.1Q/802.1ad tag at a random depth";
    pub const GEN_9100: &str = "gen: 0x9100 tag at a random depth";
    pub const GEN_NON_IP: &str = "gen: non-IP frame";
    pub const GEN_TCP_DOFF: &str = "gen: random TCP data offset";
    pub const GEN_UDP_LEN: &str = "gen: random UDP length field";
    // Outcomes.
    pub const OUT_FLOW: &str = "kernel: keyed";
    pub const OUT_NON_IP: &str = "kernel: non-IP";
    pub const OUT_UNPARSED: &str = "kernel: unparsed";
    // Link layer.
    pub const ETH_UNTAGGED: &str = "link: untagged";
    pub const ETH_ONE_TAG: &str = "link: one tag";
    pub const ETH_TWO_TAGS: &str = "link: two tags (outer VID kept)";
    pub const ETH_TAG_TRUNCATED: &str = "link: VLAN tag cut short";
    pub const RULE_THIRD_TAG: &str =
        "rule: third 802.1Q/802.1ad tag -> unparsed (etherparse slices up to 3)";
    pub const RULE_9100: &str =
        "rule: 0x9100 is no VLAN TPID for flowlens -> non-IP (etherparse: VLAN)";
    pub const NON_IP_ARP: &str = "non-IP: ARP etherparse slices";
    pub const RULE_ARP_MALFORMED: &str =
        "rule: ARP etherparse rejects is still non-IP (not validated)";
    pub const NON_IP_OTHER: &str = "non-IP: other ethertype";
    // IPv4.
    pub const V4_HDR_TRUNC: &str = "ipv4: header cut short";
    pub const V4_BAD_VERSION: &str = "ipv4: version != 4";
    pub const V4_BAD_IHL: &str = "ipv4: IHL < 5";
    pub const V4_TOTAL_LT_IHL: &str = "ipv4: total length < IHL*4";
    pub const V4_TOTAL_GT_FRAME: &str = "ipv4: total length beyond the frame";
    pub const V4_OPTIONS: &str = "ipv4: with options";
    pub const V4_PADDED: &str = "ipv4: frame longer than the datagram";
    pub const V4_NON_FIRST_FRAG: &str =
        "ipv4: non-first fragment, no ports (etherparse: fragmented)";
    pub const RULE_V4_FIRST_FRAG: &str = "rule: IPv4 first fragment, transport read (etherparse leaves fragmented payloads unsliced)";
    pub const RULE_V4_AH: &str =
        "rule: IPv4 AH not walked, keyed as protocol 51 (etherparse walks AH)";
    // IPv6.
    pub const V6_HDR_TRUNC: &str = "ipv6: header cut short";
    pub const V6_BAD_VERSION: &str = "ipv6: version != 6";
    pub const V6_PLEN_GT_FRAME: &str = "ipv6: payload length beyond the frame";
    pub const V6_PADDED: &str = "ipv6: frame longer than the packet";
    pub const RULE_V6_JUMBO: &str =
        "rule: IPv6 payload length 0 is a 40-byte packet (etherparse: jumbogram to the frame end)";
    pub const V6_EXTS: &str = "ipv6: extension headers walked";
    pub const V6_EXT_TRUNC: &str = "ipv6: extension header beyond the datagram";
    pub const V6_CHAIN_AGREES: &str = "ipv6: chain and upper layer equal etherparse's";
    pub const RULE_V6_CHAIN_BOUND: &str = "rule: more than MAX_IPV6_EXT_HEADERS extension headers -> unparsed (etherparse: unbounded)";
    pub const RULE_V6_HBH_NOT_FIRST: &str =
        "rule: hop-by-hop after the first header is walked (etherparse rejects)";
    pub const RULE_V6_AH: &str =
        "rule: IPv6 AH ends the walk, keyed as protocol 51 (etherparse walks AH)";
    pub const RULE_V6_FIRST_FRAG: &str = "rule: IPv6 first fragment, transport read (etherparse leaves fragmented payloads unsliced)";
    pub const V6_NON_FIRST_FRAG: &str =
        "ipv6: non-first fragment, protocol = its next header, no ports";
    pub const RULE_V6_NON_FIRST_FRAG_EXT_NEXT: &str = "rule: walk stops at a non-first fragment even if an extension header follows (etherparse walks on)";
    // Transport.
    pub const TCP: &str = "tcp: sliced by etherparse";
    pub const TCP_TRUNC: &str = "tcp: fewer than 20 bytes";
    pub const TCP_DOFF_LT5: &str = "tcp: data offset < 5";
    pub const RULE_TCP_OPTIONS_CUT: &str =
        "rule: TCP options beyond the datagram, keyed by the 20-byte header (etherparse rejects)";
    pub const UDP: &str = "udp: sliced by etherparse";
    pub const UDP_TRUNC: &str = "udp: fewer than 8 bytes";
    pub const RULE_UDP_LENGTH_IGNORED: &str =
        "rule: UDP length field ignored (etherparse rejects it)";
    pub const RULE_UDPLITE: &str = "rule: UDP-Lite ports (etherparse has no UDP-Lite)";
    pub const RULE_UDPLITE_TRUNC: &str = "rule: UDP-Lite fewer than 8 bytes -> unparsed";
    pub const RULE_SCTP: &str =
        "rule: SCTP ports from the 12-byte common header (etherparse has no SCTP)";
    pub const RULE_SCTP_TRUNC: &str = "rule: SCTP fewer than 12 bytes -> unparsed";
    pub const ICMP4: &str = "icmp: sliced by etherparse";
    pub const RULE_ICMP4_TIMESTAMP: &str =
        "rule: ICMP timestamp of another length, keyed by its 8-byte header (etherparse rejects)";
    pub const ICMP6: &str = "icmpv6: sliced by etherparse";
    pub const ICMP_TRUNC: &str = "icmp/icmpv6: fewer than 8 bytes";
    pub const RULE_ICMP_WRONG_VERSION: &str =
        "rule: ICMP in IPv6 / ICMPv6 in IPv4, no type/code (etherparse slices them)";
    pub const RULE_IGMP: &str = "rule: IGMP keyed without ports (etherparse slices IGMP)";
    pub const OTHER_PROTO: &str = "other protocol, keyed without ports";
    // Direct comparison with SlicedPacket.
    pub const SLICED_COMPLETE: &str =
        "etherparse SlicedPacket complete: kernel fields equal its fields";
    pub const SLICED_NON_IP: &str = "etherparse SlicedPacket without IP layer: kernel non-IP";
    pub const SLICED_OUTSIDE: &str =
        "etherparse SlicedPacket Ok where a flowlens rule differs (checked by the expectation)";
    pub const SLICED_ERR: &str = "etherparse SlicedPacket error (checked by the expectation)";
}

const CATEGORIES: &[&str] = &[
    cat::GEN_VALID,
    cat::GEN_TRUNCATE,
    cat::GEN_FLIP,
    cat::GEN_IHL,
    cat::GEN_TOTAL_LEN,
    cat::GEN_V6_PLEN,
    cat::GEN_EXT_CHAIN,
    cat::GEN_PAD,
    cat::GEN_EXTRA_TAG,
    cat::GEN_9100,
    cat::GEN_NON_IP,
    cat::GEN_TCP_DOFF,
    cat::GEN_UDP_LEN,
    cat::OUT_FLOW,
    cat::OUT_NON_IP,
    cat::OUT_UNPARSED,
    cat::ETH_UNTAGGED,
    cat::ETH_ONE_TAG,
    cat::ETH_TWO_TAGS,
    cat::ETH_TAG_TRUNCATED,
    cat::RULE_THIRD_TAG,
    cat::RULE_9100,
    cat::NON_IP_ARP,
    cat::RULE_ARP_MALFORMED,
    cat::NON_IP_OTHER,
    cat::V4_HDR_TRUNC,
    cat::V4_BAD_VERSION,
    cat::V4_BAD_IHL,
    cat::V4_TOTAL_LT_IHL,
    cat::V4_TOTAL_GT_FRAME,
    cat::V4_OPTIONS,
    cat::V4_PADDED,
    cat::V4_NON_FIRST_FRAG,
    cat::RULE_V4_FIRST_FRAG,
    cat::RULE_V4_AH,
    cat::V6_HDR_TRUNC,
    cat::V6_BAD_VERSION,
    cat::V6_PLEN_GT_FRAME,
    cat::V6_PADDED,
    cat::RULE_V6_JUMBO,
    cat::V6_EXTS,
    cat::V6_EXT_TRUNC,
    cat::V6_CHAIN_AGREES,
    cat::RULE_V6_CHAIN_BOUND,
    cat::RULE_V6_HBH_NOT_FIRST,
    cat::RULE_V6_AH,
    cat::RULE_V6_FIRST_FRAG,
    cat::V6_NON_FIRST_FRAG,
    cat::RULE_V6_NON_FIRST_FRAG_EXT_NEXT,
    cat::TCP,
    cat::TCP_TRUNC,
    cat::TCP_DOFF_LT5,
    cat::RULE_TCP_OPTIONS_CUT,
    cat::UDP,
    cat::UDP_TRUNC,
    cat::RULE_UDP_LENGTH_IGNORED,
    cat::RULE_UDPLITE,
    cat::RULE_UDPLITE_TRUNC,
    cat::RULE_SCTP,
    cat::RULE_SCTP_TRUNC,
    cat::ICMP4,
    cat::RULE_ICMP4_TIMESTAMP,
    cat::ICMP6,
    cat::ICMP_TRUNC,
    cat::RULE_ICMP_WRONG_VERSION,
    cat::RULE_IGMP,
    cat::OTHER_PROTO,
    cat::SLICED_COMPLETE,
    cat::SLICED_NON_IP,
    cat::SLICED_OUTSIDE,
    cat::SLICED_ERR,
];

/// A generated frame and where its layers start (before mutation).
struct Gen {
    frame: Vec<u8>,
    /// Offset of the IP header, or `None` for non-IP frames.
    l3: Option<usize>,
    v6: bool,
    /// Offset and protocol of the transport header, if any.
    l4: Option<(usize, u8)>,
}

fn random_tags(r: &mut Rng) -> Tags {
    match r.below(4) {
        0 | 1 => Tags::Untagged,
        2 => Tags::Q(r.below(4096) as u16),
        _ => Tags::QinQ(r.below(4096) as u16, r.below(4096) as u16),
    }
}

fn random_payload_len(r: &mut Rng) -> usize {
    match r.below(10) {
        0..=5 => r.range(0, 64),
        6..=8 => r.range(65, 512),
        _ => r.range(513, 1400),
    }
}

fn random_valid(r: &mut Rng, c: &mut Cats) -> Gen {
    let tags = random_tags(r);
    let l3 = 14 + tags.len();
    if r.pct(3) {
        c.hit(cat::GEN_NON_IP);
        if r.pct(50) {
            let arp = ArpPacket::new(
                ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                ArpOperation::REPLY,
                &r.bytes(6),
                &r.bytes(4),
                &r.bytes(6),
                &r.bytes(4),
            )
            .unwrap();
            let mut f = Vec::new();
            let eth = PacketBuilder::ethernet2(MAC_SRC, MAC_DST);
            match tags {
                Tags::Untagged => eth.arp(arp).write(&mut f),
                Tags::Q(v) => eth.single_vlan(vid(v)).arp(arp).write(&mut f),
                Tags::QinQ(o, i) => eth.double_vlan(vid(o), vid(i)).arp(arp).write(&mut f),
            }
            .unwrap();
            return Gen {
                frame: f,
                l3: None,
                v6: false,
                l4: None,
            };
        }
        let any = r.u16();
        let et = r.pick(&[0x88cc, 0x88e5, 0x8847, 0x0842, 0x22f0, 0x05dc, any]);
        let et = if matches!(et, 0x0800 | 0x86dd | 0x8100 | 0x88a8 | 0x9100) {
            0x88cc
        } else {
            et
        };
        let n = r.range(0, 80);
        return Gen {
            frame: raw_frame(&tags.raw(), et, &r.bytes(n)),
            l3: None,
            v6: false,
            l4: None,
        };
    }
    let v6 = r.pct(50);
    let payload_len = random_payload_len(r);
    let payload = r.bytes(payload_len);
    // Transport: TCP, UDP, ICMP of the IP version, or a raw protocol.
    let kind = r.below(100);
    let tcp = |r: &mut Rng| {
        let mut t = TcpHeader::new(r.u16(), r.u16(), r.next() as u32, r.u16());
        t.acknowledgment_number = r.next() as u32;
        let flags = r.below(0x200) as u16;
        t.fin = flags & FIN != 0;
        t.syn = flags & SYN != 0;
        t.rst = flags & RST != 0;
        t.psh = flags & PSH != 0;
        t.ack = flags & ACK != 0;
        t.urg = flags & URG != 0;
        t.ece = flags & ECE != 0;
        t.cwr = flags & CWR != 0;
        t.ns = flags & NS != 0;
        if r.pct(30) {
            let n = 4 * r.range(1, 10);
            t.set_options_raw(&r.bytes(n)).unwrap();
        }
        t
    };
    let icmp4_type = |r: &mut Rng| {
        let any = r.byte();
        r.pick(&[0u8, 3, 5, 8, 11, 13, 14, any])
    };
    let icmp6_type = |r: &mut Rng| {
        let any = r.byte();
        r.pick(&[1u8, 2, 3, 128, 129, 133, 135, 136, any])
    };
    let raw_proto = |r: &mut Rng, v6: bool| {
        let any = r.byte();
        r.pick(&[
            IPPROTO_SCTP,
            IPPROTO_UDPLITE,
            IPPROTO_GRE,
            IPPROTO_IGMP,
            if v6 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 },
            IPPROTO_NONE,
            IPPROTO_AH,
            any,
        ])
    };
    if v6 {
        let mut h = ipv6_hdr(r.byte());
        h.flow_label = Ipv6FlowLabel::try_new(r.below(1 << 20) as u32).unwrap();
        h.hop_limit = r.byte();
        h.source = r.bytes(16).try_into().unwrap();
        h.destination = r.bytes(16).try_into().unwrap();
        let mut exts = Ipv6Extensions::default();
        if r.pct(15) {
            let raw = |r: &mut Rng| {
                let units = r.range(0, 3);
                Ipv6RawExtHeader::new_raw(ip_number::UDP, &r.bytes(6 + 8 * units)).unwrap()
            };
            if r.pct(50) {
                exts.hop_by_hop_options = Some(raw(r));
            }
            if r.pct(40) {
                exts.destination_options = Some(raw(r));
            }
            if r.pct(40) {
                let fin = if r.pct(50) { Some(raw(r)) } else { None };
                exts.routing = Some(Ipv6RoutingExtensions {
                    routing: raw(r),
                    final_destination_options: fin,
                });
            }
            if r.pct(50) {
                let off = if r.pct(60) {
                    0
                } else {
                    r.range(1, 0x1fff) as u16
                };
                exts.fragment = Some(Ipv6FragmentHeader::new(
                    ip_number::UDP,
                    IpFragOffset::try_new(off).unwrap(),
                    r.pct(50),
                    r.next() as u32,
                ));
            }
        }
        let ext_len = exts.header_len();
        let l4 = l3 + 40 + ext_len;
        if kind < 75 {
            let (l4v, proto) = match kind {
                0..30 => (L4::Tcp(tcp(r)), IPPROTO_TCP),
                30..60 => (L4::Udp(r.u16(), r.u16()), IPPROTO_UDP),
                _ => (L4::Icmp6(icmp6_type(r), r.byte()), IPPROTO_ICMPV6),
            };
            let f = build(tags, IpHeaders::Ipv6(h, exts), l4v, &payload);
            return Gen {
                frame: f,
                l3: Some(l3),
                v6,
                l4: Some((l4, proto)),
            };
        }
        // Raw protocols: no builder extension headers (chains come from the splice mutation).
        let proto = raw_proto(r, true);
        let body = cat(&[&r.bytes(12), &payload]);
        let f = raw_frame(&tags.raw(), 0x86dd, &raw_v6(h, proto, &body));
        return Gen {
            frame: f,
            l3: Some(l3),
            v6,
            l4: Some((l3 + 40, proto)),
        };
    }
    let mut h = ipv4_hdr(r.below(64) as u8, r.below(4) as u8);
    h.identification = r.u16();
    h.time_to_live = r.byte();
    h.source = r.bytes(4).try_into().unwrap();
    h.destination = r.bytes(4).try_into().unwrap();
    h.dont_fragment = r.pct(50);
    if r.pct(12) {
        h.dont_fragment = false;
        h.more_fragments = r.pct(50);
        h.fragment_offset = IpFragOffset::try_new(if r.pct(40) {
            0
        } else {
            r.range(1, 0x1fff) as u16
        })
        .unwrap();
    }
    if r.pct(20) {
        let n = 4 * r.range(1, 10);
        h.options = Ipv4Options::try_from(&r.bytes(n)[..]).unwrap();
    }
    let l4 = l3 + h.header_len();
    if kind < 75 {
        let (l4v, proto) = match kind {
            0..30 => (L4::Tcp(tcp(r)), IPPROTO_TCP),
            30..60 => (L4::Udp(r.u16(), r.u16()), IPPROTO_UDP),
            _ => {
                let ty = icmp4_type(r);
                let any = r.byte();
                (L4::Icmp4(ty, r.pick(&[0, 0, 1, any])), IPPROTO_ICMP)
            }
        };
        // ICMP timestamp messages are 20 bytes; let some be exactly that.
        let payload = if matches!(l4v, L4::Icmp4(13 | 14, 0)) && r.pct(50) {
            r.bytes(12)
        } else {
            payload
        };
        let f = build(tags, ip4(h), l4v, &payload);
        return Gen {
            frame: f,
            l3: Some(l3),
            v6,
            l4: Some((l4, proto)),
        };
    }
    let proto = raw_proto(r, false);
    let body = cat(&[&r.bytes(12), &payload]);
    let f = raw_frame(&tags.raw(), 0x0800, &raw_v4(h, proto, &body));
    Gen {
        frame: f,
        l3: Some(l3),
        v6,
        l4: Some((l4, proto)),
    }
}

/// Splices a random extension-header chain (hop-by-hop anywhere, routing, destination options,
/// fragment headers first or not; 1..=MAX+2 headers, sometimes ending in AH or "no next header")
/// after the fixed IPv6 header.
fn splice_ext_chain(r: &mut Rng, g: &mut Gen) {
    let l3 = g.l3.unwrap();
    let n = r.range(1, MAX_IPV6_EXT_HEADERS + 2);
    let types: Vec<u8> = (0..n)
        .map(|i| {
            if i == 0 && r.pct(50) {
                IPPROTO_HOPOPTS
            } else {
                r.pick(&[
                    IPPROTO_ROUTING,
                    IPPROTO_DSTOPTS,
                    IPPROTO_DSTOPTS,
                    IPPROTO_FRAGMENT,
                    IPPROTO_FRAGMENT,
                    IPPROTO_HOPOPTS,
                ])
            }
        })
        .collect();
    let mut last_next = g.frame[l3 + 6];
    if r.pct(5) {
        last_next = r.pick(&[IPPROTO_AH, IPPROTO_NONE]);
    }
    let mut chain = Vec::new();
    for (i, &t) in types.iter().enumerate() {
        let next = if i + 1 < n { types[i + 1] } else { last_next };
        if t == IPPROTO_FRAGMENT {
            let off = if r.pct(75) {
                0
            } else {
                r.range(1, 0x1fff) as u16
            };
            chain.extend(frag6(next, off, r.pct(50)));
        } else {
            let units = r.range(0, 2);
            let mut e = r.bytes((units + 1) * 8);
            e[0] = next;
            e[1] = units as u8;
            chain.extend(e);
        }
    }
    g.frame[l3 + 6] = types[0];
    let plen = u16::from_be_bytes([g.frame[l3 + 4], g.frame[l3 + 5]]) as usize + chain.len();
    g.frame[l3 + 4..l3 + 6].copy_from_slice(&(plen as u16).to_be_bytes());
    let at = l3 + 40;
    g.frame.splice(at..at, chain.iter().copied());
    if let Some((l4, p)) = g.l4 {
        g.l4 = Some((l4 + chain.len(), p));
    }
}

/// A random frame: a valid packet, possibly mutated.
fn random_frame(r: &mut Rng, c: &mut Cats) -> Vec<u8> {
    let mut g = random_valid(r, c);
    let mut mutations = 0;
    // Structural mutations first (they keep the layer offsets meaningful) ...
    if g.v6 && r.pct(20) {
        c.hit(cat::GEN_EXT_CHAIN);
        splice_ext_chain(r, &mut g);
        mutations += 1;
    }
    if r.pct(3) {
        // One more tag (802.1Q or 802.1ad, or the 0x9100 that flowlens does not treat as a tag)
        // at a random depth: outermost, between the tags, or innermost.
        let tpid = if r.pct(25) {
            c.hit(cat::GEN_9100);
            0x9100
        } else {
            c.hit(cat::GEN_EXTRA_TAG);
            r.pick(&[0x8100u16, 0x88a8])
        };
        let mut depth = 0;
        while matches!(
            u16::from_be_bytes([g.frame[12 + 4 * depth], g.frame[13 + 4 * depth]]),
            0x8100 | 0x88a8 | 0x9100
        ) {
            depth += 1;
        }
        let at = 12 + 4 * r.range(0, depth);
        g.frame
            .splice(at..at, [tpid.to_be_bytes(), r.u16().to_be_bytes()].concat());
        g.l3 = g.l3.map(|o| o + 4);
        g.l4 = g.l4.map(|(o, p)| (o + 4, p));
        mutations += 1;
    }
    // ... then field mutations ...
    if let Some(l3) = g.l3 {
        if !g.v6 && r.pct(5) {
            c.hit(cat::GEN_IHL);
            g.frame[l3] = 0x40 | r.below(16) as u8;
            mutations += 1;
        }
        if !g.v6 && r.pct(5) {
            c.hit(cat::GEN_TOTAL_LEN);
            let cur = u16::from_be_bytes([g.frame[l3 + 2], g.frame[l3 + 3]]);
            let v = match r.below(3) {
                0 => r.u16(),
                1 => r.below(64) as u16,
                _ => cur.wrapping_add(r.range(0, 16) as u16).wrapping_sub(8),
            };
            g.frame[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
            mutations += 1;
        }
        if g.v6 && r.pct(6) {
            c.hit(cat::GEN_V6_PLEN);
            let cur = u16::from_be_bytes([g.frame[l3 + 4], g.frame[l3 + 5]]);
            let v = match r.below(4) {
                0 => r.u16(),
                1 => 0,
                2 => r.below(48) as u16,
                _ => cur.wrapping_add(r.range(0, 16) as u16).wrapping_sub(8),
            };
            g.frame[l3 + 4..l3 + 6].copy_from_slice(&v.to_be_bytes());
            mutations += 1;
        }
        if let Some((l4, proto)) = g.l4 {
            if proto == IPPROTO_TCP && l4 + 13 <= g.frame.len() && r.pct(8) {
                c.hit(cat::GEN_TCP_DOFF);
                g.frame[l4 + 12] = (r.below(16) as u8) << 4 | (g.frame[l4 + 12] & 0x0f);
                mutations += 1;
            }
            if proto == IPPROTO_UDP && l4 + 6 <= g.frame.len() && r.pct(8) {
                c.hit(cat::GEN_UDP_LEN);
                let v = if r.pct(50) {
                    r.below(16) as u16
                } else {
                    r.u16()
                };
                g.frame[l4 + 4..l4 + 6].copy_from_slice(&v.to_be_bytes());
                mutations += 1;
            }
        }
    }
    if r.pct(12) {
        c.hit(cat::GEN_FLIP);
        let end =
            g.l4.map(|(o, _)| o + 24)
                .or(g.l3.map(|o| o + 48))
                .unwrap_or(40)
                .min(g.frame.len());
        for _ in 0..r.range(1, 3) {
            let at = r.below(end as u64) as usize;
            g.frame[at] ^= r.range(1, 255) as u8;
        }
        mutations += 1;
    }
    // ... then length changes.
    if r.pct(12) && g.frame.len() > 14 {
        c.hit(cat::GEN_TRUNCATE);
        let len = r.range(14, g.frame.len() - 1);
        g.frame.truncate(len);
        mutations += 1;
    } else if r.pct(6) {
        c.hit(cat::GEN_PAD);
        let n = r.range(1, 40);
        g.frame.extend(r.bytes(n));
        mutations += 1;
    }
    if mutations == 0 {
        c.hit(cat::GEN_VALID);
    }
    g.frame
}

/// The expected outcome of `frame`, computed with etherparse's slicers layer by layer plus the
/// documented flowlens rules (top of abi/src/parse.rs) wherever they deliberately differ from
/// etherparse. Each such place hits a `rule: ...` category.
fn expect_with_etherparse(frame: &[u8], c: &mut Cats) -> Parsed {
    let Ok(eth) = Ethernet2Slice::from_slice_without_fcs(frame) else {
        unreachable!("frames are >= 14 bytes");
    };
    let mut et = eth.ether_type();
    let mut rest = eth.payload_slice();
    let mut vlan = VLAN_NONE;
    let mut tags = 0;
    loop {
        if et == ether_type::VLAN_TAGGED_FRAME || et == ether_type::PROVIDER_BRIDGING {
            if tags == 2 {
                // Rule: two tags at most; a third 802.1Q/802.1ad tag (complete or not) makes the
                // frame unparsed.
                c.hit(cat::RULE_THIRD_TAG);
                return Parsed::Unparsed;
            }
            let Ok(tag) = SingleVlanSlice::from_slice(rest) else {
                c.hit(cat::ETH_TAG_TRUNCATED);
                return Parsed::Unparsed;
            };
            if tags == 0 {
                vlan = tag.vlan_identifier().value();
            }
            tags += 1;
            et = tag.ether_type();
            rest = tag.payload_slice();
        } else if et == ether_type::VLAN_DOUBLE_TAGGED_FRAME {
            // Rule: only 0x8100 and 0x88a8 are VLAN TPIDs for flowlens; etherparse also treats
            // 0x9100 as one. For flowlens the frame is neither IPv4 nor IPv6: non-IP.
            c.hit(cat::RULE_9100);
            return Parsed::NonIp;
        } else {
            break;
        }
    }
    c.hit([cat::ETH_UNTAGGED, cat::ETH_ONE_TAG, cat::ETH_TWO_TAGS][tags]);
    if et == ether_type::IPV4 {
        expect_ipv4(rest, vlan, c)
    } else if et == ether_type::IPV6 {
        expect_ipv6(rest, vlan, c)
    } else if et == ether_type::ARP {
        // Rule: non-IP frames are counted, never validated.
        if etherparse::ArpPacketSlice::from_slice(rest).is_ok() {
            c.hit(cat::NON_IP_ARP);
        } else {
            c.hit(cat::RULE_ARP_MALFORMED);
        }
        Parsed::NonIp
    } else {
        c.hit(cat::NON_IP_OTHER);
        Parsed::NonIp
    }
}

fn expect_ipv4(rest: &[u8], vlan: u16, c: &mut Cats) -> Parsed {
    // Rule: flowlens does not walk the IPv4 authentication header; an AH datagram is keyed as
    // protocol 51 without ports. etherparse walks AH, so the protocol byte is masked (to 253,
    // "experimental") for etherparse, which then slices exactly the datagram flowlens sees.
    let masked;
    let mut bytes = rest;
    let ah = rest.len() >= 20 && rest[9] == IPPROTO_AH;
    if ah {
        let mut m = rest.to_vec();
        m[9] = 253;
        masked = m;
        bytes = &masked;
    }
    let ip = match Ipv4Slice::from_slice(bytes) {
        Ok(ip) => ip,
        Err(e) => {
            use err::ipv4::{HeaderError, SliceError};
            c.hit(match e {
                SliceError::Header(HeaderError::UnexpectedVersion { .. }) => cat::V4_BAD_VERSION,
                SliceError::Header(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
                    cat::V4_BAD_IHL
                }
                SliceError::Len(l) if l.layer == err::Layer::Ipv4Header => cat::V4_HDR_TRUNC,
                SliceError::Len(l) if l.len_source == etherparse::LenSource::Ipv4HeaderTotalLen => {
                    cat::V4_TOTAL_LT_IHL
                }
                SliceError::Len(_) => cat::V4_TOTAL_GT_FRAME,
                SliceError::Exts(e) => unreachable!("AH is masked: {e:?}"),
            });
            return Parsed::Unparsed;
        }
    };
    if ah {
        c.hit(cat::RULE_V4_AH);
    }
    let h = ip.header();
    let total = usize::from(h.total_len());
    if h.ihl() > 5 {
        c.hit(cat::V4_OPTIONS);
    }
    if bytes.len() > total {
        c.hit(cat::V4_PADDED);
    }
    let meta = FlowMeta {
        key: FlowKey {
            src_addr: mapped(h.source()),
            dst_addr: mapped(h.destination()),
            ip_version: 4,
            protocol: rest[9],
            vlan_id: vlan,
            ..FlowKey::ZERO
        },
        ip_len: total as u32,
        tcp_flags: 0,
        dscp: h.dcp().value(),
    };
    if h.fragments_offset().value() != 0 {
        // etherparse marks the payload fragmented and slices no transport; flowlens keys
        // non-first fragments without ports: the same outcome.
        assert!(ip.payload().fragmented);
        c.hit(cat::V4_NON_FIRST_FRAG);
        return Parsed::Flow(meta);
    }
    if h.more_fragments() {
        // Rule: a first fragment carries the transport header, which flowlens reads.
        c.hit(cat::RULE_V4_FIRST_FRAG);
    }
    let payload = ip.payload().payload;
    assert_eq!(payload.len(), total - h.slice().len());
    expect_transport(payload, meta, false, c)
}

fn expect_ipv6(rest: &[u8], vlan: u16, c: &mut Cats) -> Parsed {
    let h = match Ipv6HeaderSlice::from_slice(rest) {
        Ok(h) => h,
        Err(err::ipv6::HeaderSliceError::Len(_)) => {
            c.hit(cat::V6_HDR_TRUNC);
            return Parsed::Unparsed;
        }
        Err(err::ipv6::HeaderSliceError::Content(_)) => {
            c.hit(cat::V6_BAD_VERSION);
            return Parsed::Unparsed;
        }
    };
    let plen = usize::from(h.payload_length());
    if plen == 0 && rest.len() > 40 {
        // Rule: no jumbogram support. etherparse takes payload length 0 as "to the end of the
        // slice"; for flowlens the packet is the 40-byte header and the rest is padding.
        c.hit(cat::RULE_V6_JUMBO);
    }
    if rest.len() < 40 + plen {
        // etherparse's Ipv6Slice reports the same length error.
        assert!(matches!(
            Ipv6Slice::from_slice(rest),
            Err(err::ipv6::SliceError::Len(l)) if l.layer == err::Layer::Ipv6Packet
        ));
        c.hit(cat::V6_PLEN_GT_FRAME);
        return Parsed::Unparsed;
    }
    if rest.len() > 40 + plen {
        c.hit(cat::V6_PADDED);
    }
    let dgram = &rest[..40 + plen];
    let mut meta = FlowMeta {
        key: FlowKey {
            src_addr: h.source(),
            dst_addr: h.destination(),
            ip_version: 6,
            vlan_id: vlan,
            ..FlowKey::ZERO
        },
        ip_len: (40 + plen) as u32,
        tcp_flags: 0,
        dscp: h.dscp().value(),
    };
    // Extension headers by the flowlens rules, each header decoded by etherparse.
    let mut next = h.next_header().0;
    let mut cur = &dgram[40..];
    let mut n = 0;
    let mut deviates = false;
    let mut non_first = false;
    let mut first_fragment = false;
    while matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    ) {
        if n == MAX_IPV6_EXT_HEADERS {
            // Rule: the walk is bounded; a longer chain is unparsed.
            c.hit(cat::RULE_V6_CHAIN_BOUND);
            return Parsed::Unparsed;
        }
        if next == IPPROTO_HOPOPTS && n > 0 {
            // Rule: flowlens walks a hop-by-hop header anywhere in the chain; etherparse
            // (like RFC 8200) only accepts it first.
            c.hit(cat::RULE_V6_HBH_NOT_FIRST);
            deviates = true;
        }
        n += 1;
        if next == IPPROTO_FRAGMENT {
            let Ok(f) = Ipv6FragmentHeaderSlice::from_slice(cur) else {
                c.hit(cat::V6_EXT_TRUNC);
                assert!(deviates || Ipv6Slice::from_slice(dgram).is_err());
                return Parsed::Unparsed;
            };
            next = f.next_header().0;
            cur = &cur[f.slice().len()..];
            if f.fragment_offset().value() != 0 {
                non_first = true;
                break;
            }
            if f.more_fragments() {
                first_fragment = true;
            }
        } else {
            let Ok(e) = Ipv6RawExtHeaderSlice::from_slice(cur) else {
                c.hit(cat::V6_EXT_TRUNC);
                assert!(deviates || Ipv6Slice::from_slice(dgram).is_err());
                return Parsed::Unparsed;
            };
            next = e.next_header().0;
            cur = &cur[e.slice().len()..];
        }
    }
    if n > 0 {
        c.hit(cat::V6_EXTS);
    }
    meta.key.protocol = next;
    if non_first
        && matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | IPPROTO_AH
        )
    {
        // Rule: the data after a non-first fragment header is fragment data, never walked;
        // etherparse walks on into it.
        c.hit(cat::RULE_V6_NON_FIRST_FRAG_EXT_NEXT);
        deviates = true;
    }
    if next == IPPROTO_AH && !non_first {
        // Rule: AH ends the walk (keyed as protocol 51, no ports); etherparse walks AH.
        c.hit(cat::RULE_V6_AH);
        deviates = true;
    }
    if !deviates {
        // Where the rules coincide, etherparse's own chain walk must end at the same header.
        match Ipv6Slice::from_slice(dgram) {
            Ok(s) => {
                assert_eq!(s.payload().ip_number.0, next, "upper layer after the chain");
                assert_eq!(
                    s.payload().payload.len(),
                    cur.len(),
                    "offset of the upper layer"
                );
                assert_eq!(
                    s.payload().fragmented,
                    non_first || first_fragment,
                    "fragmented"
                );
                c.hit(cat::V6_CHAIN_AGREES);
            }
            Err(e) => panic!(
                "etherparse rejects an IPv6 chain flowlens accepts, without a documented rule: {e:?}"
            ),
        }
    }
    if non_first {
        c.hit(cat::V6_NON_FIRST_FRAG);
        return Parsed::Flow(meta);
    }
    if first_fragment {
        // Rule: a first fragment carries the transport header, which flowlens reads.
        c.hit(cat::RULE_V6_FIRST_FRAG);
    }
    expect_transport(cur, meta, true, c)
}

fn expect_transport(p: &[u8], mut meta: FlowMeta, v6: bool, c: &mut Cats) -> Parsed {
    let proto = meta.key.protocol;
    match proto {
        IPPROTO_TCP => {
            let t = match TcpSlice::from_slice(p) {
                Ok(t) => {
                    c.hit(cat::TCP);
                    t
                }
                Err(err::tcp::HeaderSliceError::Content(_)) => {
                    c.hit(cat::TCP_DOFF_LT5);
                    return Parsed::Unparsed;
                }
                Err(err::tcp::HeaderSliceError::Len(_)) if p.len() < 20 => {
                    c.hit(cat::TCP_TRUNC);
                    return Parsed::Unparsed;
                }
                Err(err::tcp::HeaderSliceError::Len(_)) => {
                    // Rule: flowlens needs the fixed 20-byte header only; options cut short by
                    // the datagram end do not matter. Decode the fixed header with etherparse
                    // by presenting it with data offset 5 (the NS bit kept).
                    c.hit(cat::RULE_TCP_OPTIONS_CUT);
                    let mut fixed = p[..20].to_vec();
                    fixed[12] = 0x50 | (fixed[12] & 0x0f);
                    let t = TcpSlice::from_slice(&fixed).unwrap();
                    return tcp_meta(meta, &t);
                }
            };
            tcp_meta(meta, &t)
        }
        IPPROTO_UDP => match UdpSlice::from_slice(p) {
            Ok(u) => {
                c.hit(cat::UDP);
                meta.key.src_port = u.source_port();
                meta.key.dst_port = u.destination_port();
                Parsed::Flow(meta)
            }
            Err(_) if p.len() < 8 => {
                c.hit(cat::UDP_TRUNC);
                Parsed::Unparsed
            }
            Err(_) => {
                // Rule: the UDP length field is not checked (only the 8-byte header must lie
                // inside the datagram); etherparse rejects lengths < 8 or beyond the datagram.
                c.hit(cat::RULE_UDP_LENGTH_IGNORED);
                let u = UdpHeaderSlice::from_slice(p).unwrap();
                meta.key.src_port = u.source_port();
                meta.key.dst_port = u.destination_port();
                Parsed::Flow(meta)
            }
        },
        IPPROTO_UDPLITE => {
            // Rule: UDP-Lite is keyed by its ports; its 8-byte header is laid out like UDP's (the
            // length field is a checksum coverage), so etherparse's UDP header slicer decodes it.
            match UdpHeaderSlice::from_slice(p) {
                Ok(u) => {
                    c.hit(cat::RULE_UDPLITE);
                    meta.key.src_port = u.source_port();
                    meta.key.dst_port = u.destination_port();
                    Parsed::Flow(meta)
                }
                Err(_) => {
                    c.hit(cat::RULE_UDPLITE_TRUNC);
                    Parsed::Unparsed
                }
            }
        }
        IPPROTO_SCTP => {
            // Rule: SCTP is keyed by the ports of its 12-byte common header (RFC 9260: source
            // port, destination port, verification tag, checksum); etherparse has no SCTP.
            if p.len() < 12 {
                c.hit(cat::RULE_SCTP_TRUNC);
                return Parsed::Unparsed;
            }
            c.hit(cat::RULE_SCTP);
            meta.key.src_port = u16::from_be_bytes([p[0], p[1]]);
            meta.key.dst_port = u16::from_be_bytes([p[2], p[3]]);
            Parsed::Flow(meta)
        }
        IPPROTO_ICMP if !v6 => match etherparse::Icmpv4Slice::from_slice(p) {
            Ok(i) => {
                c.hit(cat::ICMP4);
                meta.key.icmp_type = i.type_u8();
                meta.key.icmp_code = i.code_u8();
                Parsed::Flow(meta)
            }
            Err(_) if p.len() < 8 => {
                c.hit(cat::ICMP_TRUNC);
                Parsed::Unparsed
            }
            Err(e) => {
                // Rule: flowlens reads type and code from the 8-byte ICMP header; etherparse also
                // requires timestamp (13/14, code 0) messages to be exactly 20 bytes.
                assert!(
                    matches!(
                        e.layer,
                        err::Layer::Icmpv4Timestamp | err::Layer::Icmpv4TimestampReply
                    ),
                    "{e:?}"
                );
                c.hit(cat::RULE_ICMP4_TIMESTAMP);
                meta.key.icmp_type = p[0];
                meta.key.icmp_code = p[1];
                Parsed::Flow(meta)
            }
        },
        IPPROTO_ICMPV6 if v6 => match etherparse::Icmpv6Slice::from_slice(p) {
            Ok(i) => {
                c.hit(cat::ICMP6);
                meta.key.icmp_type = i.type_u8();
                meta.key.icmp_code = i.code_u8();
                Parsed::Flow(meta)
            }
            Err(_) => {
                assert!(p.len() < 8);
                c.hit(cat::ICMP_TRUNC);
                Parsed::Unparsed
            }
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Rule: ICMP in IPv6 and ICMPv6 in IPv4 are "other protocols": no type/code, no
            // length requirement. etherparse slices them as ICMP regardless of the IP version.
            c.hit(cat::RULE_ICMP_WRONG_VERSION);
            Parsed::Flow(meta)
        }
        IPPROTO_IGMP => {
            // Rule: IGMP is an "other protocol" for flowlens (etherparse slices it).
            c.hit(cat::RULE_IGMP);
            Parsed::Flow(meta)
        }
        _ => {
            c.hit(cat::OTHER_PROTO);
            Parsed::Flow(meta)
        }
    }
}

fn tcp_meta(mut meta: FlowMeta, t: &TcpSlice<'_>) -> Parsed {
    meta.key.src_port = t.source_port();
    meta.key.dst_port = t.destination_port();
    meta.tcp_flags = tcp_flags(t);
    Parsed::Flow(meta)
}

fn tcp_flags(t: &TcpSlice<'_>) -> u16 {
    let bits = [
        t.fin(),
        t.syn(),
        t.rst(),
        t.psh(),
        t.ack(),
        t.urg(),
        t.ece(),
        t.cwr(),
        t.ns(),
    ];
    bits.iter()
        .enumerate()
        .map(|(i, &b)| u16::from(b) << i)
        .sum()
}

/// The direct comparison: for frames etherparse's `SlicedPacket::from_ethernet` slices
/// completely and where no flowlens rule differs, the kernel's addresses, protocol, ports, ICMP
/// type/code, VLAN id, IP length, TCP flags and DSCP must equal etherparse's fields.
fn compare_with_sliced(frame: &[u8], kernel: &Parsed, c: &mut Cats) -> Result<(), String> {
    let Ok(sp) = SlicedPacket::from_ethernet(frame) else {
        c.hit(cat::SLICED_ERR);
        return Ok(());
    };
    // Link layer: at most two 802.1Q/802.1ad tags, no 0x9100, no MACsec, and nothing beyond.
    let Some(LinkSlice::Ethernet2(eth)) = &sp.link else {
        unreachable!()
    };
    let mut tpid = eth.ether_type();
    let mut vlan = VLAN_NONE;
    let mut link_ok = sp.link_exts.len() <= 2;
    for (i, ext) in sp.link_exts.iter().enumerate() {
        match ext {
            LinkExtSlice::Vlan(v) => {
                link_ok &=
                    tpid == ether_type::VLAN_TAGGED_FRAME || tpid == ether_type::PROVIDER_BRIDGING;
                if i == 0 {
                    vlan = v.vlan_identifier().value();
                }
                tpid = v.ether_type();
            }
            LinkExtSlice::Macsec(_) => link_ok = false,
        }
    }
    // A third tag that etherparse did not slice (its limit) is outside too.
    link_ok &= !(tpid == ether_type::VLAN_TAGGED_FRAME
        || tpid == ether_type::PROVIDER_BRIDGING
        || tpid == ether_type::VLAN_DOUBLE_TAGGED_FRAME);
    if !link_ok {
        c.hit(cat::SLICED_OUTSIDE);
        return Ok(());
    }
    let (key, ip_len, dscp, proto, v6) = match &sp.net {
        None | Some(NetSlice::Arp(_)) => {
            c.hit(cat::SLICED_NON_IP);
            return if *kernel == Parsed::NonIp {
                Ok(())
            } else {
                Err("etherparse: no IP layer".into())
            };
        }
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if ip.payload().fragmented || ip.payload().ip_number != h.protocol() {
                c.hit(cat::SLICED_OUTSIDE);
                return Ok(());
            }
            let key = FlowKey {
                src_addr: mapped(h.source()),
                dst_addr: mapped(h.destination()),
                ip_version: 4,
                ..FlowKey::ZERO
            };
            (
                key,
                u32::from(h.total_len()),
                h.dcp().value(),
                ip.payload().ip_number.0,
                false,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let n_ext = ip.extensions().clone().into_iter().count();
            let has_ah = ip
                .extensions()
                .clone()
                .into_iter()
                .any(|e| matches!(e, etherparse::Ipv6ExtensionSlice::Authentication(_)));
            if ip.payload().fragmented
                || n_ext > MAX_IPV6_EXT_HEADERS
                || has_ah
                || h.payload_length() == 0
            {
                c.hit(cat::SLICED_OUTSIDE);
                return Ok(());
            }
            let key = FlowKey {
                src_addr: h.source(),
                dst_addr: h.destination(),
                ip_version: 6,
                ..FlowKey::ZERO
            };
            (
                key,
                40 + u32::from(h.payload_length()),
                h.dscp().value(),
                ip.payload().ip_number.0,
                true,
            )
        }
    };
    let mut key = FlowKey {
        vlan_id: vlan,
        protocol: proto,
        ..key
    };
    let mut flags = 0;
    match &sp.transport {
        Some(TransportSlice::Tcp(t)) => {
            key.src_port = t.source_port();
            key.dst_port = t.destination_port();
            flags = tcp_flags(t);
        }
        Some(TransportSlice::Udp(u)) => {
            key.src_port = u.source_port();
            key.dst_port = u.destination_port();
        }
        Some(TransportSlice::Icmpv4(i)) if !v6 => {
            key.icmp_type = i.type_u8();
            key.icmp_code = i.code_u8();
        }
        Some(TransportSlice::Icmpv6(i)) if v6 => {
            key.icmp_type = i.type_u8();
            key.icmp_code = i.code_u8();
        }
        Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_))
        | Some(TransportSlice::Igmp(_)) => {
            c.hit(cat::SLICED_OUTSIDE);
            return Ok(());
        }
        None if matches!(proto, IPPROTO_SCTP | IPPROTO_UDPLITE) => {
            c.hit(cat::SLICED_OUTSIDE);
            return Ok(());
        }
        None => {}
    }
    c.hit(cat::SLICED_COMPLETE);
    let want = Parsed::Flow(FlowMeta {
        key,
        ip_len,
        tcp_flags: flags,
        dscp,
    });
    if *kernel == want {
        Ok(())
    } else {
        Err(format!("etherparse SlicedPacket says {want:?}"))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn differential_kernel_twin_etherparse() {
    let seed = match std::env::var("FLOWLENS_DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .expect("FLOWLENS_DIFF_SEED: u64")
        }
        Err(_) => 0x5eed_f10e_1e25_2026,
    };
    let packets: usize = std::env::var("FLOWLENS_DIFF_PACKETS")
        .map_or(200_000, |s| s.parse().expect("FLOWLENS_DIFF_PACKETS"));
    println!(
        "differential: seed {seed:#x} (FLOWLENS_DIFF_SEED), {packets} packets (FLOWLENS_DIFF_PACKETS)"
    );
    let started = std::time::Instant::now();
    let mut r = Rng::new(seed);
    let mut c = Cats::default();
    let mut k = Kernel::load();
    let mut failures = Vec::new();
    let mut failed = 0usize;
    for i in 0..packets {
        let frame = random_frame(&mut r, &mut c);
        let twin = parse_ethernet(&frame[..]);
        let kernel = match observe_one(&mut k, &frame) {
            Ok(p) => p,
            Err(e) => {
                failed += 1;
                failures.push(format!("#{i}: kernel: {e}\n  frame {}", hex(&frame)));
                continue;
            }
        };
        c.hit(match kernel {
            Parsed::Flow(_) => cat::OUT_FLOW,
            Parsed::NonIp => cat::OUT_NON_IP,
            Parsed::Unparsed => cat::OUT_UNPARSED,
        });
        let expected = expect_with_etherparse(&frame, &mut c);
        let mut why = Vec::new();
        if kernel != twin {
            why.push(format!("twin says {twin:?}"));
        }
        if kernel != expected {
            why.push(format!("etherparse expectation says {expected:?}"));
        }
        if let Err(e) = compare_with_sliced(&frame, &kernel, &mut c) {
            why.push(e);
        }
        if !why.is_empty() {
            failed += 1;
            failures.push(format!(
                "#{i}: kernel says {kernel:?}\n  {}\n  frame {}",
                why.join("\n  "),
                hex(&frame)
            ));
        }
    }
    println!(
        "differential: {packets} packets in {:.1?}",
        started.elapsed()
    );
    for (name, n) in &c.0 {
        println!("  {n:>7}  {name}");
    }
    if failed > 0 {
        for f in failures.iter().take(20) {
            println!("{f}");
        }
        panic!("{failed} of {packets} packets disagree (seed {seed:#x}); first ones above");
    }
    let missing: Vec<_> = CATEGORIES
        .iter()
        .filter(|n| !c.0.contains_key(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "categories never hit (seed {seed:#x}): {missing:#?}"
    );
    let undeclared: Vec<_> = c.0.keys().filter(|n| !CATEGORIES.contains(n)).collect();
    assert!(
        undeclared.is_empty(),
        "undeclared categories: {undeclared:?}"
    );
    // Nothing left behind in the map, counters consistent.
    assert!(k.drain().is_empty());
}

/// The default clock for XDP is the kernel's coarse CLOCK_MONOTONIC (one scheduler tick): a
/// packet's stamp is at most one tick (at most 10 ms at HZ=100) before the run and never after it.
#[test]
fn coarse_timestamps_are_within_a_tick() {
    let mut probe = Probe::load(MAX_FLOWS).unwrap();
    probe.xdp_program(XDP_PROGRAM).unwrap();
    let (mut d, _) = probe.take_per_key_drainer().unwrap();
    let frame = tcp_frame_for_time_test();
    let t0 = monotonic_ns();
    let prog = probe.xdp_program(XDP_PROGRAM).unwrap();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 3,
            ..Default::default()
        })
        .unwrap();
    let t1 = monotonic_ns();
    assert_eq!(r.return_value, XDP_PASS);
    let mut out = Vec::new();
    d.drain(&mut out).unwrap();
    assert_eq!(out.len(), 1);
    let v = out[0].1;
    assert_eq!(v.packets, 3);
    const TICK_MAX: u64 = 10_000_000;
    for t in [v.first_seen_ns, v.last_seen_ns] {
        assert!(
            t + TICK_MAX >= t0 && t <= t1,
            "stamp {t} outside [{t0} - 10 ms, {t1}]"
        );
    }
}

fn tcp_frame_for_time_test() -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 9, 0, 1], [10, 9, 0, 2], 64)
        .tcp(1234, 80, 1, 1000)
        .write(&mut f, &[0u8; 20])
        .unwrap();
    f
}
