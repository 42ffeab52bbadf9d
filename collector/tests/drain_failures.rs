//! A failed drain does not stop the pipeline and loses nothing: with the real probe (its XDP
//! program run on real frames with BPF_PROG_TEST_RUN) and the real double-buffered drainer,
//! drains that fail are counted and retried, the packets they did not move stay in the kernel
//! map, and every packet is exported exactly once. Needs root.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use flowlens::{
    drain::{DrainError, DrainReport, Drainer},
    export::Exporter,
    flow_table::FlowTable,
    pipeline::Pipeline,
    probe::{Probe, XDP_PROGRAM},
};
use flowlens_schema::{FlowKey, FlowValue, record::FlowRecord};
use flowlens_sinks::Sink;

/// The real drainer, except that the drains whose number (from 1) is in `fail` fail before
/// touching the kernel (as a `bpf()` call that fails at once does).
struct FailSome<D> {
    inner: D,
    calls: u64,
    fail: Vec<u64>,
}

impl<D: Drainer> Drainer for FailSome<D> {
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError> {
        self.calls += 1;
        if self.fail.contains(&self.calls) {
            return Err(DrainError::Barrier(std::io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        self.inner.drain(out)
    }
    fn drain_final(
        &mut self,
        out: &mut Vec<(FlowKey, FlowValue)>,
    ) -> Result<DrainReport, DrainError> {
        self.inner.drain_final(out)
    }
}

/// Sums the packets of the records it gets.
struct Packets(Arc<AtomicU64>, Arc<AtomicU64>);

impl Sink for Packets {
    fn name(&self) -> &str {
        "packets"
    }
    fn write(&mut self, records: &[FlowRecord]) -> flowlens_sinks::Result<()> {
        self.0.fetch_add(records.len() as u64, Relaxed);
        self.1
            .fetch_add(records.iter().map(|r| r.packets).sum::<u64>(), Relaxed);
        Ok(())
    }
    fn close(&mut self) -> flowlens_sinks::Result<()> {
        Ok(())
    }
}

fn frame(src_port: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 9, 0, 1], [10, 9, 0, 2], 64)
        .udp(src_port, 53)
        .write(&mut f, &[1u8; 64])
        .unwrap();
    f
}

#[test]
fn failed_drains_are_retried_and_lose_nothing() {
    let mut probe = Probe::load(4096).unwrap();
    let drainer = probe.take_drainer().unwrap();
    let (records, packets) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut pipe = Pipeline::new(
        FlowTable::new(Duration::from_secs(3600), Duration::from_secs(3600)),
        Exporter::new("h"),
        vec![Box::new(Packets(records.clone(), packets.clone()))],
    );
    pipe.max_consecutive_drain_failures = 3;
    // Drains 2, 3 (two in a row) and 5 fail.
    let mut d = FailSome {
        inner: drainer,
        calls: 0,
        fail: vec![2, 3, 5],
    };
    let prog = probe.xdp_program(XDP_PROGRAM).unwrap();
    let mut sent = 0u64;
    for cycle in 1..=6u16 {
        // A new flow each cycle, and more packets of the first one.
        for (port, repeat) in [(1000 + cycle, 10 * cycle as u32), (999, 7)] {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&frame(port)),
                    repeat,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(r.return_value, 2, "XDP_PASS");
            sent += repeat as u64;
        }
        pipe.cycle(&mut d, false)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e:#}"));
    }
    assert_eq!(pipe.totals.drain_failures, 3);
    // Three failures in a row end the run, with the reason.
    d.fail.extend([7, 8, 9]);
    pipe.cycle(&mut d, false).unwrap();
    pipe.cycle(&mut d, false).unwrap();
    let e = format!("{:#}", pipe.cycle(&mut d, false).unwrap_err());
    assert!(e.contains("failed 3 times in a row"), "{e}");
    // Nothing was exported yet (long timeouts), and nothing was lost: the final drain moves
    // what the failed drains left in the kernel.
    assert_eq!(records.load(Relaxed), 0);
    pipe.cycle(&mut d, true).unwrap();
    assert_eq!(pipe.totals.drain_failures, 6);
    assert_eq!(pipe.totals.drained_packets, sent, "drained exactly once");
    assert_eq!(packets.load(Relaxed), sent, "exported exactly once");
    assert_eq!(
        records.load(Relaxed),
        7,
        "a new flow per cycle, and the long one"
    );
    let a = pipe.totals.accounting;
    assert_eq!(a.keyed_packets, sent);
    assert_eq!(
        (a.lost_packets(), a.excess_packets),
        (0, 0),
        "conservation holds across failed drains: {a:?}"
    );
}
