//! `flowlens report` scan speed over >= 10 million rows.
//!
//! The dataset (one day, 10.08 M rows, written through the real Parquet sink) is generated once
//! into `target/bench/report-10m/` and reused while its marker file says it is complete.
//! Measured side by side in one run:
//! * `report_rows_per_sec`: the full report (`flowlens_report::build`, 2 threads) over the day;
//! * `report_rows_per_sec_1_thread`: the same with one thread;
//! * `report_1h_seconds` vs `report_day_seconds`: one hour of the day (partition pruning);
//! * `decode_projected_rows_per_sec` vs `decode_all_columns_rows_per_sec`: only the parquet
//!   decoding (one thread, no aggregation) of the 12 report columns vs all 23 columns;
//! * `report_compacted_rows_per_sec`: the day after a DuckDB compaction (snappy, one file per
//!   hour), and `report_s3_rows_per_sec`: three hours of it on S3 (moto on loopback), each
//!   with the range of 3 runs (`_min`, `_max`) (issue 16).

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use flowlens_report::{self as report, ReportArgs};
use flowlens_schema::{
    flow::{FlowKey, OBS_NF_LOCAL_OUT, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    parquet::{ParquetOptions, ParquetSink},
};
use parquet::arrow::{ProjectionMask, arrow_reader::ParquetRecordBatchReaderBuilder};

/// 2026-11-20T00:00:00Z
const DAY0: i64 = 20_777 * 86_400_000_000;
const ROWS: u64 = 10_080_000;
const MARKER: &str = ".complete-v2";

fn dataset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/report-10m")
}

/// Writes ROWS records spread over one day, in time order, through the Parquet sink.
fn generate(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: dir.to_path_buf(),
        rotate_bytes: 128 << 20,
        rotate_interval: Duration::from_secs(86_400),
        host: Arc::from("bench"),
        journal: None,
    })?;
    let mut x: u64 = 7;
    let mut rnd = move |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    let ifaces: [(&str, u32); 4] = [("eth0", 2), ("eth1", 3), ("eth2", 4), ("bond0", 5)];
    let names: Vec<Arc<str>> = ifaces.iter().map(|(n, _)| Arc::from(*n)).collect();
    let host: Arc<str> = Arc::from("bench");
    let step = 86_400_000_000 / ROWS as i64;
    let t = Instant::now();
    let mut chunk = Vec::with_capacity(50_000);
    let mut hour = 0;
    for i in 0..ROWS {
        let end = DAY0 + i as i64 * step;
        let h = (end - DAY0) / 3_600_000_000;
        if h != hour {
            // Close the finished hour's file.
            sink.write(&chunk)?;
            chunk.clear();
            sink.close()?;
            hour = h;
            eprintln!(
                "bench: generating the report dataset: hour {h}/24, {:.0} s",
                t.elapsed().as_secs_f64()
            );
        }
        let dur = rnd(60_000_000) as i64;
        let mut k = FlowKey::ZERO;
        k.ip_version = 4;
        // 20,000 sources, each talking to about 10 of 3,000 destinations (~200k conversations).
        let s = rnd(20_000) as u32;
        let d = (s.wrapping_mul(2_654_435_761) >> 8).wrapping_add(rnd(10) as u32 * 977) % 3_000;
        k.src_addr[10..].copy_from_slice(&[
            0xff,
            0xff,
            10,
            (s >> 16) as u8 + 1,
            (s >> 8) as u8,
            s as u8,
        ]);
        k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 172, 16, (d >> 8) as u8, d as u8]);
        k.protocol = if rnd(4) == 0 { 17 } else { 6 };
        k.src_port = 1024 + rnd(60_000) as u16;
        k.dst_port = [443, 80, 53, 22, 8443, 5432][rnd(6) as usize];
        k.observation_point = if rnd(10) == 0 {
            OBS_NF_LOCAL_OUT
        } else {
            OBS_XDP
        };
        let ifi = rnd(4) as usize;
        k.ifindex = ifaces[ifi].1;
        let packets = 1 + rnd(2_000);
        chunk.push(FlowRecord {
            flow_start_us: end - dur,
            flow_end_us: end,
            key: k,
            interface_name: names[ifi].clone(),
            packets,
            bytes: packets * (64 + rnd(1_400)),
            tcp_flags: 0x18,
            dscp: 0,
            end_reason: EndReason::ActiveTimeout,
            host: host.clone(),
            community_id: String::new(),
            ends: Default::default(),
        });
        if chunk.len() == chunk.capacity() {
            sink.write(&chunk)?;
            chunk.clear();
        }
    }
    sink.write(&chunk)?;
    sink.close()?;
    anyhow::ensure!(sink.metrics().lost == 0, "rows lost while generating");
    std::fs::write(dir.join(MARKER), ROWS.to_string())?;
    Ok(())
}

fn build(dir: &Path, extra: &[&str], threads: usize) -> Result<(f64, u64)> {
    build_input(dir.to_str().context("utf-8 path")?, extra, threads)
}

fn build_input(input: &str, extra: &[&str], threads: usize) -> Result<(f64, u64)> {
    let mut args = vec!["x", "--input", input, "-q"];
    args.extend_from_slice(extra);
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        a: ReportArgs,
    }
    let p = <P as clap::Parser>::try_parse_from(&args)?;
    let mut opts = p.a.resolve(report::now_us())?;
    opts.threads = threads;
    let t = Instant::now();
    let r = report::build(&opts)?;
    Ok((t.elapsed().as_secs_f64(), r.scan.rows_read))
}

fn decode(dir: &Path, projected: bool) -> Result<f64> {
    let files = flowlens_report::top::parquet_files(dir)?;
    let t = Instant::now();
    let mut rows = 0u64;
    for f in files {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&f)?)?;
        let b = if projected {
            let m = ProjectionMask::columns(
                b.parquet_schema(),
                report::compute::COLUMNS.iter().copied(),
            );
            b.with_projection(m)
        } else {
            b
        };
        for batch in b.with_batch_size(8192).build()? {
            rows += batch?.num_rows() as u64;
        }
    }
    Ok(rows as f64 / t.elapsed().as_secs_f64())
}

/// The day rewritten the way users compact a lake (issue 16): DuckDB's defaults (snappy),
/// `PARTITION_BY (date, hour)`, DuckDB's file names. Made once, like the dataset.
fn compacted(src: &Path) -> Result<PathBuf> {
    let out = dataset_dir().with_file_name("report-10m-duckdb");
    let marker = out.join(MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == ROWS.to_string()) {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(&out);
    let script = format!(
        "import duckdb\ncon = duckdb.connect()\ncon.execute(\"SET TimeZone='UTC'\")\n\
         con.execute(\"COPY (SELECT *, strftime(flow_end, '%Y-%m-%d') AS date, strftime(flow_end, '%H') AS hour \
         FROM read_parquet('{}/**/*.parquet', hive_partitioning = false)) TO '{}' \
         (FORMAT parquet, PARTITION_BY (date, hour))\")\n",
        src.display(),
        out.display()
    );
    let st = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .context("python3 with duckdb (cargo xtask setup)")?;
    anyhow::ensure!(st.success(), "DuckDB compaction failed");
    std::fs::write(&marker, ROWS.to_string())?;
    Ok(out)
}

/// A moto S3 server on a loopback port, killed on drop.
struct Moto(std::process::Child, String);

impl Moto {
    fn start() -> Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("python3 -m moto.server (cargo xtask setup)")?;
        let m = Moto(child, format!("http://127.0.0.1:{port}"));
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(m)
    }

    /// Uploads the files under `dir` whose path contains one of `parts` to s3://bench/flows/.
    fn upload(&self, dir: &Path, parts: &[&str]) -> Result<()> {
        let script = format!(
            "import boto3, os\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='x', aws_secret_access_key='x', region_name='us-east-1')\n\
             s3.create_bucket(Bucket='bench')\n\
             for root, _, files in os.walk('{}'):\n\
             \x20   for f in files:\n\
             \x20       p = os.path.join(root, f)\n\
             \x20       if f.endswith('.parquet') and any(x in p for x in {:?}):\n\
             \x20           s3.upload_file(p, 'bench', 'flows/' + os.path.relpath(p, '{}'))\n",
            self.1,
            dir.display(),
            parts,
            dir.display()
        );
        let st = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()?;
        anyhow::ensure!(st.success(), "upload to moto failed");
        Ok(())
    }

    fn options(&self) -> Vec<String> {
        [
            format!("endpoint={}", self.1),
            "allow_http=true".into(),
            "access_key_id=x".into(),
            "secret_access_key=x".into(),
            "region=us-east-1".into(),
        ]
        .into_iter()
        .flat_map(|o| ["--s3-option".to_string(), o])
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `flowlens report` over the DuckDB-compacted day and over three hours on S3 (moto on
/// loopback): rows/s, median and range of 3 runs, 2 threads.
fn lake_figures(dir: &Path, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let mut put = |name: &str, rows: u64, mut secs: Vec<f64>| {
        secs.sort_by(|a, b| a.total_cmp(b));
        let r = |s: f64| rows as f64 / s;
        summary.insert(format!("{name}_rows_per_sec"), r(secs[secs.len() / 2]));
        summary.insert(format!("{name}_rows_per_sec_min"), r(secs[secs.len() - 1]));
        summary.insert(format!("{name}_rows_per_sec_max"), r(secs[0]));
        summary.insert(format!("{name}_rows"), rows as f64);
    };
    let c = compacted(dir)?;
    build(&c, &[], 2)?; // warm the page cache
    let mut secs = Vec::new();
    let mut rows = 0;
    for _ in 0..3 {
        let (s, r) = build(&c, &[], 2)?;
        secs.push(s);
        rows = r;
    }
    anyhow::ensure!(rows >= 10_000_000, "compacted: only {rows} rows scanned");
    put("report_compacted", rows, secs);

    let moto = Moto::start()?;
    moto.upload(dir, &["hour=00/", "hour=01/", "hour=02/"])?;
    let opts = moto.options();
    let mut args: Vec<&str> = vec![
        "--from",
        "2026-11-20T00:00:00Z",
        "--to",
        "2026-11-20T03:00:00Z",
    ];
    args.extend(opts.iter().map(String::as_str));
    let mut secs = Vec::new();
    let mut rows = 0;
    for _ in 0..3 {
        let (s, r) = build_input("s3://bench/flows", &args, 2)?;
        secs.push(s);
        rows = r;
    }
    anyhow::ensure!(rows >= 1_000_000, "s3: only {rows} rows scanned");
    put("report_s3", rows, secs);
    Ok(())
}

pub fn run(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let dir = dataset_dir();
    let ok = std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|s| s.trim() == ROWS.to_string());
    if !ok {
        generate(&dir)?;
    }
    let bytes: u64 = flowlens_report::top::parquet_files(&dir)?
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    // Warm the page cache once so every measurement reads from memory alike.
    build(&dir, &["--top", "10"], 2)?;
    let mut day = Vec::new();
    let mut day1 = Vec::new();
    let mut hour = Vec::new();
    let mut proj = Vec::new();
    let mut all = Vec::new();
    let mut rows = 0;
    for _ in 0..3 {
        let (s, r) = build(&dir, &[], 2)?;
        rows = r;
        day.push(s);
        day1.push(build(&dir, &[], 1)?.0);
        hour.push(
            build(
                &dir,
                &[
                    "--from",
                    "2026-11-20T12:00:00Z",
                    "--to",
                    "2026-11-20T13:00:00Z",
                ],
                2,
            )?
            .0,
        );
        proj.push(decode(&dir, true)?);
        all.push(decode(&dir, false)?);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (d, d1, h) = (med(&mut day), med(&mut day1), med(&mut hour));
    anyhow::ensure!(rows >= 10_000_000, "only {rows} rows scanned");
    summary.insert("report_rows".into(), rows as f64);
    summary.insert("report_dataset_mib".into(), bytes as f64 / (1 << 20) as f64);
    summary.insert("report_day_seconds".into(), d);
    summary.insert("report_rows_per_sec".into(), rows as f64 / d);
    summary.insert("report_rows_per_sec_1_thread".into(), rows as f64 / d1);
    summary.insert("report_1h_seconds".into(), h);
    summary.insert("decode_projected_rows_per_sec".into(), med(&mut proj));
    summary.insert("decode_all_columns_rows_per_sec".into(), med(&mut all));
    lake_figures(&dir, summary)?;
    Ok(())
}
