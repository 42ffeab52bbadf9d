//! Counters are exact under concurrency: every CPU runs the real XDP program (BPF_PROG_TEST_RUN
//! runs on the calling CPU) on the same flow at the same time; packets and bytes must add up
//! exactly. Needs root.

use std::sync::{Arc, Barrier};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use flowlens::{
    drain::Drainer,
    probe::{Probe, XDP_PROGRAM},
};

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity(0) pins
    // the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn concurrent_updates_of_one_flow_are_exact() {
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .clamp(2, 8);
    let mut probe = Probe::load(1024).unwrap();
    let prog = probe.xdp_program(XDP_PROGRAM).unwrap();
    let mut frame = Vec::new();
    let payload = [7u8; 300];
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 1, 0, 1], [10, 1, 0, 2], 64)
        .udp(1111, 2222)
        .write(&mut frame, &payload)
        .unwrap();
    let frame = Arc::new(frame);
    const REPEAT: u32 = 500_000;
    const ROUNDS: u32 = 4;
    // All threads run the one loaded program (BPF_PROG_TEST_RUN is safe to call concurrently; it
    // only needs the program fd). aya's handle is not Sync, hence the address hand-off.
    let prog_ptr = prog as *mut aya::programs::Xdp as usize;
    let barrier = Arc::new(Barrier::new(cpus));
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| {
            let frame = frame.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                // SAFETY: the Probe outlives the threads (joined below) and test_run takes &self.
                let prog = unsafe { &*(prog_ptr as *const aya::programs::Xdp) };
                barrier.wait();
                for _ in 0..ROUNDS {
                    let r = prog
                        .test_run(TestRunOptions {
                            data_in: Some(&frame),
                            repeat: REPEAT,
                            ..Default::default()
                        })
                        .unwrap();
                    assert_eq!(r.return_value, 2);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut drainer = probe.take_drainer().unwrap();
    let mut out = vec![];
    drainer.drain(&mut out).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    let want = cpus as u64 * ROUNDS as u64 * REPEAT as u64;
    assert_eq!(out[0].1.packets, want);
    assert_eq!(out[0].1.bytes, want * (20 + 8 + 300));
}
