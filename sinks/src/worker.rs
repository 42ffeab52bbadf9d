//! Every sink on a thread of its own ([`ThreadedSink`], issue 17): the collector's drain thread
//! never waits for a sink.
//!
//! The drain thread hands each chunk of records over as a shared [`Batch`] (one allocation for
//! every sink: no copy per sink) through an unbounded channel whose content is bounded in
//! records (`queue_records`, [`DEFAULT_QUEUE_RECORDS`]): a `write` is a counter check and a
//! channel send. The sink's thread writes the batches in order, runs the sink's `tick`, and
//! closes it.
//!
//! **When the sink is slower than the record rate:**
//! 1. its thread falls behind; once half the queue bound is waiting behind the batch it takes,
//!    it *spills* the batch ([`Sink::spill`]): a spooled sink appends it to its on-disk spool
//!    without encoding or sending it (replayed in order when the sink catches up: see
//!    [`crate::spool`]); a sink without a spool just writes it;
//! 2. if even that does not keep up and the queue is full, the drain thread drops the batch:
//!    counted exactly ([`SinkMetrics::dropped`], also in `lost`), with one log line per 30 s
//!    carrying the numbers.
//!
//! Failures the thread meets (a failed `write` or `tick`) are counted the same way as before,
//! only later: [`SinkMetrics::failed_calls`], and the records of a failed write in `lost`; each
//! is logged, rate-limited, by the thread.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use flowlens_schema::record::FlowRecord;

use crate::{Result, Sink, SinkError, SinkMetrics, log_limit::RateLimited};

/// Records handed to the sinks at once and shared by all of them.
pub type Batch = Arc<Vec<FlowRecord>>;

/// Default bound of the records waiting for one sink's thread: eight of the collector's
/// 8192-record chunks, about 24 MiB of records (`--max-memory` counts it per sink). Records
/// leave the flow table in bursts (an expiry pass once per drain): the queue absorbs a burst
/// of this size beyond what the sink writes while the burst is being built.
pub const DEFAULT_QUEUE_RECORDS: u64 = 65_536;

enum Msg {
    Write(Batch),
    Tick,
    Close,
}

/// What the sink's thread reports back.
#[derive(Default)]
struct Reported {
    /// The inner sink's counters after its last call.
    inner: SinkMetrics,
    /// Failed `write`/`tick` calls, records of failed writes, batches spilled.
    failed_calls: u64,
    write_lost: u64,
    spilled: u64,
}

struct Shared {
    /// Records sent to the thread and not yet taken by it.
    queued: AtomicU64,
    /// A tick is waiting in the channel (ticks are not queued behind each other).
    tick_pending: AtomicBool,
    reported: Mutex<Reported>,
}

/// A sink on its own thread (see the module documentation).
pub struct ThreadedSink {
    name: String,
    ack_latency: Duration,
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<Result<()>>>,
    shared: Arc<Shared>,
    queue_records: u64,
    /// Records dropped because the queue was full, and the log line's limiter.
    dropped: u64,
    dropped_logged: u64,
    drop_log: RateLimited,
    closed: bool,
}

impl ThreadedSink {
    /// Starts `inner`'s thread. At most `queue_records` records wait for it (a larger single
    /// batch is still taken when nothing waits).
    pub fn new(inner: Box<dyn Sink>, queue_records: u64) -> Result<Self> {
        let name = inner.name().to_string();
        let ack_latency = inner.ack_latency();
        let shared = Arc::new(Shared {
            queued: AtomicU64::new(0),
            tick_pending: AtomicBool::new(false),
            reported: Mutex::new(Reported {
                inner: inner.metrics(),
                ..Reported::default()
            }),
        });
        let (tx, rx) = mpsc::channel();
        let spill_at = (queue_records / 2).max(1);
        let s = shared.clone();
        // Thread names are cut to 15 bytes by the kernel: "sink " and the kind.
        let thread_name: String = format!("sink {name}").chars().take(15).collect();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run(inner, rx, s, spill_at))
            .map_err(|e| SinkError::io(format!("starting the thread of sink {name}"), e))?;
        Ok(ThreadedSink {
            name,
            ack_latency,
            tx: Some(tx),
            thread: Some(thread),
            shared,
            queue_records: queue_records.max(1),
            dropped: 0,
            dropped_logged: 0,
            drop_log: RateLimited::default(),
            closed: false,
        })
    }

    /// Records waiting for the sink's thread right now.
    pub fn backlog(&self) -> u64 {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Batches the thread spilled to the sink's spool because it was behind.
    pub fn spilled(&self) -> u64 {
        self.shared.reported.lock().map(|r| r.spilled).unwrap_or(0)
    }

    fn closed_error(&self) -> SinkError {
        SinkError::Spec {
            spec: self.name.clone(),
            reason: "write after close".into(),
        }
    }

    fn log_drops(&mut self) {
        if self.dropped > self.dropped_logged
            && let Some(suppressed) = self.drop_log.check()
        {
            tracing::error!(
                sink = %self.name,
                records = self.dropped - self.dropped_logged,
                total_dropped = self.dropped,
                queue_records = self.queue_records,
                suppressed,
                "sink cannot keep up with the record rate and its queue is full: records dropped for this sink (counted as lost; the drain goes on)"
            );
            self.dropped_logged = self.dropped;
        }
    }
}

/// The sink's thread: writes (or spills) batches in order, ticks, closes.
fn run(
    mut inner: Box<dyn Sink>,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    spill_at: u64,
) -> Result<()> {
    let name = inner.name().to_string();
    let (mut write_log, mut tick_log) = (RateLimited::default(), RateLimited::default());
    while let Ok(msg) = rx.recv() {
        let (failed, lost, spilled) = match msg {
            Msg::Write(batch) => {
                let n = batch.len() as u64;
                let behind = shared.queued.fetch_sub(n, Ordering::AcqRel) - n;
                let (res, spilled) = if behind >= spill_at {
                    match inner.spill(&batch) {
                        Some(r) => (r, true),
                        None => (inner.write(&batch), false),
                    }
                } else {
                    (inner.write(&batch), false)
                };
                drop(batch);
                match res {
                    Ok(()) => (false, 0, spilled),
                    Err(e) => {
                        if let Some(suppressed) = write_log.check() {
                            tracing::error!(sink = %name, records = n, suppressed, error = %e, "sink failed; these records are lost for this sink");
                        }
                        (true, n, false)
                    }
                }
            }
            Msg::Tick => {
                shared.tick_pending.store(false, Ordering::Release);
                match inner.tick() {
                    Ok(()) => (false, 0, false),
                    Err(e) => {
                        if let Some(suppressed) = tick_log.check() {
                            tracing::error!(sink = %name, suppressed, error = %e, "sink tick failed");
                        }
                        (true, 0, false)
                    }
                }
            }
            Msg::Close => break,
        };
        let m = inner.metrics();
        if let Ok(mut r) = shared.reported.lock() {
            r.inner = m;
            r.failed_calls += failed as u64;
            r.write_lost += lost;
            r.spilled += spilled as u64;
        }
    }
    let res = inner.close();
    let m = inner.metrics();
    if let Ok(mut r) = shared.reported.lock() {
        r.inner = m;
    }
    res
}

impl Sink for ThreadedSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        self.write_shared(&Arc::new(records.to_vec()))
    }

    fn write_shared(&mut self, batch: &Batch) -> Result<()> {
        if self.closed {
            return Err(self.closed_error());
        }
        let n = batch.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let waiting = self.shared.queued.load(Ordering::Acquire);
        if waiting > 0 && waiting + n > self.queue_records {
            self.dropped += n;
            self.log_drops();
            return Ok(());
        }
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Write(batch.clone())).is_ok());
        if !sent {
            // The thread is gone (it panicked): the records cannot be written.
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SinkError::Lost {
                sink: self.name.clone(),
                records: n,
            });
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.log_drops();
        if self.closed || self.shared.tick_pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Tick);
        }
        Ok(())
    }

    /// Waits for the thread to write everything queued, then closes the sink there.
    fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.drop_log = RateLimited::new(Duration::ZERO);
        self.log_drops();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Close);
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(SinkError::Lost {
                sink: self.name.clone(),
                records: self.backlog(),
            }),
            None => Ok(()),
        }
    }

    fn records_lost(&self) -> u64 {
        self.metrics().lost
    }

    /// Records `write_shared` takes now without dropping (any single batch when nothing
    /// waits).
    fn room(&self) -> u64 {
        match self.backlog() {
            0 => u64::MAX,
            waiting => self.queue_records.saturating_sub(waiting),
        }
    }

    fn ack_latency(&self) -> Duration {
        self.ack_latency
    }

    fn metrics(&self) -> SinkMetrics {
        let (inner, failed, write_lost) = match self.shared.reported.lock() {
            Ok(r) => (r.inner, r.failed_calls, r.write_lost),
            Err(p) => {
                let r = p.into_inner();
                (r.inner, r.failed_calls, r.write_lost)
            }
        };
        SinkMetrics {
            lost: inner.lost + write_lost + self.dropped,
            queued: inner.queued + self.backlog(),
            dropped: inner.dropped + self.dropped,
            failed_calls: inner.failed_calls + failed,
            ..inner
        }
    }
}

impl Drop for ThreadedSink {
    fn drop(&mut self) {
        if !self.closed
            && let Err(e) = self.close()
        {
            tracing::error!(sink = %self.name, error = %e, "closing sink on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, atomic::AtomicUsize};

    use super::*;

    /// A sink whose `write` blocks until the test opens the gate (a peer that stopped reading).
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, Condvar)>);

    impl Gate {
        fn open(&self) {
            *self.0.0.lock().unwrap() = true;
            self.0.1.notify_all();
        }
        fn wait(&self) {
            let mut open = self.0.0.lock().unwrap();
            while !*open {
                open = self.0.1.wait(open).unwrap();
            }
        }
    }

    struct Blocked {
        gate: Gate,
        written: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
    }

    impl Sink for Blocked {
        fn name(&self) -> &str {
            "blocked"
        }
        fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.gate.wait();
            self.written.fetch_add(records.len(), Ordering::SeqCst);
            Ok(())
        }
        fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn batch(n: usize) -> Batch {
        Arc::new(flowlens_testkit_records(n))
    }

    /// Records of `n` distinct flows (no testkit dependency in this crate's unit tests).
    fn flowlens_testkit_records(n: usize) -> Vec<FlowRecord> {
        (0..n)
            .map(|i| {
                let mut key = flowlens_schema::FlowKey::ZERO;
                key.ip_version = 4;
                key.protocol = 17;
                key.src_port = i as u16;
                key.dst_port = (i >> 16) as u16;
                FlowRecord {
                    flow_start_us: 1,
                    flow_end_us: 2,
                    key,
                    interface_name: "lo".into(),
                    packets: 1,
                    bytes: 100,
                    tcp_flags: 0,
                    dscp: 0,
                    end_reason: flowlens_schema::record::EndReason::IdleTimeout,
                    host: "h".into(),
                    community_id: String::new(),
                    ends: Default::default(),
                }
            })
            .collect()
    }

    /// A sink that blocks never blocks the writer: batches beyond the queue bound are dropped
    /// and counted exactly; everything queued is written once the sink moves again.
    #[test]
    fn a_blocked_sink_never_blocks_the_writer_and_drops_are_counted() {
        let gate = Gate::default();
        let written = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = Blocked {
            gate: gate.clone(),
            written: written.clone(),
            calls: calls.clone(),
        };
        let mut s = ThreadedSink::new(Box::new(inner), 1000).unwrap();
        // The first batch is taken by the thread, which then blocks inside `write`.
        s.write_shared(&batch(100)).unwrap();
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // 1000 records fit behind it (10 batches); the next 20 batches are dropped. If `write`
        // blocked, this loop would never end.
        for _ in 0..30 {
            s.write_shared(&batch(100)).unwrap();
            s.tick().unwrap();
        }
        assert_eq!(s.backlog(), 1000);
        let m = s.metrics();
        assert_eq!(m.dropped, 2000);
        assert_eq!(m.lost, 2000);
        assert_eq!(m.queued, 1000);
        gate.open();
        s.close().unwrap();
        assert_eq!(written.load(Ordering::SeqCst), 1100);
        let m = s.metrics();
        assert_eq!((m.dropped, m.lost, m.queued), (2000, 2000, 0));
        assert!(s.write_shared(&batch(1)).is_err());
    }

    /// A spooled sink behind the record rate spills to its spool (no record dropped while the
    /// queue has room for what is still coming), and every record still reaches the sink
    /// exactly once, in order (replayed from the spool).
    #[test]
    fn a_spooled_sink_behind_spills_to_its_spool_and_delivers_everything_once() {
        struct Recording {
            gate: Gate,
            calls: Arc<AtomicUsize>,
            got: Arc<Mutex<Vec<u16>>>,
        }
        impl Sink for Recording {
            fn name(&self) -> &str {
                "recording"
            }
            fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.gate.wait();
                let mut g = self.got.lock().unwrap();
                g.extend(records.iter().map(|r| r.key.src_port));
                Ok(())
            }
            fn close(&mut self) -> Result<()> {
                Ok(())
            }
        }
        let dir =
            std::env::temp_dir().join(format!("flowlens-worker-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gate = Gate::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let inner = Recording {
            gate: gate.clone(),
            calls: calls.clone(),
            got: got.clone(),
        };
        let mut o = crate::spool::SpoolOptions::new(&dir);
        o.grace = Duration::from_secs(5);
        o.close_reserve = Duration::from_millis(500);
        let spooled = crate::spool::SpooledSink::new(inner, o).unwrap();
        let mut s = ThreadedSink::new(Box::new(spooled), 1000).unwrap();
        // Distinct records, numbered in order: batch i holds i*100 .. i*100+99.
        let all = flowlens_testkit_records(1100);
        let batches: Vec<Batch> = all.chunks(100).map(|c| Arc::new(c.to_vec())).collect();
        s.write_shared(&batches[0]).unwrap();
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Ten batches wait behind the blocked one: the thread spills those with at least half
        // the bound (500 records) behind them.
        for b in &batches[1..] {
            s.write_shared(b).unwrap();
        }
        assert_eq!(s.backlog(), 1000);
        gate.open();
        s.tick().unwrap();
        s.close().unwrap();
        let m = s.metrics();
        assert_eq!((m.dropped, m.lost), (0, 0), "{m:?}");
        assert!(s.spilled() >= 5, "spilled {}", s.spilled());
        let got = got.lock().unwrap().clone();
        let want: Vec<u16> = all.iter().map(|r| r.key.src_port).collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A sink that fails on its thread: the failure and its records are counted.
    #[test]
    fn failures_on_the_thread_are_counted() {
        struct Failing;
        impl Sink for Failing {
            fn name(&self) -> &str {
                "failing"
            }
            fn write(&mut self, _: &[FlowRecord]) -> Result<()> {
                Err(SinkError::Otlp("down".into()))
            }
            fn tick(&mut self) -> Result<()> {
                Err(SinkError::Otlp("down".into()))
            }
            fn close(&mut self) -> Result<()> {
                Ok(())
            }
        }
        let mut s = ThreadedSink::new(Box::new(Failing), 1000).unwrap();
        s.write_shared(&batch(7)).unwrap();
        s.write_shared(&batch(5)).unwrap();
        s.tick().unwrap();
        s.close().unwrap();
        let m = s.metrics();
        assert_eq!(m.lost, 12);
        assert_eq!(m.failed_calls, 3);
        assert_eq!(m.dropped, 0);
    }
}
