//! End to end: the real `flowlens run` binary with XDP on a veth in a network namespace, real
//! traffic, and three sinks at once: `--sink otlp:…` to an in-test OTLP/gRPC server,
//! `--sink parquet:DIR`, and `--sink parquet:s3://…` to a moto S3 server configured through the
//! AWS_* environment variables. All must receive the same records. Needs root (CI runs as root)
//! and moto/boto3/pyarrow (`cargo xtask setup`).

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use arrow_array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
use flowlens_testkit::{Netns, otlp::LogsReceiver, udp_exchange, unique_path, veth_pair};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{KeyValue, any_value::Value},
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

/// One record as both sinks can express it: community id, start/end (µs), packets, bytes,
/// source, destination.
type Row = (String, i64, i64, i64, i64, String, String);

fn attr<'a>(a: &'a [KeyValue], k: &str) -> &'a Value {
    a.iter()
        .find(|x| x.key == k)
        .and_then(|x| x.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("attribute {k} missing"))
}

fn s(v: &Value) -> String {
    match v {
        Value::StringValue(s) => s.clone(),
        o => panic!("not a string: {o:?}"),
    }
}

fn i(v: &Value) -> i64 {
    match v {
        Value::IntValue(i) => *i,
        o => panic!("not an int: {o:?}"),
    }
}

fn otlp_rows(reqs: &[ExportLogsServiceRequest]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in reqs {
        for rl in &r.resource_logs {
            for sl in &rl.scope_logs {
                for l in &sl.log_records {
                    let a = &l.attributes;
                    out.push((
                        s(attr(a, "flow.community_id")),
                        i(attr(a, "flow.start_time_unix_nano")) / 1000,
                        (l.time_unix_nano / 1000) as i64,
                        i(attr(a, "flow.packets")),
                        i(attr(a, "flow.bytes")),
                        s(attr(a, "source.address")),
                        s(attr(a, "destination.address")),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

fn parquet_rows(dir: &std::path::Path) -> Vec<Row> {
    let mut out = Vec::new();
    for f in flowlens::top::parquet_files(dir).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let st = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let i64c = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let ts = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .unwrap()
                    .clone()
            };
            let (cid, src, dst) = (
                st("community_id"),
                st("source_address"),
                st("destination_address"),
            );
            let (start, end, pk, by) = (
                ts("flow_start"),
                ts("flow_end"),
                i64c("packets"),
                i64c("bytes"),
            );
            for r in 0..b.num_rows() {
                out.push((
                    cid.value(r).to_string(),
                    start.value(r),
                    end.value(r),
                    pk.value(r),
                    by.value(r),
                    src.value(r).to_string(),
                    dst.value(r).to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

const S3_CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sinks/tests/s3_check.py");

/// A process started in a namespace, killed (by its pid) on drop.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn otlp_parquet_and_s3_sinks_get_the_same_records() {
    let a = Netns::new("otlpa").unwrap();
    let b = Netns::new("otlpb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let out: PathBuf = unique_path("otlp-e2e");

    // The receiver listens on B's loopback (flowlens runs in B): bind inside the namespace.
    let listener = b
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let recv = LogsReceiver::default();
    let _otlp = recv.serve(listener).unwrap();

    // moto (S3) on B's loopback too, on a port that was free there a moment ago.
    let s3_port = b
        .run_in(|| {
            std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port())
        })
        .unwrap()
        .unwrap();
    let _moto = Killed(
        b.command("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &s3_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (run `cargo xtask setup`)"),
    );
    let s3_endpoint = format!("http://127.0.0.1:{s3_port}");
    let s3_check = |args: &[&str]| -> String {
        let t0 = Instant::now();
        loop {
            let o = b
                .command("python3")
                .arg(S3_CHECK)
                .arg(args[0])
                .arg(&s3_endpoint)
                .args(&args[1..])
                .output()
                .unwrap();
            if o.status.success() {
                return String::from_utf8(o.stdout).unwrap();
            }
            // moto may still be starting.
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "s3_check {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    s3_check(&["mkbucket", "e2e"]);
    let spool = out.with_extension("spool");

    let child = b
        .command(FLOWLENS)
        .args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb"])
        .args(["--drain-interval", "200ms", "--idle-timeout", "500ms"])
        .arg("--sink")
        .arg(format!("otlp:http://{addr}"))
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        .args(["--otlp-batch-records", "3"])
        .args(["--sink", "parquet:s3://e2e/flows/run1"])
        .arg("--parquet-spool-dir")
        .arg(&spool)
        .arg("--spool-dir")
        .arg(out.with_extension("sinkspool"))
        .env("AWS_ENDPOINT_URL", &s3_endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    b.wait_xdp(&link.b_if, true).unwrap();

    let (src, dst) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    for round in 0..2u16 {
        for f in 0..5u16 {
            let n = udp_exchange(
                &a,
                &b,
                SocketAddr::new(src, 31000 + f),
                SocketAddr::new(dst, 9300 + round),
                10,
                64,
            )
            .unwrap();
            assert_eq!(n, 10);
        }
        // Flows end (idle) and are exported while flowlens runs, not only at shutdown.
        std::thread::sleep(Duration::from_millis(1200));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprint!("{stderr}");
    assert!(o.status.success(), "flowlens exited with {}", o.status);
    let otlp_line = stderr
        .lines()
        .find(|l| l.contains("sink closed") && l.contains("otlp:"))
        .expect("otlp sink metrics line");
    assert!(
        otlp_line.contains("lost=0") && otlp_line.contains("rejected=0"),
        "{otlp_line}"
    );

    let from_otlp = otlp_rows(&recv.0.lock().unwrap());
    let from_parquet = parquet_rows(&out);
    assert_eq!(
        from_otlp, from_parquet,
        "the two sinks got different records"
    );
    // Our ten UDP flows are among them, with exact counts.
    let ours: BTreeMap<(String, String), (i64, i64)> = from_otlp
        .iter()
        .filter(|r| r.5 == src.to_string() && r.6 == dst.to_string())
        .fold(BTreeMap::new(), |mut m, r| {
            let e = m.entry((r.5.clone(), r.0.clone())).or_insert((0, 0));
            e.0 += r.3;
            e.1 += r.4;
            m
        });
    assert_eq!(ours.len(), 10, "ten UDP flows from A to B: {ours:?}");
    for (k, (pk, by)) in &ours {
        assert_eq!((*pk, *by), (10, 10 * (20 + 8 + 64)), "{k:?}");
    }
    let line = stderr
        .lines()
        .find(|l| l.contains("sink closed") && l.contains("otlp:"))
        .unwrap();
    assert!(
        line.contains(&format!("acknowledged={}", from_otlp.len())),
        "{line}"
    );

    // S3: same records (community ids, bytes) as the local Parquet files, under Hive keys.
    let s3_line = stderr
        .lines()
        .find(|l| l.contains("sink closed") && l.contains("s3://"))
        .expect("s3 sink metrics line");
    assert!(
        s3_line.contains(&format!("acknowledged={}", from_parquet.len()))
            && s3_line.contains("lost=0"),
        "{s3_line}"
    );
    let mut s3_cids = Vec::new();
    let mut s3_bytes = 0i64;
    let listing = s3_check(&["read", "e2e", "flows/run1"]);
    assert!(!listing.is_empty(), "no objects under s3://e2e/flows/run1");
    for l in listing.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(
            f[0].starts_with("flows/run1/date=")
                && f[0].contains("/hour=")
                && f[0].ends_with(".parquet")
                && !f[0].contains("inprogress"),
            "{}",
            f[0]
        );
        s3_bytes += f[4].parse::<i64>().unwrap();
        s3_cids.extend(f[5].split(',').map(String::from));
    }
    s3_cids.sort();
    let mut pq_cids: Vec<String> = from_parquet.iter().map(|r| r.0.clone()).collect();
    pq_cids.sort();
    assert_eq!(
        s3_cids, pq_cids,
        "S3 objects and local files hold different records"
    );
    assert_eq!(s3_bytes, from_parquet.iter().map(|r| r.4).sum::<i64>());
    std::fs::remove_dir_all(&out).unwrap();
    // Uploaded files are removed from the spool; only empty partition directories remain.
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .collect();
    assert!(left.is_empty(), "files left in the spool: {left:?}");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::remove_dir_all(out.with_extension("sinkspool")).ok();
}
