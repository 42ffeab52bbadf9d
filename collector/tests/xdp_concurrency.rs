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
use flowlens_testkit::pin_to_cpu;

/// The tests here pin busy threads to every CPU; run one at a time (in parallel, the RCU grace
/// periods the drains wait for took minutes instead of milliseconds).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn concurrent_updates_of_one_flow_are_exact() {
    let _one = serial();
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

/// The exactly-once drain under load: every CPU runs the real program over many flows while the
/// collector's drain swaps buffers every few milliseconds. Summed over all drains, every flow has
/// exactly the packets and bytes that were run, and the per-drain accounting balances.
#[test]
fn drains_during_concurrent_updates_lose_and_duplicate_nothing() {
    let _one = serial();
    use std::{
        collections::HashMap,
        sync::atomic::{AtomicUsize, Ordering},
    };
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .clamp(2, 8);
    const FLOWS_PER_CPU: u16 = 64;
    const REPEAT: u32 = 2_000;
    const ROUNDS: u32 = 20;
    const PAYLOAD: usize = 100;
    let mut probe = Probe::load(4096).unwrap();
    let prog_ptr = probe.xdp_program(XDP_PROGRAM).unwrap() as *mut aya::programs::Xdp as usize;
    let mut drainer = probe.take_drainer().unwrap();
    let frames: Vec<Vec<Vec<u8>>> = (0..cpus)
        .map(|cpu| {
            (0..FLOWS_PER_CPU)
                .map(|i| {
                    let mut f = Vec::new();
                    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                        .ipv4([10, 2, cpu as u8, 1], [10, 2, 0, 2], 64)
                        .udp(10_000 + i, 2222)
                        .write(&mut f, &[1u8; PAYLOAD])
                        .unwrap();
                    f
                })
                .collect()
        })
        .collect();
    let frames = Arc::new(frames);
    let running = Arc::new(AtomicUsize::new(cpus));
    let barrier = Arc::new(Barrier::new(cpus + 1));
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| {
            let (frames, barrier, running) = (frames.clone(), barrier.clone(), running.clone());
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                // SAFETY: the Probe outlives the threads (joined below) and test_run takes &self.
                let prog = unsafe { &*(prog_ptr as *const aya::programs::Xdp) };
                barrier.wait();
                for _ in 0..ROUNDS {
                    for f in &frames[cpu] {
                        let r = prog
                            .test_run(TestRunOptions {
                                data_in: Some(f),
                                repeat: REPEAT,
                                ..Default::default()
                            })
                            .unwrap();
                        assert_eq!(r.return_value, 2);
                    }
                }
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    let mut sums: HashMap<flowlens_schema::FlowKey, (u64, u64)> = HashMap::new();
    let mut out = Vec::new();
    let mut drains = 0u32;
    let mut nonempty = 0u32;
    let mut add = |out: &mut Vec<(flowlens_schema::FlowKey, flowlens_schema::FlowValue)>,
                   rep: flowlens::drain::DrainReport| {
        let a = rep.total().unwrap();
        assert_eq!(a.excess_packets, 0, "{a:?}");
        assert_eq!(a.evicted_packets, 0, "{a:?}");
        assert_eq!(a.drained_packets, a.keyed_packets, "{a:?}");
        assert_eq!(a.drained_bytes, a.keyed_bytes, "{a:?}");
        for (k, v) in out.drain(..) {
            let s = sums.entry(k).or_default();
            s.0 += v.packets;
            s.1 += v.bytes;
        }
    };
    barrier.wait();
    while running.load(Ordering::SeqCst) > 0 {
        let rep = drainer.drain(&mut out).unwrap();
        drains += 1;
        if !out.is_empty() {
            nonempty += 1;
        }
        add(&mut out, rep);
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    for h in handles {
        h.join().unwrap();
    }
    let rep = drainer.drain_final(&mut out).unwrap();
    add(&mut out, rep);
    assert!(
        nonempty >= 5,
        "only {nonempty} of {drains} drains found flows: the test did not drain during the load"
    );
    assert_eq!(sums.len(), cpus * FLOWS_PER_CPU as usize);
    let want = ROUNDS as u64 * REPEAT as u64;
    for (k, (p, b)) in &sums {
        assert_eq!(*p, want, "flow {k:?}");
        assert_eq!(*b, want * (20 + 8 + PAYLOAD as u64), "flow {k:?}");
    }
    eprintln!(
        "{drains} drains ({nonempty} non-empty), {} flows exact",
        sums.len()
    );
}

/// Both ways of emptying a still buffer (batch lookup-and-delete, and the per-key fallback)
/// move exactly the same entries, several batch chunks' worth, and leave the buffer empty. The
/// entries are written from user space, so the probe never counted them: the accounting must
/// flag every one of them as drained beyond what was keyed (double counting is detected).
#[test]
fn batch_and_per_key_drains_move_the_same_entries() {
    use flowlens::drain::{BATCH_CHUNK, DrainMethod};
    use flowlens_schema::{FlowKey, FlowValue};
    use std::collections::BTreeMap;
    let mut probe = Probe::load(16_384).unwrap();
    let mut drainer = probe.take_drainer().unwrap();
    const FLOWS: u32 = 10_000;
    assert!(FLOWS as usize > 2 * BATCH_CHUNK);
    let entry = |i: u32| {
        let mut k = FlowKey::ZERO;
        k.ip_version = 6;
        k.protocol = 6;
        k.src_addr[12..].copy_from_slice(&i.to_be_bytes());
        k.src_port = i as u16;
        k.observation_point = flowlens_schema::OBS_XDP;
        let v = FlowValue {
            packets: 1 + i as u64 % 7,
            bytes: 100 + i as u64,
            first_seen_ns: i as u64,
            last_seen_ns: 2 * i as u64,
            tcp_flags: 0x10,
            dscp: 0,
            _pad: [0; 7],
            cgroup_id: 0,
        };
        (k, v)
    };
    let want: BTreeMap<FlowKey, FlowValue> = (0..FLOWS).map(entry).collect();
    let want_packets: u64 = want.values().map(|v| v.packets).sum();
    for m in [DrainMethod::Batch, DrainMethod::PerKey] {
        drainer.set_method(m);
        let active = drainer.active();
        let map = drainer.flow_map_mut(active);
        for (k, v) in &want {
            map.insert(k, v, 0).unwrap();
        }
        let mut out = Vec::new();
        let rep = drainer.drain(&mut out).unwrap();
        assert_eq!(drainer.method(), m, "the kernel refused {m:?}");
        assert_eq!(rep.entries, FLOWS as usize, "{m:?}");
        let got: BTreeMap<FlowKey, FlowValue> = out.into_iter().collect();
        assert_eq!(got, want, "{m:?}");
        let a = rep.total().unwrap();
        assert_eq!(a.keyed_packets, 0);
        assert_eq!(
            a.excess_packets, want_packets,
            "{m:?}: double counting not flagged"
        );
        // The drained buffer is empty: the next drain (of the other, unused buffer) and the one
        // after (this buffer again) find nothing.
        for _ in 0..2 {
            let mut again = Vec::new();
            assert_eq!(drainer.drain(&mut again).unwrap().entries, 0);
        }
    }
}

/// `lookup_and_delete_batch` refuses key or value types of another size than the map's (the
/// kernel would write entries of the map's sizes into buffers of the types' sizes, past their
/// end when the types are smaller): nothing is handed out or deleted. With the right types the
/// entry is moved.
#[test]
fn batch_drain_refuses_key_and_value_types_of_the_wrong_size() {
    use aya::maps::IterableMap;
    use flowlens::sys::{BatchError, lookup_and_delete_batch};
    use flowlens_schema::{FlowKey, FlowValue};
    use std::os::fd::AsFd;
    const K: usize = std::mem::size_of::<FlowKey>();
    const V: usize = std::mem::size_of::<FlowValue>();
    let mut probe = Probe::load(1024).unwrap();
    let mut drainer = probe.take_drainer().unwrap();
    let map = drainer.flow_map_mut(0);
    let mut key = FlowKey::ZERO;
    key.ip_version = 4;
    key.src_port = 4242;
    let value = FlowValue {
        packets: 3,
        ..FlowValue::default()
    };
    map.insert(&key, &value, 0).unwrap();
    let fd = map.map().fd().as_fd();

    let mut handed = 0;
    // A key type 8 bytes too big (the kernel would pack the keys at the map's size).
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    let r = lookup_and_delete_batch::<[u8; K + 8], FlowValue>(
        fd,
        &mut ks,
        &mut vs,
        ([0; K + 8], FlowValue::default()),
        16,
        |_, _| handed += 1,
    );
    let e = r.unwrap_err();
    assert!(matches!(e, BatchError::Layout(_)), "{e}");
    assert!(e.to_string().contains(&format!("{K}-byte keys")), "{e}");
    // A value type 8 bytes too small (the kernel would write past the buffer).
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    let r = lookup_and_delete_batch::<FlowKey, [u8; V - 8]>(
        fd,
        &mut ks,
        &mut vs,
        (FlowKey::ZERO, [0; V - 8]),
        16,
        |_, _| handed += 1,
    );
    assert!(matches!(r, Err(BatchError::Layout(_))), "{r:?}");
    assert_eq!(handed, 0);
    assert_eq!(
        map.get(&key, 0).unwrap().packets,
        3,
        "the entry is still there"
    );

    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    let mut got = Vec::new();
    let n = lookup_and_delete_batch(
        fd,
        &mut ks,
        &mut vs,
        (FlowKey::ZERO, FlowValue::default()),
        16,
        |k, v| got.push((*k, *v)),
    )
    .unwrap();
    assert_eq!((n, got), (1, vec![(key, value)]));
    assert!(map.get(&key, 0).is_err(), "moved out");
}
