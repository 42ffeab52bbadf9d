//! `flowlens report --group-by` (issue 13): rankings, conversations and throughput per
//! namespace / workload / pod / container / cgroup / label / host, over a lake that mixes files
//! with the Kubernetes name columns, files written before them (issue 12 columns only) and files
//! without any identity column. Every number is checked against DuckDB's own aggregation of the
//! same files (an independent reader and engine); a missing or null name is `(unknown)`.

use std::{path::Path, process::Command};

mod common;

use common::*;

use flowlens_report::compute::UNKNOWN_GROUP;

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
