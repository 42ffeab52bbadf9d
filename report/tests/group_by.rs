//! `flowlens report --group-by` and `flowlens top` over lakes with and without the Kubernetes
//! name columns (issue 13), without any peer program. The numbers of every grouping are checked
//! against DuckDB in `group_by_duckdb.rs` (peer-tests).

mod common;

use clap::Parser;
use common::*;
use flowlens_report::compute::UNKNOWN_GROUP;
use flowlens_schema::record::{arrow_schema, to_record_batch};

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
