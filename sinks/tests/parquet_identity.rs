//! The Parquet sink's identity (issue 12) and Kubernetes name (issue 13) columns, read back by
//! an independent reader (pyarrow): every value of every one of the 26 nullable per-end columns
//! of every row equals the record's, nulls included. Needs pyarrow (`cargo xtask setup`).

use std::{collections::BTreeMap, process::Command, sync::Arc, time::Duration};

use flowlens_schema::record::{END_FIELDS, EndIdentity, K8S_END_FIELDS};
use flowlens_sinks::{
    Sink,
    parquet::{ParquetOptions, ParquetSink},
};
use flowlens_testkit::temp_dir;

/// One end's text columns as the test expects them (pid as text), by column suffix.
fn expected(e: &EndIdentity) -> BTreeMap<&'static str, Option<String>> {
    let t = |v: &Option<Arc<str>>| v.as_deref().map(str::to_string);
    let m = BTreeMap::from([
        ("cgroup", t(&e.cgroup)),
        ("container_id", t(&e.container_id)),
        ("k8s_pod_uid", t(&e.k8s_pod_uid)),
        ("process_name", t(&e.process_name)),
        ("process_pid", e.process_pid.map(|p| p.to_string())),
        ("label", t(&e.label)),
        ("k8s_namespace", t(&e.k8s_namespace)),
        ("k8s_pod_name", t(&e.k8s_pod_name)),
        ("k8s_owner_kind", t(&e.k8s_owner_kind)),
        ("k8s_owner_name", t(&e.k8s_owner_name)),
        ("k8s_node_name", t(&e.k8s_node_name)),
        ("k8s_service_name", t(&e.k8s_service_name)),
        ("zone", t(&e.zone)),
    ]);
    assert_eq!(m.len(), END_FIELDS.len() + K8S_END_FIELDS.len());
    m
}

#[test]
fn every_identity_and_kubernetes_column_reads_back_with_pyarrow() {
    let dir = temp_dir("k8sout-parquet-identity").unwrap();
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: dir.clone(),
        rotate_bytes: 64 << 20,
        rotate_interval: Duration::from_secs(3600),
        host: Arc::from("identity-test"),
        journal: None,
    })
    .unwrap();
    let recs = flowlens_testkit::records::conversations(300);
    sink.write(&recs).unwrap();
    sink.close().unwrap();
    let cols: Vec<String> = ["source", "destination"]
        .iter()
        .flat_map(|e| {
            END_FIELDS
                .iter()
                .chain(K8S_END_FIELDS.iter())
                .map(move |f| format!("{e}_{f}"))
        })
        .collect();
    // One JSON line per row: community id, source address, then the columns in `cols` order.
    let py = format!(
        "import sys, json, pathlib, pyarrow.parquet as pq\n\
         cols = {cols:?}\n\
         for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.parquet')):\n\
         \x20   t = pq.read_table(p)\n\
         \x20   assert t.schema.field('destination_zone').nullable\n\
         \x20   d = t.to_pydict()\n\
         \x20   for i in range(t.num_rows):\n\
         \x20       v = [d['community_id'][i], d['source_address'][i]] + [None if d[c][i] is None else str(d[c][i]) for c in cols]\n\
         \x20       print(json.dumps(v))\n"
    );
    let o = Command::new("python3")
        .args(["-c", &py, dir.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<Vec<Option<String>>> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), recs.len());
    let mut named = 0;
    for r in &recs {
        let src = r.source_address().to_string();
        let row = rows
            .iter()
            .find(|v| v[0].as_deref() == Some(&r.community_id) && v[1].as_deref() == Some(&src))
            .unwrap_or_else(|| panic!("{} {src} not read back", r.community_id));
        let mut at = 2;
        for e in [&r.ends.source, &r.ends.destination] {
            let want = expected(e);
            for f in END_FIELDS.iter().chain(K8S_END_FIELDS.iter()) {
                assert_eq!(
                    row[at], want[f],
                    "{} {src} column {at} ({f})",
                    r.community_id
                );
                named += row[at].is_some() as usize;
                at += 1;
            }
        }
    }
    // The sample records do carry every kind of name somewhere.
    assert!(named > 1000, "{named}");
    for f in K8S_END_FIELDS {
        for end in ["source", "destination"] {
            let c = 2 + cols
                .iter()
                .position(|c| *c == format!("{end}_{f}"))
                .unwrap();
            assert!(rows.iter().any(|v| v[c].is_some()), "{end}_{f} never set");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
