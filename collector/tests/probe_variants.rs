//! The probe variants (`ProbeVariant`, chosen in `collector/src/probe.rs`), on the running kernel
//! through `BPF_PROG_TEST_RUN` (needs root or CAP_BPF).
//!
//! The compatible variant is what kernels older than 5.12 get; no such kernel can be booted here,
//! so it is forced on this one and checked two ways: the program the verifier accepted (read back
//! with `BPF_OBJ_GET_INFO_BY_FD`, dead branches already removed) holds no atomic OR, and it
//! counts exactly, with precise timestamps, like the fast one.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use flowlens::{
    drain::Drainer,
    probe::{Probe, ProbeVariant, XDP_PROGRAM},
};
use flowlens_schema::FlowValue;

const XDP_PASS: u32 = 2;

/// Instructions of the verified (translated) XDP flow program.
fn xlated(probe: &mut Probe) -> Vec<u64> {
    let prog = probe
        .xdp_program(XDP_PROGRAM)
        .expect("verifying flowlens_xdp");
    let fd = prog.fd().expect("program fd").as_fd().as_raw_fd();
    let get = |info: &mut aya_obj::generated::bpf_prog_info| {
        // SAFETY: bpf_attr is plain data, all-zero is valid.
        let mut attr: aya_obj::generated::bpf_attr = unsafe { std::mem::zeroed() };
        // Writing a union field is safe: the `info` arm, for BPF_OBJ_GET_INFO_BY_FD.
        attr.info.bpf_fd = fd as u32;
        attr.info.info_len = std::mem::size_of_val(info) as u32;
        attr.info.info = info as *mut _ as u64;
        // SAFETY: the attr points at `info`, which lives across the call, with its size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
                &mut attr as *mut _,
                std::mem::size_of_val(&attr),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    };
    // SAFETY: bpf_prog_info is plain data, all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    get(&mut info);
    let mut insns = vec![0u64; info.xlated_prog_len as usize / 8];
    assert!(!insns.is_empty(), "no translated instructions");
    // SAFETY: as above.
    info = unsafe { std::mem::zeroed() };
    info.xlated_prog_len = (insns.len() * 8) as u32;
    info.xlated_prog_insns = insns.as_mut_ptr() as u64;
    get(&mut info);
    insns
}

/// BPF atomic ORs (`BPF_STX | BPF_ATOMIC | BPF_DW` with `imm = BPF_OR`, with or without FETCH).
fn atomic_ors(insns: &[u64]) -> usize {
    insns
        .iter()
        .filter(|i| {
            let code = (*i & 0xff) as u8;
            let imm = (*i >> 32) as i32;
            code == 0xdb && (imm & !0x01) == 0x40
        })
        .count()
}

fn tcp(sport: u16, flags: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(sport, 80, 1, 1024);
    let b = if flags & 0x02 != 0 { b.syn() } else { b };
    let b = if flags & 0x10 != 0 { b.ack(1) } else { b };
    let b = if flags & 0x01 != 0 { b.fin() } else { b };
    let b = if flags & 0x08 != 0 { b.psh() } else { b };
    let mut f = Vec::new();
    b.write(&mut f, &vec![0u8; payload]).unwrap();
    f
}

fn udp6(sport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(sport, 53)
        .write(&mut f, &vec![0u8; payload])
        .unwrap();
    f
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs a TCP conversation and a bulk flow through `variant`; checks exact counts, the union of
/// TCP flags and that `last_seen` is the last packet's time by the nanosecond clock (the coarse
/// clock lags up to a scheduler tick, so this tells the clocks apart).
fn counts_exactly(variant: ProbeVariant, precise_timestamps: bool) {
    let mut probe =
        Probe::load_variant(1024, None, precise_timestamps, variant).expect("loading the probe");
    assert_eq!(probe.variant(), variant);
    let run = |probe: &mut Probe, f: &[u8], repeat: u32| {
        let prog = probe.xdp_program(XDP_PROGRAM).expect("flowlens_xdp");
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(f),
                repeat,
                ..Default::default()
            })
            .expect("test run");
        assert_eq!(r.return_value, XDP_PASS);
    };
    let conversation = [(0x02, 0, 1), (0x10, 100, 1000), (0x18, 7, 10), (0x11, 0, 1)];
    let mut window = (0, 0);
    let mut tcp_bytes = 0;
    for (flags, payload, repeat) in conversation {
        let f = tcp(5555, flags, payload);
        tcp_bytes += (f.len() as u64 - 14) * repeat as u64;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t0 = monotonic_ns();
        run(&mut probe, &f, repeat);
        window = (t0, monotonic_ns());
    }
    let big = udp6(4000, 1200);
    run(&mut probe, &big, 100_000);
    let (mut drainer, _) = probe.take_per_key_drainer().expect("flow map");
    let mut flows = Vec::new();
    drainer.drain(&mut flows).expect("drain");
    flows.sort_by_key(|(k, _)| k.src_port);
    let got: Vec<(u16, u64, u64, u64)> = flows
        .iter()
        .map(|(k, v): &(_, FlowValue)| (k.src_port, v.packets, v.bytes, v.tcp_flags))
        .collect();
    assert_eq!(
        got,
        vec![
            (4000, 100_000, 100_000 * (big.len() as u64 - 14), 0),
            (5555, 1012, tcp_bytes, 0x1b),
        ],
        "{variant:?}"
    );
    let last = flows[1].1.last_seen_ns;
    assert!(
        window.0 <= last && last <= window.1,
        "{variant:?}: last_seen {last} outside the last run {window:?}"
    );
}

#[test]
fn the_fast_variant_loads_here_and_uses_atomic_or() {
    let mut probe = Probe::load(1024).expect("loading the probe");
    assert_eq!(
        probe.variant(),
        ProbeVariant::Fast,
        "every kernel tested has 5.12's atomics"
    );
    assert!(atomic_ors(&xlated(&mut probe)) > 0);
}

#[test]
fn the_compatible_variant_has_no_atomic_or() {
    let mut probe = Probe::load_variant(1024, None, false, ProbeVariant::Compatible)
        .expect("loading the probe");
    assert_eq!(atomic_ors(&xlated(&mut probe)), 0);
}

#[test]
fn the_compatible_variant_counts_exactly_with_precise_timestamps() {
    // Not asking for precise timestamps: the compatible variant has no coarse clock.
    counts_exactly(ProbeVariant::Compatible, false);
}

#[test]
fn the_fast_variant_counts_exactly_with_precise_timestamps_asked() {
    counts_exactly(ProbeVariant::Fast, true);
}
