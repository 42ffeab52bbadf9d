//! `flowlens report --group-by` (issue 13): rankings, conversations and throughput per
//! namespace / workload / pod / container / cgroup / label / host, over a lake that mixes files
//! with the Kubernetes name columns, files written before them (issue 12 columns only) and files
//! without any identity column. Every number is checked against DuckDB's own aggregation of the
//! same files (an independent reader and engine); a missing or null name is `(unknown)`.

use std::{path::Path, process::Command};

use arrow_array::RecordBatch;
use clap::Parser;
use flowlens_report::{ReportArgs, build, compute::UNKNOWN_GROUP};
use flowlens_schema::record::{K8S_END_FIELDS, arrow_schema, to_record_batch};
use parquet::arrow::ArrowWriter;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ReportArgs,
}

fn write(path: &Path, b: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

/// `b` without the columns `drop` says to drop (an older writer's file).
fn without(b: &RecordBatch, drop: impl Fn(&str) -> bool) -> RecordBatch {
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| !drop(b.schema().field(i).name()))
        .collect();
    b.project(&keep).unwrap()
}

/// Three files: current schema, issue-12 schema (no Kubernetes columns), no identity at all.
fn lake(dir: &Path) {
    let recs = flowlens_testkit::records::conversations(600);
    let schema = arrow_schema();
    let (a, rest) = recs.split_at(500);
    let (b, c) = rest.split_at(400);
    write(
        &dir.join("new.parquet"),
        &to_record_batch(&schema, a).unwrap(),
    );
    let k8s = |n: &str| K8S_END_FIELDS.iter().any(|f| n.ends_with(f));
    write(
        &dir.join("issue12.parquet"),
        &without(&to_record_batch(&schema, b).unwrap(), k8s),
    );
    let ident = |n: &str| {
        n.starts_with("source_") && !n.ends_with("address") && !n.ends_with("port")
            || n.starts_with("destination_") && !n.ends_with("address") && !n.ends_with("port")
    };
    write(
        &dir.join("plain.parquet"),
        &without(&to_record_batch(&schema, c).unwrap(), ident),
    );
}

/// The SQL expression naming one end (`e` = source/destination) for `--group-by g`, written
/// from docs/REPORT.md's definition, not from the Rust code.
fn sql_label(g: &str, e: &str) -> String {
    let c = |f: &str| format!("{e}_{f}");
    let u = format!("'{UNKNOWN_GROUP}'");
    let one = |f: &str| format!("coalesce({}, {u})", c(f));
    match g {
        "namespace" => one("k8s_namespace"),
        "container" => one("container_id"),
        "cgroup" => one("cgroup"),
        "label" => one("label"),
        "host" => one("k8s_node_name"),
        "pod" => format!(
            "CASE WHEN {p} IS NULL THEN {u} ELSE coalesce({ns}, {u}) || '/' || {p} END",
            p = c("k8s_pod_name"),
            ns = c("k8s_namespace")
        ),
        "workload" => format!(
            "CASE WHEN {o} IS NULL THEN {u} ELSE coalesce({ns}, {u}) || '/' || coalesce({k}, {u}) || '/' || {o} END",
            o = c("k8s_owner_name"),
            ns = c("k8s_namespace"),
            k = c("k8s_owner_kind")
        ),
        _ => unreachable!(),
    }
}

/// DuckDB over the lake: (sources, destinations, conversations) as sorted
/// `key records packets bytes` lines, every group (not only the top N).
fn duckdb(dir: &Path, g: &str) -> [Vec<String>; 3] {
    let (s, d) = (sql_label(g, "source"), sql_label(g, "destination"));
    let from = format!(
        "read_parquet('{}/*.parquet', union_by_name=true) WHERE observation_point = 'xdp'",
        dir.display()
    );
    let q = |key: &str| {
        format!(
            "SELECT {key} AS k, count(*), sum(packets)::BIGINT, sum(bytes)::BIGINT FROM {from} GROUP BY k ORDER BY k"
        )
    };
    let conv = format!(
        "CASE WHEN ({s}) <= ({d}) THEN ({s}) || ' <-> ' || ({d}) ELSE ({d}) || ' <-> ' || ({s}) END"
    );
    let py = format!(
        "import duckdb\nc = duckdb.connect()\nfor q in {:?}:\n    for r in c.execute(q).fetchall():\n        print('\\t'.join(str(x) for x in r))\n    print('--')\n",
        [q(&s), q(&d), q(&conv)]
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(&py)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let parts: Vec<Vec<String>> = text
        .split("--\n")
        .take(3)
        .map(|p| {
            let mut v: Vec<String> = p.lines().map(str::to_string).collect();
            v.sort();
            v
        })
        .collect();
    [parts[0].clone(), parts[1].clone(), parts[2].clone()]
}

fn report(dir: &Path, extra: &[&str]) -> flowlens_report::Report {
    let mut argv = vec![
        "report".to_string(),
        "--input".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ];
    if !extra.contains(&"--top") {
        argv.extend(["--top".to_string(), "1000".into()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let opts = Cli::parse_from(argv).args.resolve(i64::MAX / 2).unwrap();
    build(&opts).unwrap()
}

fn lines(r: &flowlens_report::compute::Ranking) -> Vec<String> {
    let mut v: Vec<String> = r
        .by_bytes
        .iter()
        .map(|e| format!("{}\t{}\t{}\t{}", e.key, e.records, e.packets, e.bytes))
        .collect();
    v.sort();
    v
}

#[test]
fn every_grouping_agrees_with_duckdb_over_mixed_lakes() {
    let dir = tempfile_dir("every");
    lake(&dir);
    let plain = report(&dir, &[]);
    assert!(plain.groups.is_none(), "no --group-by: no groups section");
    for g in [
        "namespace",
        "workload",
        "pod",
        "container",
        "cgroup",
        "label",
        "host",
    ] {
        let r = report(&dir, &["--group-by", g]);
        let groups = r.groups.as_ref().expect("groups");
        assert_eq!(groups.by.as_str(), g);
        let [src, dst, conv] = duckdb(&dir, g);
        assert_eq!(lines(&groups.sources), src, "{g}: sources");
        assert_eq!(lines(&groups.destinations), dst, "{g}: destinations");
        assert_eq!(lines(&groups.conversations), conv, "{g}: conversations");
        assert_eq!(groups.sources.distinct as usize, src.len());
        // Everything else is the report without --group-by.
        assert_eq!(r.top, plain.top, "{g}");
        assert_eq!(r.series, plain.series, "{g}");
        // Throughput series: every group's sent bytes are its source total, received its
        // destination total; their buckets add up to the same (fixed point, within rounding).
        for s in &groups.series {
            let want = if s.direction == "sent" { &src } else { &dst };
            let row = want
                .iter()
                .find(|l| l.split('\t').next() == Some(s.interface.as_str()))
                .unwrap_or_else(|| panic!("{g}: series {} not in DuckDB", s.interface));
            let bytes: u64 = row.split('\t').nth(3).unwrap().parse().unwrap();
            assert_eq!(s.bytes, bytes, "{g} {} {}", s.interface, s.direction);
            let sum: f64 = s.bytes_per_sec.iter().sum::<f64>() * r.series.bucket_seconds as f64;
            assert!(
                (sum - bytes as f64).abs() <= 1.0 + bytes as f64 * 1e-9,
                "{g}: {sum} vs {bytes}"
            );
        }
        let names: std::collections::BTreeSet<&str> =
            groups.series.iter().map(|s| s.interface.as_str()).collect();
        assert_eq!(
            names.len(),
            src.iter()
                .chain(&dst)
                .map(|l| l.split('\t').next().unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                .min(1000)
        );
        // Files without the columns and ends without names are one (unknown) group.
        assert!(
            src.iter()
                .any(|l| l.starts_with(&format!("{UNKNOWN_GROUP}\t"))),
            "{g}: {src:?}"
        );
    }
    // The workload names of the sample records, and their text and HTML rendering.
    let r = report(&dir, &["--group-by", "workload", "--top", "3"]);
    let g = r.groups.as_ref().unwrap();
    assert!(
        g.sources
            .by_bytes
            .iter()
            .chain(&g.destinations.by_bytes)
            .any(|e| e.key == "db/StatefulSet/postgres"),
        "{g:?}"
    );
    assert_eq!(g.sources.by_bytes.len(), 3);
    assert!(
        g.series
            .iter()
            .map(|s| &s.interface)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            <= 3
    );
    let text = flowlens_report::text::render(&r);
    assert!(text.contains("Top sources by workload"), "{text}");
    assert!(text.contains("Top conversations by workload"));
    assert!(text.contains("Throughput per workload"));
    for e in &g.sources.by_bytes {
        assert!(text.contains(&e.key), "{} not in the text", e.key);
    }
    let html = flowlens_report::html::render(&r);
    assert!(html.contains("<h2>By workload"), "html section");
    assert!(html.contains("Conversations by workload"));
    // JSON round trip keeps the section.
    let j = serde_json::to_string(&r).unwrap();
    let back: flowlens_report::Report = serde_json::from_str(&j).unwrap();
    let bg = back.groups.expect("groups in the JSON");
    assert_eq!(lines(&bg.sources), lines(&g.sources));
    assert_eq!(lines(&bg.conversations), lines(&g.conversations));
    assert_eq!(bg.series.len(), g.series.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lake_without_any_name_column_is_all_unknown() {
    let dir = tempfile_dir("old");
    let recs = flowlens_testkit::records::conversations(50);
    let b = to_record_batch(&arrow_schema(), &recs).unwrap();
    let ident = |n: &str| {
        (n.starts_with("source_") || n.starts_with("destination_"))
            && !n.ends_with("address")
            && !n.ends_with("port")
    };
    write(&dir.join("old.parquet"), &without(&b, ident));
    let r = report(&dir, &["--group-by", "workload"]);
    let g = r.groups.unwrap();
    assert_eq!(g.sources.distinct, 1);
    assert_eq!(g.sources.by_bytes[0].key, UNKNOWN_GROUP);
    assert_eq!(g.sources.by_bytes[0].bytes, r.totals.bytes);
    assert_eq!(
        g.conversations.by_bytes[0].key,
        format!("{UNKNOWN_GROUP} <-> {UNKNOWN_GROUP}")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_group_by_is_one_clear_line() {
    let dir = std::env::temp_dir();
    let e = Cli::parse_from([
        "report",
        "--input",
        dir.to_str().unwrap(),
        "--group-by",
        "team",
    ])
    .args
    .resolve(0)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--group-by \"team\"") && e.contains("workload") && !e.contains('\n'),
        "{e}"
    );
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("k8sout-group-by-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `flowlens top` names ends by workload when the file has the names, by container otherwise.
#[test]
fn top_shows_workload_names_when_present() {
    let dir = tempfile_dir("top");
    lake(&dir);
    let agg = flowlens_report::top::aggregate(&dir).unwrap();
    let who: Vec<(&str, &str)> = agg
        .keys()
        .map(|k| (k.source_who.as_str(), k.destination_who.as_str()))
        .collect();
    // Conversation 2 (new file): checkout's pod (process nginx) talks to postgres behind its
    // Service; conversation 0: a Service ClusterIP destination.
    assert!(
        who.contains(&(
            "shop/Deployment/checkout checkout-2 nginx",
            "db/StatefulSet/postgres postgres-0"
        )),
        "{who:?}"
    );
    assert!(
        who.iter().any(|(_, d)| *d == "svc shop/frontend"),
        "{who:?}"
    );
    // Conversations 250-449 are in the file without Kubernetes columns: container naming.
    assert!(
        who.iter()
            .any(|(s, _)| s.starts_with("pod 0b5a9f6e/") && s.ends_with(" nginx")),
        "{who:?}"
    );
    let table = flowlens_report::top::table(&agg, 2000);
    assert!(table.contains("(shop/Deployment/checkout checkout-2 nginx)"));
    std::fs::remove_dir_all(&dir).unwrap();
}
