//! Cost of the metrics endpoint, side by side in one run: a pipeline cycle over 10k flows with
//! and without the observer's per-cycle snapshot (interleaved rounds, medians), the snapshot
//! alone, rendering `/metrics`, and a full scrape over loopback TCP.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use flowlens::{
    drain::{DrainError, DrainReport, Drainer},
    export::Exporter,
    flow_table::FlowTable,
    metrics::{self, Observer, SinkInfo},
    pipeline::Pipeline,
};
use flowlens_schema::{FlowKey, FlowValue, OBS_XDP, record::FlowRecord};
use flowlens_sinks::{Sink, SinkMetrics};

/// Hands the same deltas over at every drain (the flow table merges them into the same flows).
struct Replay(Vec<(FlowKey, FlowValue)>);

impl Drainer for Replay {
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError> {
        out.extend_from_slice(&self.0);
        Ok(DrainReport::default())
    }
}

/// A sink with counters and no I/O.
struct Null(String, u64);

impl Sink for Null {
    fn name(&self) -> &str {
        &self.0
    }
    fn write(&mut self, records: &[FlowRecord]) -> flowlens_sinks::Result<()> {
        self.1 += records.len() as u64;
        Ok(())
    }
    fn close(&mut self) -> flowlens_sinks::Result<()> {
        Ok(())
    }
    fn metrics(&self) -> SinkMetrics {
        SinkMetrics {
            sent: self.1,
            acknowledged: self.1,
            ..Default::default()
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(deltas: Vec<(FlowKey, FlowValue)>, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    const SINKS: usize = 4;
    const CYCLES: usize = 50;
    const ROUNDS: usize = 7;
    let now = deltas.first().map(|d| d.1.last_seen_ns).unwrap_or(0);
    let n = deltas.len();
    let sinks = || -> Vec<Box<dyn Sink>> {
        (0..SINKS)
            .map(|i| Box::new(Null(format!("null:{i}"), 0)) as Box<dyn Sink>)
            .collect()
    };
    let infos = (0..SINKS)
        .map(|i| SinkInfo {
            name: format!("null:{i}"),
            stall_window: Duration::from_secs(60),
        })
        .collect();
    let obs = Observer::new(vec![OBS_XDP], 131_072, Duration::from_secs(30), infos);
    obs.attached("bench".into());
    let mut drainer = Replay(deltas);
    // Flows stay open (timeouts far away): the cycle is drain + merge + expiry scan.
    let mut pipes = [false, true].map(|_| {
        Pipeline::new(
            FlowTable::new(Duration::from_secs(3600), Duration::from_secs(3600)),
            Exporter::new("bench-host"),
            sinks(),
        )
    });
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CYCLES {
            pipes[0].cycle_at(&mut drainer, false, now)?;
        }
        without.push(t.elapsed().as_secs_f64() / CYCLES as f64);
        let t = Instant::now();
        for _ in 0..CYCLES {
            obs.cycle_start();
            let c = Instant::now();
            pipes[1].cycle_at(&mut drainer, false, now)?;
            obs.cycle_end(&pipes[1], c.elapsed());
        }
        with.push(t.elapsed().as_secs_f64() / CYCLES as f64);
    }
    ensure!(pipes[1].table.len() == n, "flows stayed open");
    let (without, with) = (median(without), median(with));
    summary.insert(
        "metrics_cycle_10k_flows_us_without_observer".into(),
        without * 1e6,
    );
    summary.insert(
        "metrics_cycle_10k_flows_us_with_observer".into(),
        with * 1e6,
    );
    summary.insert(
        "metrics_cycle_ratio_with_over_without".into(),
        with / without,
    );

    // The snapshot alone, and rendering.
    let k = 100_000;
    let t = Instant::now();
    for _ in 0..k {
        obs.cycle_end(&pipes[1], Duration::from_micros(1));
    }
    summary.insert(
        "metrics_snapshot_ns_per_cycle_4_sinks".into(),
        t.elapsed().as_secs_f64() * 1e9 / k as f64,
    );
    let k = 2_000;
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..k {
        bytes += std::hint::black_box(obs.render_metrics()).len();
    }
    summary.insert(
        "metrics_render_us_4_sinks".into(),
        t.elapsed().as_secs_f64() * 1e6 / k as f64,
    );
    summary.insert("metrics_body_bytes_4_sinks".into(), (bytes / k) as f64);

    // A whole scrape over loopback TCP (connect, request, response, close).
    let server = obs.serve(metrics::bind("127.0.0.1:0".parse()?)?)?;
    let addr = server.local_addr();
    let k = 500;
    let t = Instant::now();
    for _ in 0..k {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        ensure!(resp.starts_with(b"HTTP/1.1 200 OK"), "scrape failed");
    }
    summary.insert(
        "metrics_scrape_us_loopback".into(),
        t.elapsed().as_secs_f64() * 1e6 / k as f64,
    );
    Ok(())
}
