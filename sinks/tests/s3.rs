//! The S3 Parquet sink against a real S3-compatible server: `moto` (PyPI, server mode) on an
//! ephemeral loopback port, objects read back by boto3 + pyarrow (`s3_check.py`), never by the
//! writer's own libraries. `cargo xtask setup` installs moto, boto3 and pyarrow.

use flowlens_testkit::unique_path;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use flowlens_schema::{
    flow::{FlowKey, IPPROTO_UDP, OBS_XDP},
    layout::partition_path,
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    s3::{S3Options, S3ParquetSink, S3Target},
};

const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_check.py");

use flowlens_testkit::moto::Moto;

/// Reads the bucket back with boto3 + pyarrow (`s3_check.py`).
trait Check {
    fn check(&self, args: &[&str]) -> String;
}

impl Check for Moto {
    fn check(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(CHECK)
            .arg(args[0])
            .arg(&self.endpoint)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s3_check.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn options(endpoint: &str, bucket: &str, prefix: &str, spool: PathBuf) -> S3Options {
    let mut o = S3Options::new(
        S3Target {
            bucket: bucket.into(),
            prefix: prefix.into(),
        },
        spool,
        "testhost".into(),
    );
    o.store_options = vec![
        ("endpoint".into(), endpoint.into()),
        ("allow_http".into(), "true".into()),
        ("access_key_id".into(), "testing".into()),
        ("secret_access_key".into(), "testing".into()),
        ("region".into(), "us-east-1".into()),
    ];
    o.initial_backoff = Duration::from_millis(20);
    o.close_timeout = Duration::from_secs(60);
    o
}

const HOUR0: i64 = 1_790_000_000_000_000 - 1_790_000_000_000_000 % 3_600_000_000;

fn record(i: u32) -> FlowRecord {
    let mut key = FlowKey::ZERO;
    key.ip_version = 4;
    key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 1, (i >> 8) as u8, i as u8]);
    key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 2, 0, 1]);
    key.protocol = IPPROTO_UDP;
    key.src_port = 1000 + i as u16;
    key.dst_port = 53;
    key.observation_point = OBS_XDP;
    // Three hours of flow ends: three partitions.
    let end = HOUR0 + (i as i64 % 3) * 3_600_000_000 + i as i64;
    FlowRecord {
        flow_start_us: end - 5_000,
        flow_end_us: end,
        key,
        interface_name: "eth0".into(),
        packets: 2,
        bytes: 100 + i as u64,
        tcp_flags: 0,
        dscp: 0,
        end_reason: EndReason::IdleTimeout,
        host: "testhost".into(),
        community_id: format!("1:r{i}"),
        ends: Default::default(),
    }
}

struct Object {
    rows: u64,
    min_end: i64,
    max_end: i64,
    bytes: u64,
    cids: Vec<String>,
}

fn read_back(m: &Moto, bucket: &str, prefix: &str) -> BTreeMap<String, Object> {
    m.check(&["read", bucket, prefix])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_string(),
                Object {
                    rows: f[1].parse().unwrap(),
                    min_end: f[2].parse().unwrap(),
                    max_end: f[3].parse().unwrap(),
                    bytes: f[4].parse().unwrap(),
                    cids: f[5].split(',').map(String::from).collect(),
                },
            )
        })
        .collect()
}

/// Every key is `PREFIX/date=…/hour=…/flows-testhost-<ms>-<pid>-<seq>.parquet`, matching the
/// rows' partition, and nothing hidden or in progress is visible.
fn check_layout(objs: &BTreeMap<String, Object>, prefix: &str) {
    for (key, o) in objs {
        assert!(!key.contains(".inprogress"), "{key}");
        let rest = key.strip_prefix(&format!("{prefix}/")).expect(key);
        let parts: Vec<&str> = rest.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(
            format!("{}/{}", parts[0], parts[1]),
            partition_path(o.min_end),
            "{key}"
        );
        assert_eq!(
            partition_path(o.min_end),
            partition_path(o.max_end),
            "{key}"
        );
        let name = parts[2];
        assert!(
            name.starts_with("flows-testhost-") && name.ends_with(".parquet"),
            "{key}"
        );
        let fields: Vec<&str> = name
            .trim_start_matches("flows-testhost-")
            .trim_end_matches(".parquet")
            .split('-')
            .collect();
        assert_eq!(fields.len(), 3, "{key}");
        assert!(fields.iter().all(|f| f.parse::<u64>().is_ok()), "{key}");
    }
}

fn spooled_parquet(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    out
}

fn write_and_check(m: &Moto, bucket: &str, prefix: &str, multipart: bool) {
    let dir = unique_path(&format!("s3-{}", prefix.replace('/', "_")));
    let mut o = options(&m.endpoint, bucket, prefix, dir.clone());
    if multipart {
        // Every file goes through CreateMultipartUpload/UploadPart/Complete.
        o.multipart_threshold = 0;
        o.part_size = 5 * 1024 * 1024;
    }
    let mut sink = S3ParquetSink::new(o).unwrap();
    let recs: Vec<FlowRecord> = (0..3000).map(record).collect();
    sink.write(&recs[..1500]).unwrap();
    // Mid-run: files are still open; nothing (and certainly nothing partial) is visible.
    let mid = read_back(m, bucket, prefix);
    check_layout(&mid, prefix);
    assert!(
        mid.is_empty(),
        "objects before any file completed: {:?}",
        mid.keys()
    );
    sink.write(&recs[1500..]).unwrap();
    sink.close().unwrap();
    let met = sink.metrics();
    assert_eq!(
        (
            met.sent,
            met.acknowledged,
            met.queued,
            met.lost,
            met.retried
        ),
        (3000, 3000, 0, 0, 0)
    );
    let objs = read_back(m, bucket, prefix);
    check_layout(&objs, prefix);
    assert_eq!(objs.len(), 3, "one file per hour: {:?}", objs.keys());
    let rows: u64 = objs.values().map(|o| o.rows).sum();
    assert_eq!(rows, 3000);
    let bytes: u64 = objs.values().map(|o| o.bytes).sum();
    assert_eq!(bytes, recs.iter().map(|r| r.bytes).sum::<u64>());
    let cids: BTreeSet<String> = objs.values().flat_map(|o| o.cids.clone()).collect();
    assert_eq!(cids, recs.iter().map(|r| r.community_id.clone()).collect());
    assert!(
        spooled_parquet(&dir).is_empty(),
        "uploaded files are removed from the spool"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parquet_objects_appear_complete_with_hive_keys() {
    let m = Moto::start();
    m.check(&["mkbucket", "flows"]);
    write_and_check(&m, "flows", "put/x", false);
    write_and_check(&m, "flows", "multipart", true);
}

#[test]
fn failed_uploads_are_counted_and_kept_for_the_next_start() {
    let m = Moto::start();
    m.check(&["mkbucket", "later"]);
    let dir = unique_path("s3-fail");
    // Nobody listens on this port: every upload fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = options(&format!("http://{dead}"), "later", "p", dir.clone());
    o.upload_attempts = 2;
    let mut sink = S3ParquetSink::new(o).unwrap();
    let recs: Vec<FlowRecord> = (0..300).map(record).collect();
    sink.write(&recs).unwrap();
    let err = sink.close().unwrap_err().to_string();
    assert!(err.contains("300 rows not uploaded"), "{err}");
    let met = sink.metrics();
    assert_eq!((met.sent, met.acknowledged, met.lost), (300, 0, 300));
    assert_eq!(met.retried, 300, "one retry per file");
    assert_eq!(
        spooled_parquet(&dir).len(),
        3,
        "failed files stay in the spool"
    );
    drop(sink);

    // Next start with a working endpoint uploads the leftovers.
    let mut sink = S3ParquetSink::new(options(&m.endpoint, "later", "p", dir.clone())).unwrap();
    sink.close().unwrap();
    assert_eq!(sink.metrics().acknowledged, 300);
    let objs = read_back(&m, "later", "p");
    check_layout(&objs, "p");
    assert_eq!(objs.values().map(|o| o.rows).sum::<u64>(), 300);
    assert!(spooled_parquet(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
