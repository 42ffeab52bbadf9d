//! `flowlens report` over whatever a lake became (issue 16): a lake written by the real Parquet
//! sink is rewritten by DuckDB and pyarrow (`report_lake.py`: their defaults, every codec,
//! widened/signed integers, other timestamp units and time zones, dictionary and large strings,
//! reordered and extra columns, other file names, no partitioning, no `host` column) and the
//! JSON report of every rewrite must equal the original's, number for number. The same lake on
//! S3 (moto on loopback) and split over several `--input`s gives the same report too. Bad rows
//! are counted, bad files give one error line.
//!
//! Needs python3 with duckdb, pyarrow, boto3 and moto (`cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use flowlens_schema::{
    flow::{FlowKey, OBS_NF_LOCAL_OUT, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    parquet::{ParquetOptions, ParquetSink},
};
use flowlens_testkit::temp_dir;
use serde_json::Value;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/report_lake.py");
/// 2026-11-20T00:00:00Z
const DAY0: i64 = 20_777 * 86_400_000_000;
const MIN: i64 = 60_000_000;

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Records of one host over 5 hours: two interfaces, two observation points, IPv4 and IPv6,
/// flows crossing bucket and hour boundaries.
fn records(host: &str, seed: u64, n: usize) -> Vec<FlowRecord> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|i| {
            let start = DAY0 + r.below(5 * 3600 * 1000) as i64 * 1000;
            let end = start + r.below(4) as i64 * r.below(200_000_000) as i64;
            let mut key = FlowKey::ZERO;
            let v6 = r.below(5) == 0;
            key.ip_version = if v6 { 6 } else { 4 };
            if v6 {
                key.src_addr = [
                    0x20,
                    1,
                    0xd,
                    0xb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    1 + r.below(9) as u8,
                ];
                key.dst_addr = [
                    0x20,
                    1,
                    0xd,
                    0xb8,
                    0,
                    1,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    1 + r.below(9) as u8,
                ];
            } else {
                key.src_addr[10..].copy_from_slice(&[
                    0xff,
                    0xff,
                    10,
                    1,
                    r.below(4) as u8,
                    1 + r.below(40) as u8,
                ]);
                key.dst_addr[10..].copy_from_slice(&[
                    0xff,
                    0xff,
                    192,
                    168,
                    0,
                    1 + r.below(20) as u8,
                ]);
            }
            key.protocol = if r.below(3) == 0 { 17 } else { 6 };
            key.src_port = 20_000 + (i % 30_000) as u16;
            key.dst_port = [443u16, 80, 53, 65535][r.below(4) as usize];
            key.observation_point = if r.below(4) == 0 {
                OBS_NF_LOCAL_OUT
            } else {
                OBS_XDP
            };
            key.ifindex = 2 + r.below(2) as u32;
            let packets = 1 + r.below(500);
            FlowRecord {
                flow_start_us: start,
                flow_end_us: end,
                interface_name: if key.ifindex == 2 { "eth0" } else { "eth1" }.into(),
                key,
                packets,
                bytes: packets * (60 + r.below(1400)),
                tcp_flags: 0,
                dscp: 0,
                end_reason: EndReason::IdleTimeout,
                host: host.into(),
                community_id: String::new(),
                ends: Default::default(),
            }
        })
        .collect()
}

/// Writes `recs` through the real sink, a file per 40 minutes of records (closing the sink).
fn write_lake(dir: &Path, host: &str, mut recs: Vec<FlowRecord>) {
    recs.sort_by_key(|r| r.flow_end_us);
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: dir.to_path_buf(),
        rotate_bytes: u64::MAX,
        rotate_interval: Duration::from_secs(3600),
        host: Arc::from(host),
        journal: None,
    })
    .unwrap();
    for chunk in recs.chunk_by(|a, b| a.flow_end_us / (40 * MIN) == b.flow_end_us / (40 * MIN)) {
        sink.write(chunk).unwrap();
        sink.close().unwrap();
    }
    assert_eq!(sink.metrics().lost, 0);
}

fn python(args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "report_lake.py {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `flowlens report ARGS --json OUT -q`; (exit ok, the JSON if any, stderr).
fn report(args: &[&str], envs: &[(&str, &str)]) -> (bool, Option<Value>, String) {
    let out = flowlens_testkit::unique_path("report-lake-json");
    let o = Command::new(FLOWLENS)
        .arg("report")
        .args(args)
        .args(["--json", out.to_str().unwrap(), "-q"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&out)
        .ok()
        .map(|s| serde_json::from_str(&s).unwrap());
    let _ = std::fs::remove_file(&out);
    (
        o.status.success(),
        json,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok_report(args: &[&str], envs: &[(&str, &str)]) -> Value {
    let (ok, json, stderr) = report(args, envs);
    assert!(ok, "flowlens report {args:?} failed: {stderr}");
    json.unwrap()
}

/// The report without what legitimately differs between two copies of a lake: where it was
/// read from and how many files/row groups it had.
fn content(mut v: Value) -> Value {
    let m = v.as_object_mut().unwrap();
    m.remove("input");
    let scan = m.remove("scan").unwrap();
    for k in ["rows_selected", "rows_rejected", "rows_clamped"] {
        m.insert(format!("scan.{k}"), scan[k].clone());
    }
    v
}

/// The range arguments shared by every run: a given range (so the previous period is
/// computed too) and a 1-minute bucket.
const RANGE: &[&str] = &[
    "--from",
    "2026-11-20T01:00:00Z",
    "--to",
    "2026-11-20T05:00:00Z",
    "--bucket",
    "1m",
    "--top",
    "15",
    "--link-capacity",
    "eth0=1Mbit",
];

fn with_input<'a>(input: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--input", input];
    a.extend_from_slice(RANGE);
    a.extend_from_slice(extra);
    a
}

/// Two hosts' lake; returns (root, lake dir, host a's dir, host b's dir).
fn make_lake(tag: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let root = temp_dir(tag).unwrap();
    let (a, b) = (root.join("host-a"), root.join("host-b"));
    let lake = root.join("lake");
    for (dir, host, seed) in [(&a, "host-a", 7), (&b, "host-b", 11)] {
        write_lake(dir, host, records(host, seed, 3000));
        write_lake(&lake, host, records(host, seed, 3000));
    }
    (root, lake, a, b)
}

#[test]
fn rewritten_lakes_give_identical_reports() {
    let (root, lake, _, _) = make_lake("report-lake-rewrite");
    let original = ok_report(&with_input(lake.to_str().unwrap(), &[]), &[]);
    assert!(original["totals"]["records"].as_u64().unwrap() > 3000);
    let hosts = original["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let orig_threads1 = ok_report(
        &with_input(lake.to_str().unwrap(), &["--threads", "1"]),
        &[],
    );
    assert_eq!(orig_threads1, original, "thread count changes nothing");
    let want = content(original.clone());

    let rewrites = root.join("rewrites");
    python(&[
        "rewrite",
        lake.to_str().unwrap(),
        rewrites.to_str().unwrap(),
    ]);
    let variants = [
        "duckdb_default",
        "duckdb_signed",
        "duckdb_lz4",
        "duckdb_brotli",
        "duckdb_zstd",
        "duckdb_uncompressed",
        "duckdb_snappy",
        "pyarrow_default",
        "pyarrow_signed_no_host",
    ];
    for v in variants {
        let dir = rewrites.join(v);
        let got = content(ok_report(&with_input(dir.to_str().unwrap(), &[]), &[]));
        if v == "pyarrow_signed_no_host" {
            // No host column: the files read as host null; everything else is the same.
            let mut got = got;
            let mut want = want.clone();
            let h = got.as_object_mut().unwrap().remove("hosts").unwrap();
            want.as_object_mut().unwrap().remove("hosts");
            assert_eq!(h[0]["host"], Value::Null, "{h}");
            assert_eq!(h[0]["records"], original["totals"]["records"], "{h}");
            assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
            assert!(got == want, "{v}: report differs from the original's");
        } else {
            assert!(got == want, "{v}: report differs from the original's");
        }
    }
    // `flowlens top` reads the rewrites too (widened integers), with the same biggest flows.
    let top = |dir: &Path| {
        let o = Command::new(FLOWLENS)
            .args(["top", "--input", dir.to_str().unwrap(), "--csv"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let t = top(&lake);
    assert!(t.len() > 1000);
    assert_eq!(top(&rewrites.join("duckdb_signed")), t);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn host_filter_and_several_inputs() {
    let (root, lake, a, b) = make_lake("report-lake-hosts");
    let all = ok_report(&with_input(lake.to_str().unwrap(), &[]), &[]);
    // Several --input at once read as one lake.
    let mut args = with_input(a.to_str().unwrap(), &[]);
    args.extend(["--input", b.to_str().unwrap()]);
    assert!(content(ok_report(&args, &[])) == content(all.clone()));
    // --host: the same numbers as a lake holding only that host's files.
    let only_a = ok_report(&with_input(a.to_str().unwrap(), &[]), &[]);
    let filtered = ok_report(
        &with_input(lake.to_str().unwrap(), &["--host", "host-a"]),
        &[],
    );
    assert!(content(filtered.clone()) == content(only_a.clone()));
    let h = &all["hosts"];
    assert_eq!(h[0]["host"], "host-a");
    assert_eq!(h[0]["bytes"], only_a["totals"]["bytes"]);
    assert_ne!(h[0]["bytes"], all["totals"]["bytes"]);
    let sum: u64 = h
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, all["totals"]["bytes"].as_u64().unwrap());
    // A host that is not there: one error line.
    let (ok, _, err) = report(
        &with_input(lake.to_str().unwrap(), &["--host", "nope"]),
        &[],
    );
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_rows_are_counted_and_bad_files_are_one_line() {
    let root = temp_dir("report-lake-bad").unwrap();
    python(&["bad", root.to_str().unwrap()]);
    let (ok, json, err) = report(&["--input", root.join("rows").to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let j = json.unwrap();
    // Rows 0, 1 and 2 are counted; 1 (start at 1970) and 2 (end before start) at their
    // flow_end; 3 (end at the epoch), 4 (null packets), 5 (negative bytes) are rejected.
    assert_eq!(j["totals"]["records"], 3, "{j}");
    assert_eq!(j["totals"]["packets"], 7);
    assert_eq!(j["totals"]["bytes"], 700);
    assert_eq!(j["scan"]["rows_rejected"], 3);
    assert_eq!(j["scan"]["rows_clamped"], 2);
    assert_eq!(j["series"]["buckets"], 1, "no series back to 1970");
    assert!(
        err.contains("3 rows rejected") && err.contains("2 rows"),
        "{err}"
    );

    let one_line = |dir: &str, must: &[&str]| {
        let (ok, _, err) = report(&["--input", root.join(dir).to_str().unwrap()], &[]);
        assert!(!ok, "{dir}: should fail");
        assert_eq!(err.trim().lines().count(), 1, "{dir}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for m in must {
            assert!(err.contains(m), "{dir}: {m:?} not in {err}");
        }
    };
    one_line("missing", &["old.parquet", "no column destination_port"]);
    // Bounded memory: refused before any allocation for 1.7e9 buckets (the child would die of
    // it otherwise); one line.
    let (ok, _, err) = report(
        &[
            "--input",
            root.join("far").to_str().unwrap(),
            "--bucket",
            "1s",
        ],
        &[],
    );
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    assert!(err.contains("1000000 buckets"), "{err}");
    one_line(
        "range",
        &["wide.parquet", "row group 1", "destination_port", "70000"],
    );
    let _ = std::fs::remove_dir_all(&root);
}

use flowlens_testkit::moto::Moto;

#[test]
fn s3_input_gives_the_local_report() {
    let (root, lake, a, b) = make_lake("report-lake-s3");
    let moto = Moto::start();
    let n: usize = python(&[
        "upload",
        &moto.endpoint,
        "lake",
        "day/one",
        lake.to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap();
    assert!(n >= 10, "{n} files uploaded");
    python(&[
        "upload",
        &moto.endpoint,
        "lake",
        "split/b",
        b.to_str().unwrap(),
    ]);
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let local = ok_report(&with_input(lake.to_str().unwrap(), &[]), &[]);
    let s3 = ok_report(&with_input("s3://lake/day/one", &[]), &env);
    assert!(content(s3.clone()) == content(local.clone()));
    // Same pruning as locally: the same files, row groups and partitions.
    assert_eq!(s3["scan"], local["scan"]);
    assert!(local["scan"]["partitions_pruned"].as_u64().unwrap() > 0);
    // A local directory and an S3 prefix as one lake.
    // The settings as --s3-option instead of the environment, as for the S3 sink.
    let endpoint = format!("endpoint={}", moto.endpoint);
    let mut args = with_input(a.to_str().unwrap(), &[]);
    args.extend(["--input", "s3://lake/split/b", "--s3-option", &endpoint]);
    for o in [
        "allow_http=true",
        "access_key_id=testing",
        "secret_access_key=testing",
        "region=us-east-1",
    ] {
        args.extend(["--s3-option", o]);
    }
    assert!(content(ok_report(&args, &[])) == content(local));
    // Wrong credentials / missing bucket: one line naming the URL.
    let (ok, _, err) = report(&with_input("s3://no-such-bucket/x", &[]), &env);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("s3://no-such-bucket"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `report/sql/run.py` (the report's SQL on another engine) over `lake`.
fn engine_aggregates(engine: &str, lake: &Path, out: &Path) {
    let run = concat!(env!("CARGO_MANIFEST_DIR"), "/../report/sql/run.py");
    let o = Command::new("python3")
        .args([run, "--engine", engine, "--lake", lake.to_str().unwrap()])
        .args([
            "--from",
            "2026-11-20T01:00:00Z",
            "--to",
            "2026-11-20T05:00:00Z",
        ])
        .args(["--bucket", "60", "--observation-point", "xdp"])
        .args(["--out", out.to_str().unwrap()])
        // Spark in local mode: keep its driver on loopback.
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "run.py --engine {engine}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The report's SQL on DuckDB, on ClickHouse (chdb) and on Spark (pyspark, local mode), finished by `flowlens report
/// --from-json`, gives the report of `flowlens report --input` on the same lake, exactly
/// (every float bit-identical); only where it was read from and the file statistics differ.
#[test]
fn sql_engines_give_the_same_report() {
    let (root, lake, _, _) = make_lake("report-lake-sql");
    // The lake with bad rows too: they must be rejected and clamped the same way.
    python(&["bad", root.join("bad").to_str().unwrap()]);
    let local = ok_report(&with_input(lake.to_str().unwrap(), &[]), &[]);
    let want = content(local.clone());
    for engine in ["duckdb", "chdb", "spark"] {
        let agg = root.join(format!("{engine}.json"));
        engine_aggregates(engine, &lake, &agg);
        let got = ok_report(
            &[
                "--from-json",
                agg.to_str().unwrap(),
                "--top",
                "15",
                "--link-capacity",
                "eth0=1Mbit",
            ],
            &[],
        );
        assert!(
            got["input"].as_str().unwrap().contains(engine),
            "{}",
            got["input"]
        );
        assert!(
            content(got) == want,
            "{engine}: report differs from flowlens report's"
        );
    }
    // The bad rows of report_lake.py (at 2026-09-21): the same counts from SQL.
    let rows = root.join("bad/rows");
    let o = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/../report/sql/run.py"),
            "--engine",
            "duckdb",
            "--lake",
            rows.to_str().unwrap(),
            "--from",
            "2026-09-21T00:00:00Z",
            "--to",
            "2026-09-22T00:00:00Z",
            "--bucket",
            "60",
            "--out",
            root.join("bad.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_sql = ok_report(
        &["--from-json", root.join("bad.json").to_str().unwrap()],
        &[],
    );
    let local = ok_report(
        &[
            "--input",
            rows.to_str().unwrap(),
            "--from",
            "2026-09-21T00:00:00Z",
            "--to",
            "2026-09-22T00:00:00Z",
            "--bucket",
            "1m",
        ],
        &[],
    );
    assert_eq!(from_sql["totals"], local["totals"]);
    assert_eq!(from_sql["scan"]["rows_clamped"], 2);
    assert_eq!(local["scan"]["rows_clamped"], 2);
    assert_eq!(from_sql["scan"]["rows_rejected"], 3);
    assert!(content(from_sql) == content(local));
    let _ = std::fs::remove_dir_all(&root);
}

/// `--from-json` of a report's own JSON renders the same HTML and table as the report did.
#[test]
fn from_json_renders_the_same_html() {
    let (root, lake, _, _) = make_lake("report-lake-html");
    let (j, h1, h2) = (
        root.join("r.json"),
        root.join("a.html"),
        root.join("b.html"),
    );
    let run = |args: &[&str]| {
        let o = Command::new(FLOWLENS)
            .arg("report")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut args = with_input(lake.to_str().unwrap(), &["-q"]);
    args.extend([
        "--json",
        j.to_str().unwrap(),
        "--html",
        h1.to_str().unwrap(),
    ]);
    let table = run(&args);
    let table2 = run(&[
        "--from-json",
        j.to_str().unwrap(),
        "--html",
        h2.to_str().unwrap(),
    ]);
    assert_eq!(table, table2);
    assert!(
        table.contains("Per host") && table.contains("host-a") && table.contains("host-b"),
        "{table}"
    );
    let (a, b) = (std::fs::read(&h1).unwrap(), std::fs::read(&h2).unwrap());
    assert!(a.len() > 10_000 && a == b, "HTML differs");
    // Not a report: one line.
    std::fs::write(root.join("x.json"), "{\"format\": \"other/1\"}").unwrap();
    let (ok, _, err) = report(&["--from-json", root.join("x.json").to_str().unwrap()], &[]);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("other/1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
