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

/// Pins the calling thread to the CPU it runs on (so back-to-back test runs share its
/// per-CPU clock entry); returns the old mask to restore.
fn pin_to_this_cpu() -> libc::cpu_set_t {
    // SAFETY: plain syscalls on this thread with valid pointers to a cpu_set_t.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old),
            0
        );
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
            0
        );
        old
    }
}

/// Stamps of one run of `program` on a new flow (a UDP packet from `sport`), drained at once.
fn stamp_of_one_run(p: &mut Probe, program: &str, sport: u16) -> (u64, u64, u64) {
    let prog = p.load_netfilter(program).unwrap();
    let t0 = monotonic_ns();
    let (verdict, _) = prog
        .test_run(&udp(false, sport, 53, 8), Hook::LocalOut, Family::Ipv4, 1)
        .unwrap();
    let t1 = monotonic_ns();
    assert_eq!(verdict, NF_ACCEPT as u32);
    (t0, t1, sport as u64)
}

/// Netfilter programs read the precise clock once per scheduler tick per CPU (they may not call
/// the coarse helper): a stamp is never after the run nor more than a tick (at most 10 ms at
/// HZ=100) before it, and two packets of different flows sent back to back on one CPU within
/// one tick carry the same stamp (with `bpf_ktime_get_ns` per packet, two runs can never).
/// With `--precise-timestamps` every packet is stamped by `bpf_ktime_get_ns`.
#[test]
fn netfilter_stamps_come_from_the_tick_clock() {
    const TICK_MAX: u64 = 10_000_000;
    let old = pin_to_this_cpu();
    for precise in [false, true] {
        let offsets = nf_offsets(&Btf::from_kernel().unwrap()).unwrap();
        let mut p = Probe::load_opts(1024, Some(offsets), precise).unwrap();
        let mut runs = Vec::new();
        // Pairs of back-to-back runs: a pair straddles a tick only rarely (a pair takes
        // microseconds, a tick is 1-10 ms), so some of 20 pairs share a tick.
        for i in 0..20u16 {
            runs.push(stamp_of_one_run(&mut p, NF_DIRECT_PROGRAM, 2000 + 2 * i));
            runs.push(stamp_of_one_run(&mut p, NF_DIRECT_PROGRAM, 2001 + 2 * i));
        }
        let (flows, _) = drain(&mut p);
        assert_eq!(flows.len(), runs.len());
        let stamp = |sport: u64| {
            let (_, v) = flows
                .iter()
                .find(|(k, _)| k.src_port as u64 == sport)
                .expect("flow of the run");
            assert_eq!(v.packets, 1);
            assert_eq!(v.first_seen_ns, v.last_seen_ns);
            v.first_seen_ns
        };
        let mut shared = 0;
        for pair in runs.chunks(2) {
            for &(t0, t1, sport) in pair {
                let t = stamp(sport);
                let earliest = if precise { t0 } else { t0 - TICK_MAX };
                assert!(
                    t >= earliest && t <= t1,
                    "precise={precise}: stamp {t} outside [{earliest}, {t1}]"
                );
            }
            if stamp(pair[0].2) == stamp(pair[1].2) {
                shared += 1;
            }
        }
        if precise {
            assert_eq!(shared, 0, "precise stamps of separate runs must differ");
        } else {
            assert!(shared > 0, "no two back-to-back runs shared a tick's stamp");
        }
    }
    // SAFETY: restores this thread's affinity with a mask from sched_getaffinity.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
    }
}
