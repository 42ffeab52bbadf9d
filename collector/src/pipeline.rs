//! The export pipeline after the kernel: drain → flow table → records → sinks, one cycle at a
//! time. Everything but the probe itself, so tests and benchmarks drive it with synthetic
//! deltas.
//!
//! **A failed drain** (a `bpf()` call on the flow map or its counters returns an error) does not
//! stop flowlens: it is counted (`Totals::drain_failures`, `flowlens_drain_failures_total`),
//! logged (rate-limited), and the cycle goes on with whatever the drain had already moved out.
//! What it had not moved stays in the kernel map and is drained by a later cycle (the next
//! drain hands the failed buffer back to the probe, the one after it empties it). Only
//! after [`MAX_CONSECUTIVE_DRAIN_FAILURES`] failed drains in a row does [`Pipeline::cycle`]
//! return an error (and `flowlens run` exit with it): the kernel map then fills up and
//! evicts, so carrying on would lose packets silently. A failed final drain (at shutdown,
//! after the probes are detached) is always an error: nothing drains the map after it.

use anyhow::{Result, bail};
use flowlens_schema::{FlowKey, FlowValue};
use flowlens_sinks::{Sink, SinkMetrics, log_limit::RateLimited};

use crate::{
    conservation::{self, DrainLog},
    drain::Drainer,
    export::Exporter,
    flow_table::{Ended, FlowTable},
    identity::{CgroupResolver, IdentityStage},
    stats::{RunStats, SinkFailures, Totals},
    timebase::{Timebase, monotonic_now_ns},
};

/// Records built and written per sink call (bounds memory in bursts of ended flows).
const RECORD_CHUNK: usize = 8192;

/// How long the final cycle waits, in all, for sinks whose queue is full (then it drops,
/// counted, as during the run).
const FINAL_SINK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Failed drains in a row after which [`Pipeline::cycle`] returns an error (see the module
/// documentation). With the default 1 s drain interval, about 30 s of failures.
pub const MAX_CONSECUTIVE_DRAIN_FAILURES: u64 = 30;

/// Log lines of sink events that repeat every cycle while a condition lasts (rate-limited).
#[derive(Default)]
struct SinkLog {
    /// Per sink: failed writes, failed ticks.
    write: Vec<RateLimited>,
    tick: Vec<RateLimited>,
}

/// The export pipeline: see the module documentation.
pub struct Pipeline {
    pub table: FlowTable,
    pub exporter: Exporter,
    /// Names each record's local ends (docs/IDENTITY.md); inert until [`Pipeline::new`]'s
    /// caller gives it a cgroup root or labels.
    pub identity: IdentityStage,
    pub sinks: Vec<Box<dyn Sink>>,
    pub totals: Totals,
    /// Per sink, in the order of `sinks`.
    pub sink_failures: Vec<SinkFailures>,
    /// Failed drains in a row tolerated before [`Pipeline::cycle`] fails
    /// ([`MAX_CONSECUTIVE_DRAIN_FAILURES`] unless changed).
    pub max_consecutive_drain_failures: u64,
    drain_log: DrainLog,
    sink_log: SinkLog,
    /// One line at most per period while the flow table is full.
    full_log: RateLimited,
    deltas: Vec<(FlowKey, FlowValue)>,
    ended: Vec<Ended>,
}

impl Pipeline {
    pub fn new(table: FlowTable, exporter: Exporter, sinks: Vec<Box<dyn Sink>>) -> Self {
        let n = sinks.len();
        Pipeline {
            table,
            exporter,
            identity: IdentityStage::new(CgroupResolver::with_root(None), None),
            sinks,
            totals: Totals::default(),
            sink_failures: vec![SinkFailures::default(); n],
            max_consecutive_drain_failures: MAX_CONSECUTIVE_DRAIN_FAILURES,
            drain_log: DrainLog::default(),
            full_log: RateLimited::default(),
            sink_log: SinkLog {
                write: vec![RateLimited::default(); n],
                tick: vec![RateLimited::default(); n],
            },
            deltas: Vec::new(),
            ended: Vec::new(),
        }
    }

    /// Reserves the drain buffer once for `entries` deltas (`memory::drain_entries`), so that it
    /// never grows by doubling past what the kernel buffers can hand over.
    pub fn reserve_drain(&mut self, entries: usize) {
        self.deltas
            .reserve_exact(entries.saturating_sub(self.deltas.len()));
    }

    /// One cycle: drain, merge, expire (or end everything when `final_cycle`), export.
    pub fn cycle(&mut self, drainer: &mut dyn Drainer, final_cycle: bool) -> Result<()> {
        self.cycle_at(drainer, final_cycle, monotonic_now_ns())
    }

    /// [`Pipeline::cycle`] with flows expired as of `now_ns` (CLOCK_MONOTONIC): benchmarks run
    /// the pipeline on a simulated clock.
    pub fn cycle_at(
        &mut self,
        drainer: &mut dyn Drainer,
        final_cycle: bool,
        now_ns: u64,
    ) -> Result<()> {
        // `sinks` is public: keep the per-sink state in step if a caller changed it.
        let n = self.sinks.len();
        self.sink_failures.resize(n, SinkFailures::default());
        self.sink_log.write.resize(n, RateLimited::default());
        self.sink_log.tick.resize(n, RateLimited::default());
        self.deltas.clear();
        // A failed drain still hands over what it moved out of the kernel, and the final cycle
        // still ends every open flow: an error is returned after the records are out.
        let drained = if final_cycle {
            drainer.drain_final(&mut self.deltas)
        } else {
            drainer.drain(&mut self.deltas)
        };
        let drain_err = match drained {
            Ok(rep) => {
                self.totals.consecutive_drain_failures = 0;
                if let Some(a) = rep.total() {
                    conservation::report_drain(&a, &mut self.drain_log);
                    self.totals.accounting.add(&a);
                }
                if let Some(per) = &rep.accounting {
                    for (t, a) in self.totals.per_observation_point.iter_mut().zip(per) {
                        t.add(a);
                    }
                }
                None
            }
            Err(e) => {
                self.totals.drain_failures += 1;
                self.totals.consecutive_drain_failures += 1;
                let in_a_row = self.totals.consecutive_drain_failures;
                if final_cycle {
                    Some(anyhow::Error::new(e).context(
                        "draining the flow map at shutdown (what was still in the kernel map is lost)",
                    ))
                } else if in_a_row >= self.max_consecutive_drain_failures {
                    Some(anyhow::Error::new(e).context(format!(
                        "draining the flow map failed {in_a_row} times in a row; giving up"
                    )))
                } else {
                    conservation::report_drain_failure(&e, in_a_row, &mut self.drain_log);
                    None
                }
            }
        };
        self.totals.drains += 1;
        for (_, v) in &self.deltas {
            self.totals.drained_packets += v.packets;
            self.totals.drained_bytes += v.bytes;
        }
        self.identity.learn(&mut self.deltas);
        self.table.merge_all(&self.deltas);
        let (ended_early, early_packets) = self.table.lack_of_resources();
        if ended_early > self.totals.flows_ended_lack_of_resources {
            let now = ended_early - self.totals.flows_ended_lack_of_resources;
            if let Some(suppressed) = self.full_log.check() {
                tracing::warn!(
                    flows_ended = now,
                    total = ended_early,
                    max_flows = self.table.max_flows(),
                    suppressed,
                    "flow table full (--max-memory): the flows seen least recently end early with flowEndReason lack_of_resources (their packets are exported, none is lost)"
                );
            }
        }
        self.totals.flows_ended_lack_of_resources = ended_early;
        self.totals.lack_of_resources_packets = early_packets;
        let tb = Timebase::sample();
        if final_cycle {
            // At shutdown every open flow ends: in chunks, so the ended flows of a large table
            // are never all in memory at once (35 MB at 333k flows). Nothing is left to drain,
            // so the sinks are waited for (up to FINAL_SINK_WAIT in all) instead of dropping.
            let deadline = std::time::Instant::now() + FINAL_SINK_WAIT;
            loop {
                self.ended.clear();
                let more = self.table.drain_some(&mut self.ended, 8 * RECORD_CHUNK);
                self.export_ended(&tb, Some(deadline));
                if !more {
                    break;
                }
            }
        } else {
            self.ended.clear();
            self.table.expire(now_ns, &mut self.ended);
            self.export_ended(&tb, None);
        }
        // A burst of ended flows (a flood, every flow at its active timeout) does not keep its
        // buffer for the rest of the run.
        if self.ended.capacity() > 4 * RECORD_CHUNK {
            self.ended = Vec::new();
        }
        // Every cycle, records or not: rotation, flushing, spool replay.
        for (i, s) in self.sinks.iter_mut().enumerate() {
            if let Err(e) = s.tick() {
                self.totals.sink_errors += 1;
                self.sink_failures[i].errors += 1;
                if let Some(suppressed) = self.sink_log.tick[i].check() {
                    tracing::error!(sink = s.name(), suppressed, error = %e, "sink tick failed");
                }
            }
        }
        match drain_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ended flows → records → every sink, in chunks of [`RECORD_CHUNK`]. With a `deadline`
    /// (shutdown), a sink whose queue is full is waited for until then.
    fn export_ended(&mut self, tb: &Timebase, deadline: Option<std::time::Instant>) {
        // Records are built and handed to the sinks in chunks, so a burst of ended flows (say,
        // every flow reaching the active timeout at once) is never all in memory as records.
        // Each chunk is one batch shared by every sink (each sink's thread keeps it until it
        // has written it: flowlens_sinks::worker).
        for chunk in self.ended.chunks(RECORD_CHUNK) {
            let mut records = Vec::with_capacity(chunk.len());
            for e in chunk {
                let mut r = self.exporter.record(e, tb);
                self.identity
                    .annotate(&mut r, e.state.cgroup_id, e.state.last_seen_ns);
                records.push(r);
            }
            self.totals.records += records.len() as u64;
            for r in &records {
                self.totals.packets += r.packets;
                self.totals.bytes += r.bytes;
            }
            let batch = std::sync::Arc::new(records);
            for (i, s) in self.sinks.iter_mut().enumerate() {
                if let Some(deadline) = deadline {
                    while s.room() < batch.len() as u64 && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                if let Err(e) = s.write_shared(&batch) {
                    let n = batch.len() as u64;
                    self.totals.sink_errors += 1;
                    self.totals.records_lost_in_sinks += n;
                    self.sink_failures[i].errors += 1;
                    self.sink_failures[i].records_lost += n;
                    if let Some(suppressed) = self.sink_log.write[i].check() {
                        tracing::error!(sink = s.name(), records = n, suppressed, error = %e, "sink failed; these records are lost for this sink");
                    }
                }
            }
        }
    }

    /// Flushes and closes every sink, all at once (each has the whole shutdown grace, so the
    /// total is one grace, and a slow sink does not delay the others).
    pub fn close(&mut self) -> Result<()> {
        let results: Vec<(String, Result<(), String>, SinkMetrics)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .sinks
                .iter_mut()
                .map(|s| {
                    scope.spawn(move || {
                        let r = s.close().map_err(|e| e.to_string());
                        (s.name().to_string(), r, s.metrics())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (
                            "?".into(),
                            Err("sink close panicked".into()),
                            SinkMetrics::default(),
                        )
                    })
                })
                .collect()
        });
        let mut failed = Vec::new();
        for (name, r, m) in results {
            if let Err(e) = r {
                tracing::error!(sink = %name, error = %e, "closing sink");
                failed.push(name.clone());
            }
            // Records a sink accepted and then could not deliver (e.g. a file it could not
            // finish, a batch its thread could not write or had to drop).
            self.totals.records_lost_in_sinks += m.lost;
            self.totals.sink_errors += m.failed_calls;
            self.totals.records_spooled += m.spooled;
            tracing::info!(
                sink = %name,
                sent = m.sent,
                acknowledged = m.acknowledged,
                retried = m.retried,
                rejected = m.rejected,
                queued = m.queued,
                lost = m.lost,
                dropped = m.dropped,
                failed_calls = m.failed_calls,
                spooled = m.spooled,
                spool_bytes = m.spool_bytes,
                "sink closed"
            );
        }
        if !failed.is_empty() {
            bail!("sinks failed to close: {}", failed.join(", "));
        }
        Ok(())
    }
}

impl RunStats for Pipeline {
    fn totals(&self) -> &Totals {
        &self.totals
    }
    fn flows_in_table(&self) -> u64 {
        self.table.len() as u64
    }
    fn sink_stats(&self) -> Vec<(SinkMetrics, SinkFailures)> {
        self.sinks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut f = self.sink_failures.get(i).copied().unwrap_or_default();
                let m = s.metrics();
                // Calls that failed on the sink's own thread.
                f.errors += m.failed_calls;
                (m, f)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use flowlens_schema::{OBS_XDP, record::FlowRecord};

    use super::*;
    use crate::drain::{DrainError, DrainReport};

    /// Hands over one flow per call; fails the calls whose number (from 1) is in `fail`,
    /// after moving that call's flow out (a drain can fail part-way).
    struct Flaky {
        calls: u64,
        fail: Vec<u64>,
    }

    impl Drainer for Flaky {
        fn drain(
            &mut self,
            out: &mut Vec<(FlowKey, FlowValue)>,
        ) -> Result<DrainReport, DrainError> {
            self.calls += 1;
            let mut k = FlowKey::ZERO;
            k.ip_version = 4;
            k.protocol = 17;
            k.observation_point = OBS_XDP;
            k.src_port = self.calls as u16;
            out.push((
                k,
                FlowValue {
                    packets: 1,
                    bytes: 100,
                    ..FlowValue::default()
                },
            ));
            if self.fail.contains(&self.calls) {
                return Err(DrainError::Barrier(std::io::Error::from_raw_os_error(
                    libc::EPERM,
                )));
            }
            Ok(DrainReport::default())
        }
    }

    /// Counts the records it is given.
    struct Count(Arc<std::sync::atomic::AtomicU64>);

    impl Sink for Count {
        fn name(&self) -> &str {
            "count"
        }
        fn write(&mut self, records: &[FlowRecord]) -> flowlens_sinks::Result<()> {
            self.0
                .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn close(&mut self) -> flowlens_sinks::Result<()> {
            Ok(())
        }
    }

    fn pipeline() -> (Pipeline, Arc<std::sync::atomic::AtomicU64>) {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = Pipeline::new(
            FlowTable::new(Duration::from_secs(60), Duration::from_secs(60)),
            Exporter::new("h"),
            vec![Box::new(Count(n.clone()))],
        );
        (p, n)
    }

    /// A failed drain is counted and the run goes on (what it moved is still exported); only
    /// `max_consecutive_drain_failures` failures in a row are an error, and a success resets
    /// the run of failures.
    #[test]
    fn failed_drains_are_counted_and_retried_until_too_many_in_a_row() {
        let (mut p, exported) = pipeline();
        p.max_consecutive_drain_failures = 3;
        let mut d = Flaky {
            calls: 0,
            fail: vec![2, 3, 5, 6, 7],
        };
        // 1 ok, 2-3 fail, 4 ok, 5-6 fail: no error yet.
        for call in 1..=6 {
            p.cycle(&mut d, false)
                .unwrap_or_else(|e| panic!("drain {call}: {e:#}"));
        }
        assert_eq!(p.totals.drains, 6);
        assert_eq!(p.totals.drain_failures, 4);
        assert_eq!(p.totals.consecutive_drain_failures, 2);
        // Third failure in a row: the error names the policy.
        let e = p.cycle(&mut d, false).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("failed 3 times in a row"), "{msg}");
        assert_eq!(p.totals.drain_failures, 5);
        // Every flow moved out, by failed drains too, reaches the sinks.
        p.cycle(&mut d, true).unwrap();
        assert_eq!(p.totals.consecutive_drain_failures, 0);
        assert_eq!(p.totals.drained_packets, 8);
        assert_eq!(exported.load(std::sync::atomic::Ordering::Relaxed), 8);
    }

    /// A failed final drain is an error at once (nothing drains the map after it), and the
    /// flows it moved are still exported.
    #[test]
    fn failed_final_drain_is_an_error() {
        let (mut p, exported) = pipeline();
        let mut d = Flaky {
            calls: 0,
            fail: vec![1],
        };
        let e = p.cycle(&mut d, true).unwrap_err();
        assert!(format!("{e:#}").contains("at shutdown"), "{e:#}");
        assert_eq!(exported.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
