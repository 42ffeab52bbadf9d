//! The real netfilter probe (`flowlens_nf`), loaded by flowlens' own netfilter loader and run by
//! the kernel through `BPF_PROG_TEST_RUN` (`bpf_prog_test_run_nf`, net/bpf/test_run.c): the
//! packet starts at the IP header, the hook and family come from the context, and the harness
//! uses the caller's loopback device as in and out interface (ifindex 1). Needs root.

use etherparse::PacketBuilder;
use flowlens::{
    drain::{Counters, Drainer},
    netfilter::{Family, Hook, btf::Btf, nf_offsets},
    probe::{NF_DIRECT_PROGRAM, NF_NOOP_PROGRAM, NF_PROGRAM, Probe},
};
use flowlens_schema::{
    FlowKey, FlowValue, IPPROTO_TCP, IPPROTO_UDP, NF_ACCEPT, OBS_NF_PRE_ROUTING, stats,
};

const LO_IFINDEX: u32 = 1;

fn probe() -> Probe {
    let offsets = nf_offsets(&Btf::from_kernel().unwrap()).unwrap();
    Probe::load_with(1024, Some(offsets)).unwrap()
}

/// IP packet (no link layer) with a UDP payload of `len` bytes.
fn udp(v6: bool, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let b = if v6 {
        PacketBuilder::ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(sport, dport)
    } else {
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(sport, dport)
    };
    let payload = vec![7u8; len];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(sport, dport, 1, 1000)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// Drains through the exactly-once path; checks its accounting and returns the counters.
fn drain(probe: &mut Probe) -> (Vec<(FlowKey, FlowValue)>, Counters) {
    let mut d = probe.take_drainer().unwrap();
    let mut out = Vec::new();
    let a = d.drain(&mut out).unwrap().total().unwrap();
    assert_eq!(
        (a.drained_packets, a.drained_bytes, a.evicted_packets),
        (a.keyed_packets, a.keyed_bytes, 0),
        "{a:?}"
    );
    (out, d.stats().read().unwrap())
}

/// Every hook and both families: one record per (hook, family) with exact counts, the hook's
/// observation point, the interface the harness provides, and NF_ACCEPT every time.
#[test]
fn every_hook_and_family_counts_exactly() {
    every_hook_and_family(NF_PROGRAM);
}

/// The same for the benchmark twin that reads kernel structs with direct BTF loads: it passes
/// the verifier and counts identically.
#[test]
fn direct_load_twin_counts_the_same() {
    every_hook_and_family(NF_DIRECT_PROGRAM);
}

fn every_hook_and_family(program: &str) {
    let mut p = probe();
    let prog = p.load_netfilter(program).unwrap();
    let mut want = Vec::new();
    for (i, hook) in Hook::ALL.into_iter().enumerate() {
        for family in Family::BOTH {
            let v6 = family == Family::Ipv6;
            let sport = 1000 + 10 * i as u16 + v6 as u16;
            let pkt = udp(v6, sport, 53, 10 * (i + 1));
            let repeat = 3 + i as u32;
            let (verdict, _) = prog.test_run(&pkt, hook, family, repeat).unwrap();
            assert_eq!(verdict, NF_ACCEPT as u32, "{hook} {family}");
            want.push((
                OBS_NF_PRE_ROUTING + hook.hooknum() as u8,
                v6,
                sport,
                repeat as u64,
                repeat as u64 * pkt.len() as u64,
            ));
        }
    }
    // A TCP SYN at forward, to check flags and ports through the skb path.
    let syn = tcp_syn(4321, 80);
    let (verdict, _) = prog.test_run(&syn, Hook::Forward, Family::Ipv4, 2).unwrap();
    assert_eq!(verdict, NF_ACCEPT as u32);
    let (flows, ks) = drain(&mut p);
    assert_eq!(flows.len(), want.len() + 1, "{flows:#?}");
    for (obs, v6, sport, packets, bytes) in want {
        let (k, v) = flows
            .iter()
            .find(|(k, _)| k.observation_point == obs && k.src_port == sport)
            .unwrap_or_else(|| panic!("no flow for obs {obs} port {sport}: {flows:#?}"));
        assert_eq!(k.ip_version, if v6 { 6 } else { 4 });
        assert_eq!(k.protocol, IPPROTO_UDP);
        assert_eq!(k.dst_port, 53);
        // The harness picks the devices from its *default* hook (local_out) before copying the
        // requested one (verify_and_copy_hook_state switches on state->hook, not user->hook), so
        // `out` is always loopback and `in` is always NULL: the output hooks must report
        // loopback, the input hooks (which read `in`) 0. Real interfaces: netfilter_e2e.rs.
        let want_if = if obs >= OBS_NF_PRE_ROUTING + Hook::LocalOut.hooknum() as u8 {
            LO_IFINDEX
        } else {
            0
        };
        assert_eq!(k.ifindex, want_if, "obs {obs}");
        assert_eq!((v.packets, v.bytes), (packets, bytes), "obs {obs} v6 {v6}");
    }
    let (k, v) = flows
        .iter()
        .find(|(k, _)| k.protocol == IPPROTO_TCP)
        .unwrap();
    assert_eq!(
        (k.src_port, k.dst_port, k.observation_point),
        (4321, 80, OBS_NF_PRE_ROUTING + 2)
    );
    assert_eq!((v.packets, v.tcp_flags), (2, 0x002));
    let s = ks;
    let total: u64 = flows.iter().map(|(_, v)| v.packets).sum();
    assert_eq!(s[stats::PACKETS_SEEN as usize], total);
    assert_eq!(s[stats::UNPARSED as usize], 0);
    assert_eq!(s[stats::NON_IP as usize], 0);
}

/// A truncated IPv4 packet is counted as unparsed, never keyed, and still accepted.
#[test]
fn truncated_packets_are_unparsed_and_accepted() {
    let mut p = probe();
    let prog = p.load_netfilter(NF_PROGRAM).unwrap();
    let mut pkt = udp(false, 1, 2, 100);
    // Claim 20 more bytes than there are.
    let tot = u16::from_be_bytes([pkt[2], pkt[3]]) + 20;
    pkt[2..4].copy_from_slice(&tot.to_be_bytes());
    let (verdict, _) = prog.test_run(&pkt, Hook::LocalIn, Family::Ipv4, 5).unwrap();
    assert_eq!(verdict, NF_ACCEPT as u32);
    let (flows, ks) = drain(&mut p);
    assert!(flows.is_empty(), "{flows:?}");
    let s = ks;
    assert_eq!(
        (s[stats::PACKETS_SEEN as usize], s[stats::UNPARSED as usize]),
        (5, 5)
    );
}

/// The flow program refuses to load without the kernel offsets (it would read garbage).
#[test]
fn flow_program_needs_offsets() {
    let mut p = Probe::load(64).unwrap();
    let e = p.load_netfilter(NF_PROGRAM).unwrap_err().to_string();
    assert!(e.contains("offsets"), "{e}");
    p.load_netfilter(NF_NOOP_PROGRAM).unwrap();
}

#[test]
fn noop_program_loads_and_accepts() {
    let mut p = probe();
    let prog = p.load_netfilter(NF_NOOP_PROGRAM).unwrap();
    let (verdict, _) = prog
        .test_run(&udp(true, 1, 2, 10), Hook::PostRouting, Family::Ipv6, 10)
        .unwrap();
    assert_eq!(verdict, NF_ACCEPT as u32);
}
