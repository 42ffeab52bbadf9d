//! `flowlens run`: probe → drain → flow table → records → sinks, on a timer.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use flowlens_schema::{FlowKey, FlowValue, record::FlowRecord};
use flowlens_sinks::{
    Sink, SinkSpec,
    kafka::{KafkaOptions, KafkaSink},
    log_limit::RateLimited,
    otlp::{OtlpOptions, OtlpSink},
    parquet::{JournalOptions, ParquetOptions, ParquetSink},
    s3::{S3Options, S3ParquetSink},
    spool::{SpoolOptions, SpooledSink},
    stdout::StdoutSink,
};

use crate::{
    config::RunConfig,
    drain::{Accounting, Drainer},
    export::Exporter,
    flow_table::{Ended, FlowTable},
    ifaces, kernel_support, metrics, netfilter,
    probe::Probe,
    timebase::{Timebase, monotonic_now_ns},
};

/// Records built and written per sink call (bounds memory in bursts of ended flows).
const RECORD_CHUNK: usize = 8192;

/// How often `flowlens run` checks whether the kernel buffer needs an early drain.
const FILL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Totals reported at shutdown (and in logs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub drains: u64,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub sink_errors: u64,
    pub records_lost_in_sinks: u64,
    /// Records left in the sinks' on-disk spools at shutdown (delivered by the next start).
    pub records_spooled: u64,
    /// Drains started before the interval because the kernel buffer was filling up.
    pub early_drains: u64,
    /// Packets/bytes moved out of the kernel map (before the flow table).
    pub drained_packets: u64,
    pub drained_bytes: u64,
    /// Kernel-side conservation, summed over every drain (exact: see `drain.rs`).
    pub accounting: Accounting,
    /// The same per observation point (`OBS_*` index), for the metrics endpoint.
    pub per_observation_point: [Accounting; flowlens_schema::stats::OBS_SLOTS as usize],
}

/// Failed calls of one sink (the records of a failed `write` are lost for that sink).
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkFailures {
    pub errors: u64,
    pub records_lost: u64,
}

/// Log lines of events that repeat every cycle while a condition lasts (rate-limited).
#[derive(Default)]
struct LogLimits {
    evicted: RateLimited,
    excess: RateLimited,
    /// Per sink: failed writes, failed ticks.
    sink_write: Vec<RateLimited>,
    sink_tick: Vec<RateLimited>,
}

/// What the inner sink's own `close` gets under a spool (flush, then purge what is left: the
/// spool keeps it); the rest of `--shutdown-grace` is the spool wrapper's.
const SPOOLED_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The spool options of one sink (`None`: `--no-spool`).
fn spool_options(cfg: &RunConfig, spec: &SinkSpec) -> Option<SpoolOptions> {
    let parent = cfg.spool_dir.as_ref()?;
    let mut o = SpoolOptions::new(parent.join(flowlens_sinks::spool::dir_name(&spec.to_string())));
    o.max_bytes = cfg.spool_max_bytes;
    o.grace = cfg.shutdown_grace;
    // The inner close: SPOOLED_CLOSE_TIMEOUT and a margin for the spool writes after it.
    o.close_reserve =
        (SPOOLED_CLOSE_TIMEOUT + std::time::Duration::from_millis(500)).min(cfg.shutdown_grace / 2);
    Some(o)
}

/// The write-ahead journal of a local Parquet sink (`None`: `--no-spool`): its rows survive a
/// full or failing output disk and a killed flowlens (see `flowlens_sinks::parquet`).
fn parquet_journal(cfg: &RunConfig, spec: &SinkSpec) -> Option<JournalOptions> {
    let parent = cfg.spool_dir.as_ref()?;
    Some(JournalOptions {
        dir: parent.join(flowlens_sinks::spool::dir_name(&spec.to_string())),
        max_bytes: cfg.spool_max_bytes,
    })
}

/// Builds the sinks; fails before anything is attached if a target (or its spool directory)
/// is unusable. Kafka and OTLP sinks get an on-disk spool unless `--no-spool`; their own
/// give-up timers are then off (the spool, not a timer, bounds an outage). A local Parquet sink
/// gets a write-ahead journal in the same directory instead (disk full, SIGKILL); stdout none.
pub fn build_sinks(cfg: &RunConfig, host: &Arc<str>) -> Result<Vec<Box<dyn Sink>>> {
    cfg.sinks
        .iter()
        .map(|s| -> Result<Box<dyn Sink>> {
            let spool = spool_options(cfg, s);
            let spooled = spool.is_some();
            let wrap = |sink: Box<dyn Sink>| -> Result<Box<dyn Sink>> {
                match spool.clone() {
                    Some(o) => Ok(Box::new(
                        SpooledSink::new(sink, o).with_context(|| format!("sink {s}: spool"))?,
                    )),
                    None => Ok(sink),
                }
            };
            Ok(match s {
                SinkSpec::Stdout => Box::new(StdoutSink::default()),
                SinkSpec::Parquet(dir) => Box::new(
                    ParquetSink::new(ParquetOptions {
                        dir: dir.clone(),
                        rotate_bytes: cfg.parquet_rotate_bytes,
                        rotate_interval: cfg.parquet_rotate_interval,
                        host: host.clone(),
                        journal: parquet_journal(cfg, s),
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
                    if spooled {
                        o.retry.max_elapsed = std::time::Duration::MAX;
                        o.close_timeout = SPOOLED_CLOSE_TIMEOUT;
                    } else {
                        o.close_timeout = cfg.shutdown_grace;
                    }
                    wrap(Box::new(
                        OtlpSink::new(o).with_context(|| format!("sink {s}"))?,
                    ))?
                }
                SinkSpec::Kafka { brokers, topic } => {
                    let mut options = cfg.kafka_options.clone();
                    if spooled && !options.iter().any(|(k, _)| k == "message.timeout.ms") {
                        // Infinite: records wait in librdkafka's bounded queue, then the spool.
                        options.push(("message.timeout.ms".into(), "0".into()));
                    }
                    let sink = KafkaSink::new(KafkaOptions {
                        brokers: brokers.clone(),
                        topic: topic.clone(),
                        format: cfg.kafka_format,
                        options,
                        queue_max_records: cfg.kafka_queue_max_records,
                        close_timeout: if spooled {
                            SPOOLED_CLOSE_TIMEOUT
                        } else {
                            cfg.kafka_close_timeout
                        },
                    })
                    .with_context(|| format!("sink {s}"))?;
                    // Informational only: records queue (bounded) until the brokers answer.
                    sink.check_reachable(std::time::Duration::from_secs(3));
                    wrap(Box::new(sink))?
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
    /// Per sink, in the order of `sinks`.
    pub sink_failures: Vec<SinkFailures>,
    log: LogLimits,
    deltas: Vec<(FlowKey, FlowValue)>,
    ended: Vec<Ended>,
    records: Vec<FlowRecord>,
}

impl Pipeline {
    pub fn new(table: FlowTable, exporter: Exporter, sinks: Vec<Box<dyn Sink>>) -> Self {
        let n = sinks.len();
        Pipeline {
            table,
            exporter,
            sinks,
            totals: Totals::default(),
            sink_failures: vec![SinkFailures::default(); n],
            log: LogLimits {
                sink_write: vec![RateLimited::default(); n],
                sink_tick: vec![RateLimited::default(); n],
                ..LogLimits::default()
            },
            deltas: Vec::new(),
            ended: Vec::new(),
            records: Vec::new(),
        }
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
        self.log.sink_write.resize(n, RateLimited::default());
        self.log.sink_tick.resize(n, RateLimited::default());
        self.deltas.clear();
        // A failed drain still hands over what it moved out of the kernel, and the final cycle
        // still ends every open flow: the error is returned after the records are out.
        let drained = if final_cycle {
            drainer.drain_final(&mut self.deltas)
        } else {
            drainer.drain(&mut self.deltas)
        };
        let drain_err = match drained {
            Ok(rep) => {
                if let Some(a) = rep.total() {
                    report_accounting(&a, &mut self.log);
                    self.totals.accounting.add(&a);
                }
                if let Some(per) = &rep.accounting {
                    for (t, a) in self.totals.per_observation_point.iter_mut().zip(per) {
                        t.add(a);
                    }
                }
                None
            }
            Err(e) => Some(e),
        };
        self.totals.drains += 1;
        for (_, v) in &self.deltas {
            self.totals.drained_packets += v.packets;
            self.totals.drained_bytes += v.bytes;
        }
        self.table.merge_all(&self.deltas);
        self.ended.clear();
        if final_cycle {
            self.table.drain_all(&mut self.ended);
        } else {
            self.table.expire(now_ns, &mut self.ended);
        }
        let tb = Timebase::sample();
        // Records are built and handed to the sinks in chunks, so a burst of ended flows (say,
        // every flow reaching the active timeout at once) is never all in memory as records.
        for chunk in self.ended.chunks(RECORD_CHUNK) {
            self.records.clear();
            for e in chunk {
                self.records.push(self.exporter.record(e, &tb));
            }
            self.totals.records += self.records.len() as u64;
            for r in &self.records {
                self.totals.packets += r.packets;
                self.totals.bytes += r.bytes;
            }
            for (i, s) in self.sinks.iter_mut().enumerate() {
                if let Err(e) = s.write(&self.records) {
                    let n = self.records.len() as u64;
                    self.totals.sink_errors += 1;
                    self.totals.records_lost_in_sinks += n;
                    self.sink_failures[i].errors += 1;
                    self.sink_failures[i].records_lost += n;
                    if let Some(suppressed) = self.log.sink_write[i].check() {
                        tracing::error!(sink = s.name(), records = n, suppressed, error = %e, "sink failed; these records are lost for this sink");
                    }
                }
            }
        }
        // Every cycle, records or not: rotation, flushing, spool replay.
        for (i, s) in self.sinks.iter_mut().enumerate() {
            if let Err(e) = s.tick() {
                self.totals.sink_errors += 1;
                self.sink_failures[i].errors += 1;
                if let Some(suppressed) = self.log.sink_tick[i].check() {
                    tracing::error!(sink = s.name(), suppressed, error = %e, "sink tick failed");
                }
            }
        }
        match drain_err {
            Some(e) => Err(anyhow::Error::new(e).context("draining the flow map")),
            None => Ok(()),
        }
    }

    /// Flushes and closes every sink, all at once (each has the whole shutdown grace, so the
    /// total is one grace, and a slow sink does not delay the others).
    pub fn close(&mut self) -> Result<()> {
        let results: Vec<(String, Result<(), String>, flowlens_sinks::SinkMetrics)> =
            std::thread::scope(|scope| {
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
                                flowlens_sinks::SinkMetrics::default(),
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
            // Records a sink accepted and then could not deliver (e.g. a file it could not finish).
            self.totals.records_lost_in_sinks += m.lost;
            self.totals.records_spooled += m.spooled;
            tracing::info!(
                sink = %name,
                sent = m.sent,
                acknowledged = m.acknowledged,
                retried = m.retried,
                rejected = m.rejected,
                queued = m.queued,
                lost = m.lost,
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

/// Every drain: anything the probe saw that will not be exported is logged with numbers (at
/// most once per interval while it repeats; the shutdown line and the metrics have the sums).
fn report_accounting(a: &Accounting, log: &mut LogLimits) {
    if (a.excess_packets > 0 || a.excess_bytes > 0)
        && let Some(suppressed) = log.excess.check()
    {
        tracing::error!(
            suppressed,
            keyed_packets = a.keyed_packets,
            drained_packets = a.drained_packets,
            excess_packets = a.excess_packets,
            excess_bytes = a.excess_bytes,
            "conservation: more drained than the probe keyed (double counting)"
        );
    }
    if (a.evicted_packets > 0 || a.map_error_packets > 0)
        && let Some(suppressed) = log.evicted.check()
    {
        tracing::warn!(
            suppressed,
            evicted_packets = a.evicted_packets,
            evicted_bytes = a.evicted_bytes,
            map_error_packets = a.map_error_packets,
            new_flows = a.new_flows,
            "kernel flow buffer overflowed between two drains: these packets are lost (raise --max-flows or lower --drain-interval / --early-drain-fill)"
        );
    }
}

/// At shutdown: the sum of every drain's accounting, in one line.
fn report_conservation(t: &Totals) {
    let a = &t.accounting;
    let (seen, non_ip, unparsed) = (a.seen_packets, a.non_ip_packets, a.unparsed_packets);
    // "keyed" here counts every parsed IP packet, refused inserts included, so that
    // `keyed = drained + lost` (lost = evicted + refused).
    let keyed = a.keyed_packets + a.map_error_packets;
    let (keyed_bytes, drained, drained_bytes) = (a.keyed_bytes, t.drained_packets, t.drained_bytes);
    let (lost, lost_bytes) = (a.lost_packets(), a.evicted_bytes);
    if a.excess_packets > 0 || a.excess_bytes > 0 {
        tracing::error!(
            seen_packets = seen,
            keyed_packets = keyed,
            drained_packets = drained,
            excess_packets = a.excess_packets,
            "conservation: more drained than the probe keyed (double counting)"
        );
    } else if lost > 0 || lost_bytes > 0 {
        tracing::warn!(
            seen_packets = seen,
            non_ip_packets = non_ip,
            unparsed_packets = unparsed,
            keyed_packets = keyed,
            drained_packets = drained,
            lost_packets = lost,
            lost_bytes,
            evicted_packets = a.evicted_packets,
            map_error_packets = a.map_error_packets,
            "conservation: packets counted by the probe never reached user space (LRU evictions or refused inserts)"
        );
    } else {
        tracing::info!(
            seen_packets = seen,
            non_ip_packets = non_ip,
            unparsed_packets = unparsed,
            keyed_packets = keyed,
            keyed_bytes,
            drained_packets = drained,
            drained_bytes,
            lost_packets = 0,
            "conservation: every keyed packet was drained"
        );
    }
}

/// One timer or early cycle, reported to the metrics endpoint (if any).
fn observed_cycle(
    pipe: &mut Pipeline,
    drainer: &mut dyn crate::drain::Drainer,
    observer: Option<&metrics::Observer>,
) -> Result<()> {
    let Some(o) = observer else {
        return pipe.cycle(drainer, false);
    };
    o.cycle_start();
    let t0 = std::time::Instant::now();
    let r = pipe.cycle(drainer, false);
    o.cycle_end(pipe, t0.elapsed());
    r
}

/// The metrics endpoint's view of this run: observation points in use and each sink's stall
/// window (Parquet sinks acknowledge at file completion, so theirs adds the rotate interval).
fn observer_for(
    cfg: &RunConfig,
    sinks: &[Box<dyn Sink>],
    xdp: bool,
    nf_hooks: &[netfilter::Hook],
) -> metrics::Observer {
    let mut points = Vec::new();
    if xdp {
        points.push(flowlens_schema::OBS_XDP);
    }
    for h in nf_hooks {
        points.push(flowlens_schema::OBS_NF_PRE_ROUTING + h.hooknum() as u8);
    }
    let infos = cfg
        .sinks
        .iter()
        .zip(sinks)
        .map(|(spec, s)| metrics::SinkInfo {
            name: s.name().to_string(),
            stall_window: match spec {
                SinkSpec::Parquet(_) | SinkSpec::ParquetS3(_) => {
                    cfg.sink_stall_timeout + cfg.parquet_rotate_interval
                }
                _ => cfg.sink_stall_timeout,
            },
        })
        .collect();
    metrics::Observer::new(
        points,
        cfg.max_flows,
        metrics::Observer::loop_stall(cfg.drain_interval),
        infos,
    )
}

/// Runs until SIGINT/SIGTERM or `cfg.duration`.
pub fn run(cfg: RunConfig) -> Result<Totals> {
    let host: Arc<str> = ifaces::hostname().into();
    // Validate everything that can fail before attaching anything.
    // XDP: the named interfaces; with neither --xdp nor --netfilter, the default set; with only
    // --netfilter, none.
    let ifaces_list = ifaces::xdp_targets(&cfg.xdp, !cfg.netfilter.is_empty())?;
    for i in &ifaces_list {
        ifaces::index_of(i).context("--xdp")?;
    }
    crate::privileges::check()?;
    // Metrics endpoint: bound first, so a taken port fails before anything is attached.
    let metrics_listener = cfg.metrics_listen.map(metrics::bind).transpose()?;
    let sinks = build_sinks(&cfg, &host)?;

    // Signal listeners exist before anything is attached: a SIGTERM that arrives while the
    // probe is loading stops flowlens cleanly right after (the default action would kill it
    // mid-start).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_rt = rt.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };

    let (nf_hooks, nf_offsets) = if cfg.netfilter.is_empty() {
        (Vec::new(), None)
    } else {
        match kernel_support::netfilter_offsets() {
            Ok(o) => (cfg.netfilter.clone(), Some(o)),
            Err(e) if e.is_unavailable() && !ifaces_list.is_empty() => {
                tracing::warn!(
                    error = %e,
                    hooks = ?cfg.netfilter.iter().map(|h| h.name()).collect::<Vec<_>>(),
                    "netfilter hooks unavailable on this kernel: continuing with XDP only"
                );
                (Vec::new(), None)
            }
            Err(e) => return Err(anyhow::Error::new(e).context("--netfilter")),
        }
    };

    // Served from here on (its own thread): /readyz fails until the probes are attached.
    let (observer, _metrics_server) = match metrics_listener {
        Some(l) => {
            let o = observer_for(&cfg, &sinks, !ifaces_list.is_empty(), &nf_hooks);
            let server = o.serve(l)?;
            (Some(o), Some(server))
        }
        None => (None, None),
    };

    let mut probe = Probe::load_opts(cfg.max_flows, nf_offsets, cfg.precise_timestamps)?;
    for i in &ifaces_list {
        probe.attach_xdp(i, cfg.xdp_mode)?;
    }
    for h in &nf_hooks {
        probe.attach_netfilter(*h, cfg.netfilter_priority)?;
    }
    let mut drainer = probe.take_drainer()?;
    if !nf_hooks.is_empty() {
        tracing::info!(
            hooks = ?nf_hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
            priority = cfg.netfilter_priority,
            link_ids = ?probe.netfilter_links().iter().map(|l| l.id).collect::<Vec<_>>(),
            "netfilter hooks attached (IPv4 and IPv6)"
        );
    }
    if let Some(o) = &observer {
        let mut what = Vec::new();
        if !ifaces_list.is_empty() {
            what.push(format!("xdp: {}", ifaces_list.join(",")));
        }
        if !nf_hooks.is_empty() {
            let names: Vec<&str> = nf_hooks.iter().map(|h| h.name()).collect();
            what.push(format!("netfilter: {}", names.join(",")));
        }
        o.attached(what.join("; "));
    }
    tracing::info!(interfaces = ?ifaces_list, mode = ?cfg.xdp_mode, sinks = ?cfg.sinks.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "flowlens running");

    let mut pipe = Pipeline::new(
        FlowTable::new(cfg.active_timeout, cfg.idle_timeout),
        Exporter::new(host),
        sinks,
    );

    let result: Result<()> = rt.block_on(async {
        let mut tick = tokio::time::interval(cfg.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_after = async {
            match cfg.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_after);
        let mut n: u64 = 0;
        // Early drains: the buffer's fill level is checked this often (a few syscalls).
        let mut fill_check = tokio::time::interval(FILL_CHECK_INTERVAL.min(cfg.drain_interval));
        fill_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let early_at = (cfg.max_flows as u64 * cfg.early_drain_fill as u64 / 100).max(1);
        loop {
            tokio::select! {
                biased;
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = &mut stop_after => { tracing::info!("duration reached: stopping"); break; }
                _ = tick.tick() => {
                    observed_cycle(&mut pipe, &mut drainer, observer.as_ref())?;
                    n += 1;
                    if n.is_multiple_of(60) {
                        pipe.exporter.names.clear();
                    }
                }
                _ = fill_check.tick(), if cfg.early_drain_fill > 0 || observer.is_some() => {
                    let fill = drainer.fill();
                    if let (Some(o), Some((inserted, _))) = (&observer, fill) {
                        o.fill(inserted);
                    }
                    if let Some((inserted, _)) = fill
                        && cfg.early_drain_fill > 0
                        && inserted >= early_at
                    {
                        tracing::debug!(inserted, early_at, "kernel flow buffer filling up: draining early");
                        pipe.totals.early_drains += 1;
                        observed_cycle(&mut pipe, &mut drainer, observer.as_ref())?;
                        tick.reset();
                    }
                }
            }
        }
        Ok(())
    });
    if let Some(o) = &observer {
        o.stopping();
    }
    // Stop observing first, then take the last counts. Dropping the probe closes the netfilter
    // link fds (unhooking them) and detaches XDP; the final drain swaps buffers twice, waiting
    // out runs still in flight after the detach, so nothing arrives after it.
    drop(probe);
    let last = pipe.cycle(&mut drainer, true);
    report_conservation(&pipe.totals);
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
        records_spooled = t.records_spooled,
        "flowlens stopped"
    );
    Ok(t)
}
