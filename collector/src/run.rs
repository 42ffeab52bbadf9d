//! `flowlens run`: probe → drain → flow table → records → sinks, on a timer.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use flowlens_schema::{FlowKey, FlowValue, record::FlowRecord, stats};
use flowlens_sinks::{
    Sink, SinkSpec,
    otlp::{OtlpOptions, OtlpSink},
    parquet::{ParquetOptions, ParquetSink},
    s3::{S3Options, S3ParquetSink},
    stdout::StdoutSink,
};

use crate::{
    config::RunConfig,
    drain::{Drainer, KernelStats},
    export::Exporter,
    flow_table::{Ended, FlowTable},
    ifaces,
    probe::Probe,
    timebase::{Timebase, monotonic_now_ns},
};

/// Totals reported at shutdown (and in logs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub drains: u64,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub sink_errors: u64,
    pub records_lost_in_sinks: u64,
    pub vanished_entries: u64,
    /// Packets/bytes moved out of the kernel map (before the flow table).
    pub drained_packets: u64,
    pub drained_bytes: u64,
    /// At shutdown: packets/bytes the probe keyed but that never reached user space (drain races,
    /// LRU evictions, refused inserts). Exact, because the probe is detached by then.
    pub lost_packets: u64,
    pub lost_bytes: u64,
}

/// Builds the sinks; fails before anything is attached if a target is unusable.
pub fn build_sinks(cfg: &RunConfig, host: &Arc<str>) -> Result<Vec<Box<dyn Sink>>> {
    cfg.sinks
        .iter()
        .map(|s| -> Result<Box<dyn Sink>> {
            Ok(match s {
                SinkSpec::Stdout => Box::new(StdoutSink),
                SinkSpec::Parquet(dir) => Box::new(
                    ParquetSink::new(ParquetOptions {
                        dir: dir.clone(),
                        rotate_bytes: cfg.parquet_rotate_bytes,
                        rotate_interval: cfg.parquet_rotate_interval,
                        host: host.clone(),
                    })
                    .with_context(|| format!("sink {s}"))?,
                ),
                SinkSpec::ParquetS3(target) => {
                    let spool = cfg.parquet_spool_dir.clone().unwrap_or_else(|| {
                        std::env::temp_dir()
                            .join("flowlens-spool")
                            .join(&target.bucket)
                            .join(&target.prefix)
                    });
                    let mut o = S3Options::new(target.clone(), spool, host.clone());
                    o.rotate_bytes = cfg.parquet_rotate_bytes;
                    o.rotate_interval = cfg.parquet_rotate_interval;
                    o.store_options = cfg.s3_options.clone();
                    Box::new(S3ParquetSink::new(o).with_context(|| format!("sink {s}"))?)
                }
                SinkSpec::Otlp(endpoint) => {
                    let mut o = OtlpOptions::new(endpoint.clone(), host.clone());
                    o.batch_records = cfg.otlp_batch_records;
                    o.queue_records = cfg.otlp_queue_records;
                    o.request_timeout = cfg.otlp_timeout;
                    o.metrics = cfg.otlp_metrics;
                    Box::new(OtlpSink::new(o).with_context(|| format!("sink {s}"))?)
                }
            })
        })
        .collect()
}

/// The export pipeline after the kernel: everything but the probe itself, so it can be driven
/// by tests and benchmarks with synthetic deltas.
pub struct Pipeline {
    pub table: FlowTable,
    pub exporter: Exporter,
    pub sinks: Vec<Box<dyn Sink>>,
    pub totals: Totals,
    deltas: Vec<(FlowKey, FlowValue)>,
    ended: Vec<Ended>,
    records: Vec<FlowRecord>,
}

impl Pipeline {
    pub fn new(table: FlowTable, exporter: Exporter, sinks: Vec<Box<dyn Sink>>) -> Self {
        Pipeline {
            table,
            exporter,
            sinks,
            totals: Totals::default(),
            deltas: Vec::new(),
            ended: Vec::new(),
            records: Vec::new(),
        }
    }

    /// One cycle: drain, merge, expire (or end everything when `final_cycle`), export.
    pub fn cycle(&mut self, drainer: &mut dyn Drainer, final_cycle: bool) -> Result<()> {
        self.deltas.clear();
        // A failed drain still hands over what it moved out of the kernel, and the final cycle
        // still ends every open flow: the error is returned after the records are out.
        let drain_err = match drainer.drain(&mut self.deltas) {
            Ok(st) => {
                self.totals.vanished_entries += st.vanished as u64;
                if st.vanished > 0 {
                    tracing::warn!(
                        entries = st.vanished,
                        "flow entries evicted by the kernel LRU during the drain; their counts are lost"
                    );
                }
                None
            }
            Err(e) => Some(e),
        };
        self.totals.drains += 1;
        for (k, v) in &self.deltas {
            self.totals.drained_packets += v.packets;
            self.totals.drained_bytes += v.bytes;
            self.table.merge(k, v);
        }
        self.ended.clear();
        if final_cycle {
            self.table.drain_all(&mut self.ended);
        } else {
            self.table.expire(monotonic_now_ns(), &mut self.ended);
        }
        let tb = Timebase::sample();
        self.records.clear();
        for e in &self.ended {
            self.records.push(self.exporter.record(e, &tb));
        }
        self.totals.records += self.records.len() as u64;
        for r in &self.records {
            self.totals.packets += r.packets;
            self.totals.bytes += r.bytes;
        }
        for s in &mut self.sinks {
            let res = if self.records.is_empty() {
                s.tick()
            } else {
                s.write(&self.records)
            };
            if let Err(e) = res {
                self.totals.sink_errors += 1;
                self.totals.records_lost_in_sinks += self.records.len() as u64;
                tracing::error!(sink = s.name(), records = self.records.len(), error = %e, "sink failed; these records are lost for this sink");
            }
        }
        match drain_err {
            Some(e) => Err(anyhow::Error::new(e).context("draining the flow map")),
            None => Ok(()),
        }
    }

    /// Flushes and closes every sink.
    pub fn close(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for s in &mut self.sinks {
            if let Err(e) = s.close() {
                tracing::error!(sink = s.name(), error = %e, "closing sink");
                failed.push(s.name().to_string());
            }
            // Records a sink accepted and then could not deliver (e.g. a file it could not finish).
            let m = s.metrics();
            self.totals.records_lost_in_sinks += m.lost;
            tracing::info!(
                sink = s.name(),
                sent = m.sent,
                acknowledged = m.acknowledged,
                retried = m.retried,
                rejected = m.rejected,
                queued = m.queued,
                lost = m.lost,
                "sink closed"
            );
        }
        if !failed.is_empty() {
            bail!("sinks failed to close: {}", failed.join(", "));
        }
        Ok(())
    }
}

fn log_kernel_stats(ks: &KernelStats) {
    match ks.read() {
        Ok(v) => tracing::info!(
            packets_seen = v[stats::PACKETS_SEEN as usize],
            non_ip = v[stats::NON_IP as usize],
            unparsed = v[stats::UNPARSED as usize],
            map_errors = v[stats::MAP_ERRORS as usize],
            bytes_keyed = v[stats::BYTES_KEYED as usize],
            "probe counters"
        ),
        Err(e) => tracing::warn!(error = %e, "reading probe counters"),
    }
}

/// After the final drain (probe detached): every packet the probe keyed must have been drained.
/// Whatever was not is reported with numbers, never silently dropped.
fn check_conservation(ks: &KernelStats, t: &mut Totals) {
    let Ok(v) = ks.read() else {
        tracing::warn!("could not read probe counters: conservation not checked");
        return;
    };
    let keyed_packets = v[stats::PACKETS_SEEN as usize]
        .saturating_sub(v[stats::NON_IP as usize])
        .saturating_sub(v[stats::UNPARSED as usize]);
    let keyed_bytes = v[stats::BYTES_KEYED as usize];
    t.lost_packets = keyed_packets.saturating_sub(t.drained_packets);
    t.lost_bytes = keyed_bytes.saturating_sub(t.drained_bytes);
    if t.drained_packets > keyed_packets || t.drained_bytes > keyed_bytes {
        tracing::error!(
            keyed_packets,
            keyed_bytes,
            drained_packets = t.drained_packets,
            drained_bytes = t.drained_bytes,
            "conservation: more drained than the probe keyed (double counting)"
        );
    } else if t.lost_packets > 0 || t.lost_bytes > 0 {
        tracing::warn!(
            keyed_packets,
            drained_packets = t.drained_packets,
            lost_packets = t.lost_packets,
            lost_bytes = t.lost_bytes,
            "conservation: packets counted by the probe never reached user space (drain races, LRU evictions or refused inserts)"
        );
    } else {
        tracing::info!(
            keyed_packets,
            keyed_bytes,
            drained_packets = t.drained_packets,
            drained_bytes = t.drained_bytes,
            lost_packets = 0,
            "conservation: every keyed packet was drained"
        );
    }
}

/// Runs until SIGINT/SIGTERM or `cfg.duration`.
pub fn run(cfg: RunConfig) -> Result<Totals> {
    let host: Arc<str> = ifaces::hostname().into();
    // Validate everything that can fail before attaching anything.
    let ifaces_list = if cfg.xdp.is_empty() {
        let l = ifaces::up_non_loopback()?;
        if l.is_empty() {
            bail!("no interface is up except loopback; name one with --xdp IFACE");
        }
        l
    } else {
        cfg.xdp.clone()
    };
    for i in &ifaces_list {
        ifaces::index_of(i)?;
    }
    let sinks = build_sinks(&cfg, &host)?;

    let mut probe = Probe::load(cfg.max_flows)?;
    for i in &ifaces_list {
        probe.attach_xdp(i, cfg.xdp_mode)?;
    }
    let mut drainer = probe.take_drainer()?;
    let kstats = probe.take_stats()?;
    tracing::info!(interfaces = ?ifaces_list, mode = ?cfg.xdp_mode, sinks = ?cfg.sinks.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "flowlens running");

    let mut pipe = Pipeline::new(
        FlowTable::new(cfg.active_timeout, cfg.idle_timeout),
        Exporter::new(host),
        sinks,
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result: Result<()> = rt.block_on(async {
        let mut tick = tokio::time::interval(cfg.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        use tokio::signal::unix::{SignalKind, signal};
        // One persistent listener each, created before the loop, so no signal is missed.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop_after = async {
            match cfg.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_after);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                biased;
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = &mut stop_after => { tracing::info!("duration reached: stopping"); break; }
                _ = tick.tick() => {
                    pipe.cycle(&mut drainer, false)?;
                    n += 1;
                    if n.is_multiple_of(60) {
                        pipe.exporter.names.clear();
                        log_kernel_stats(&kstats);
                    }
                }
            }
        }
        Ok(())
    });
    // Stop observing first, then take the last counts: nothing arrives after the final drain.
    // Detaching does not wait for program runs in flight on other CPUs (they last microseconds);
    // a short pause covers them before the last drain.
    drop(probe);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let last = pipe.cycle(&mut drainer, true);
    log_kernel_stats(&kstats);
    check_conservation(&kstats, &mut pipe.totals);
    let closed = pipe.close();
    result?;
    last?;
    closed?;
    let t = pipe.totals;
    tracing::info!(
        records = t.records,
        packets = t.packets,
        bytes = t.bytes,
        sink_errors = t.sink_errors,
        records_lost_in_sinks = t.records_lost_in_sinks,
        "flowlens stopped"
    );
    Ok(t)
}
