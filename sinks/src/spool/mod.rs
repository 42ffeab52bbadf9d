//! On-disk spool for sink outages: [`SpooledSink`] wraps any [`Sink`] and keeps what the sink
//! cannot take now in a durable FIFO on disk ([`store`]), replaying it in order when the sink
//! has room again.
//!
//! Modes:
//! * **direct**: the spool is empty and the inner sink has room for the whole batch
//!   ([`Sink::room`]): `write` hands the batch to the inner sink. A copy is kept until the inner
//!   sink has settled it ([`Sink::settled`]), so that at shutdown an undelivered batch can still
//!   be spooled.
//! * **spooling**: otherwise (no room, or the inner `write` failed, which by the trait's contract
//!   means it kept none of the batch) the batch is appended to the spool, and so is every later
//!   batch until the spool is empty again: order is kept.
//! * **replay** (every `tick`): up to the inner sink's room, records are read from the spool and
//!   written to the inner sink. The spool's cursor moves past them only once the inner sink has
//!   settled them (acknowledged, or rejected for good): a crash re-sends at most the records
//!   handed to the inner sink and not yet settled (its memory queue bound).
//!
//! Shutdown ([`Sink::close`]): for up to `grace` the wrapper keeps replaying and waits for the
//! inner sink to settle everything; then it closes the inner sink, and whatever is still
//! unsettled stays in (replayed records) or is put at the head of (direct records) the spool for
//! the next start. Those records are counted as `spooled`, not `lost`.
//!
//! Guarantee: at-least-once for every record that reached the spool or was settled before a
//! clean shutdown. Duplicates happen only for records that were handed to the inner sink and
//! not yet settled when flowlens was killed (at most the inner sink's memory queue), or for
//! Kafka records acknowledged out of order after the last settled one at shutdown (same bound).
//! Dedup key: (`host`, `observation_point`, `interface_name`, `community_id`, `source_address`,
//! `source_port`, `flow_start`): a flow record is unique by it. Records only in memory (direct mode) when flowlens is SIGKILLed are
//! lost; the spool protects against outages and clean restarts, and a crash loses at most
//! one memory queue.

pub mod codec;
pub mod store;

use std::{
    collections::VecDeque,
    path::PathBuf,
    time::{Duration, Instant},
};

use flowlens_schema::record::FlowRecord;
pub use store::{OpenReport, Pos, Store};

use crate::{Result, Sink, SinkError, SinkMetrics};

/// Default bound of one sink's spool on disk.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default shutdown grace (the collector closes its sinks in parallel, each with this grace).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default records read from the spool per inner `write` during replay.
pub const DEFAULT_REPLAY_CHUNK: usize = 4096;

/// The directory name of a sink's spool under the spool parent directory: the sink spec with
/// every character outside `[A-Za-z0-9._-]` replaced by `_`, then a hash of the exact spec
/// (so two different sinks never share a directory, and the name still says which sink it is).
pub fn dir_name(sink_spec: &str) -> String {
    let clean: String = sink_spec
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a, 64 bit: stable across versions and platforms.
    let h = sink_spec.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{clean}-{:08x}", h as u32)
}

/// Options of [`SpooledSink`].
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// This sink's own spool directory.
    pub dir: PathBuf,
    /// The spool never grows past this many bytes on disk; records beyond are counted lost.
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// `close` delivers for at most this long (the inner sink's own close included).
    pub grace: Duration,
    /// Part of `grace` left for the inner sink's `close` (its flush/purge).
    pub close_reserve: Duration,
    pub replay_chunk: usize,
}

impl SpoolOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: store::DEFAULT_SEGMENT_BYTES,
            grace: DEFAULT_GRACE,
            close_reserve: Duration::from_secs(3),
            replay_chunk: DEFAULT_REPLAY_CHUNK,
        }
    }
}

/// A sink with an on-disk spool (see the module documentation).
pub struct SpooledSink<S: Sink> {
    name: String,
    inner: S,
    store: Store,
    opts: SpoolOptions,
    /// Records written to the inner sink so far (its record index).
    handed: u64,
    /// Direct batches not yet settled: (index of the first record, records).
    direct: VecDeque<(u64, Vec<FlowRecord>)>,
    /// Replayed chunks not yet settled: (index after the last record, spool position after
    /// it, records).
    replay: VecDeque<(u64, Pos, u64)>,
    /// Records dropped because the spool was full (or could not be written).
    lost_full: u64,
    lost_logged: u64,
    last_lost_log: Option<Instant>,
    /// Inner losses at close that the spool took over.
    reclaimed: u64,
    /// Records appended to the spool by this instance, and replayed through the inner sink.
    spooled_total: u64,
    replayed_total: u64,
    spooling: bool,
    closed: bool,
    buf: Vec<FlowRecord>,
    opened: OpenReport,
}

impl<S: Sink> SpooledSink<S> {
    /// Opens (or recovers) the spool in `opts.dir`; records left by an earlier run are replayed
    /// before new ones.
    pub fn new(inner: S, opts: SpoolOptions) -> Result<Self> {
        if opts.max_bytes < 4096 {
            return Err(SinkError::Spec {
                spec: inner.name().to_string(),
                reason: format!(
                    "spool bound {} bytes is too small (at least 4096)",
                    opts.max_bytes
                ),
            });
        }
        let (mut store, report) = Store::open(&opts.dir, opts.max_bytes, opts.segment_bytes)?;
        // Nothing pending: start from one empty segment with the cursor at its start (what
        // `close` needs to put undelivered direct records ahead of later spooled ones).
        store.reset_if_empty()?;
        let name = inner.name().to_string();
        if report.records > 0 || report.truncated_bytes > 0 {
            tracing::warn!(sink = %name, spool = %opts.dir.display(), records = report.records, bytes = store.bytes(), truncated_bytes = report.truncated_bytes, "spool holds records from an earlier run; replaying them first");
        }
        Ok(SpooledSink {
            name,
            inner,
            spooling: store.pending() > 0,
            store,
            opts,
            handed: 0,
            direct: VecDeque::new(),
            replay: VecDeque::new(),
            lost_full: 0,
            lost_logged: 0,
            last_lost_log: None,
            reclaimed: 0,
            spooled_total: 0,
            replayed_total: 0,
            closed: false,
            buf: Vec::new(),
            opened: report,
        })
    }

    /// What opening the spool found (records from an earlier run, torn tails cut).
    pub fn open_report(&self) -> &OpenReport {
        &self.opened
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn spool(&self) -> &Store {
        &self.store
    }

    /// Records appended to the spool by this instance (not counting recovered ones).
    pub fn spooled_total(&self) -> u64 {
        self.spooled_total
    }

    fn inner_settled(&self) -> u64 {
        self.inner.settled().unwrap_or(self.handed)
    }

    /// Forgets direct batches and commits replayed chunks that the inner sink has settled.
    fn settle_to(&mut self, settled: u64) -> Result<()> {
        while let Some((start, recs)) = self.direct.front() {
            if start + recs.len() as u64 <= settled {
                self.direct.pop_front();
            } else {
                break;
            }
        }
        let mut last = None;
        let mut n = 0;
        while let Some(&(end, pos, k)) = self.replay.front() {
            if end > settled {
                break;
            }
            self.replay.pop_front();
            last = Some(pos);
            n += k;
        }
        if let Some(pos) = last {
            self.store.commit(pos, n)?;
        }
        if self.spooling && self.store.pending() == 0 {
            self.spooling = false;
            self.store.reset_if_empty()?;
            tracing::info!(sink = %self.name, replayed = self.replayed_total, "spool replayed and empty; delivering directly again");
        }
        Ok(())
    }

    fn spool_records(&mut self, records: &[FlowRecord], why: &str) -> Result<()> {
        if !self.spooling {
            self.spooling = true;
            tracing::warn!(sink = %self.name, reason = why, spool = %self.store.dir().display(), "sink cannot take records now; spooling them to disk (replayed in order when it recovers)");
        }
        // A failed append (disk error) fails the write: the collector counts the batch as lost
        // for this sink (the sink's own `lost` does not, so it is not counted twice).
        let stored = self.store.append(records)?;
        self.spooled_total += stored as u64;
        let rest = (records.len() - stored) as u64;
        if rest > 0 {
            self.lost_full += rest;
            self.log_lost(false);
        }
        Ok(())
    }

    /// Logs spool-full drops at most every 10 s, with numbers.
    fn log_lost(&mut self, force: bool) {
        if self.lost_full == self.lost_logged {
            return;
        }
        let due = self
            .last_lost_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if force || due {
            tracing::error!(sink = %self.name, records = self.lost_full - self.lost_logged, total_lost = self.lost_full, spool_bytes = self.store.bytes(), max_bytes = self.opts.max_bytes, "spool full (or not writable): records dropped and counted as lost");
            self.lost_logged = self.lost_full;
            self.last_lost_log = Some(Instant::now());
        }
    }

    /// Hands spooled records to the inner sink, up to its room.
    fn replay(&mut self) -> Result<()> {
        for _ in 0..16 {
            let room = self.inner.room().min(self.opts.replay_chunk as u64);
            if room == 0 || self.store.unread() == 0 {
                break;
            }
            let (start, unread) = (self.store.read_pos(), self.store.unread());
            self.buf.clear();
            let mut buf = std::mem::take(&mut self.buf);
            let pos = self.store.read(room as usize, &mut buf);
            let pos = match pos {
                Ok(p) => p,
                Err(e) => {
                    self.buf = buf;
                    return Err(e);
                }
            };
            let n = buf.len() as u64;
            let res = self.inner.write(&buf);
            self.buf = buf;
            if n == 0 {
                break;
            }
            match res {
                Ok(()) => {
                    self.handed += n;
                    self.replayed_total += n;
                    self.replay.push_back((self.handed, pos, n));
                }
                Err(e) => {
                    // The inner sink kept none of them: read them again next time.
                    self.store.seek_read(start, unread);
                    tracing::warn!(sink = %self.name, error = %e, "replay from the spool failed; retrying later");
                    break;
                }
            }
        }
        Ok(())
    }
}

impl<S: Sink> Sink for SpooledSink<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn ack_latency(&self) -> std::time::Duration {
        self.inner.ack_latency()
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        if self.closed {
            return Err(SinkError::Spec {
                spec: self.name.clone(),
                reason: "write after close".into(),
            });
        }
        if records.is_empty() {
            return Ok(());
        }
        let settled = self.inner_settled();
        self.settle_to(settled)?;
        if !self.spooling {
            if self.inner.room() >= records.len() as u64 {
                match self.inner.write(records) {
                    Ok(()) => {
                        self.direct.push_back((self.handed, records.to_vec()));
                        self.handed += records.len() as u64;
                        return Ok(());
                    }
                    Err(e) => {
                        let why = format!("write failed: {e}");
                        return self.spool_records(records, &why);
                    }
                }
            }
            return self.spool_records(records, "memory queue full (destination slow or down)");
        }
        self.spool_records(records, "")
    }

    /// Behind the record rate: straight to the spool (and every later batch until the spool
    /// is replayed, so order is kept).
    fn spill(&mut self, records: &[FlowRecord]) -> Option<Result<()>> {
        if self.closed || records.is_empty() {
            return None;
        }
        Some(self.spool_records(
            records,
            "behind the record rate (its thread's queue is filling)",
        ))
    }

    fn tick(&mut self) -> Result<()> {
        let settled = self.inner_settled();
        self.settle_to(settled)?;
        let replayed = self.replay();
        let ticked = self.inner.tick();
        let settled = self.inner_settled();
        self.settle_to(settled)?;
        self.log_lost(false);
        replayed?;
        ticked
    }

    fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let t0 = Instant::now();
        let budget = self.opts.grace.saturating_sub(self.opts.close_reserve);
        loop {
            if let Err(e) = self.tick() {
                tracing::warn!(sink = %self.name, error = %e, "spool: tick during shutdown failed");
            }
            if self.store.pending() == 0 && self.direct.is_empty() {
                break;
            }
            if t0.elapsed() >= budget {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let settled = self.inner_settled();
        self.settle_to(settled)?;
        let lost_before = self.inner.metrics().lost;
        let closed = self.inner.close();
        let lost_at_close = self.inner.metrics().lost.saturating_sub(lost_before);
        // What the inner sink had not settled: replayed records are still in the spool (the
        // cursor never passed them); direct ones go ahead of them.
        let replay_unsettled: u64 = self.replay.iter().map(|r| r.2).sum();
        let mut older = Vec::new();
        for (start, recs) in &self.direct {
            let skip = settled.saturating_sub(*start) as usize;
            older.extend_from_slice(&recs[skip.min(recs.len())..]);
        }
        self.direct.clear();
        self.replay.clear();
        self.store.rewind();
        let stored = match self.store.prepend(&older) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, records = older.len(), "spool: could not keep undelivered records at shutdown");
                0
            }
        };
        self.spooled_total += stored as u64;
        // Records not stored stay counted as lost by the inner sink (its close gave them up).
        self.reclaimed = lost_at_close.min(stored as u64 + replay_unsettled);
        self.log_lost(true);
        let m = self.metrics();
        if m.spooled > 0 {
            tracing::warn!(sink = %self.name, spooled = m.spooled, spool_bytes = m.spool_bytes, spool = %self.store.dir().display(), "undelivered records stay in the spool for the next start");
        }
        if m.lost + m.rejected > 0 {
            if let Err(e) = closed {
                tracing::error!(sink = %self.name, error = %e, "closing the sink");
            }
            return Err(SinkError::Lost {
                sink: self.name.clone(),
                records: m.lost + m.rejected,
            });
        }
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.metrics().lost
    }

    fn metrics(&self) -> SinkMetrics {
        let m = self.inner.metrics();
        SinkMetrics {
            lost: m.lost.saturating_sub(self.reclaimed) + self.lost_full,
            spooled: self.store.pending(),
            // An empty spool keeps one segment header on disk; that is not a backlog.
            spool_bytes: if self.store.pending() > 0 {
                self.store.bytes()
            } else {
                0
            },
            ..m
        }
    }
}

impl<S: Sink> Drop for SpooledSink<S> {
    fn drop(&mut self) {
        if !self.closed
            && let Err(e) = self.close()
        {
            tracing::error!(sink = %self.name, error = %e, "closing spooled sink on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dir_names_are_readable_and_distinct() {
        let a = super::dir_name("kafka:127.0.0.1:9092/flows");
        assert!(a.starts_with("kafka_127.0.0.1_9092_flows-"), "{a}");
        assert_ne!(a, super::dir_name("kafka:127.0.0.1:9092_flows"));
        assert_eq!(a, super::dir_name("kafka:127.0.0.1:9092/flows"));
    }
}
