//! Helpers of the `--group-by` tests: a mixed lake and the report over it.
#![allow(dead_code)]

use std::path::Path;

use arrow_array::RecordBatch;
use clap::Parser;
use flowlens_report::ReportArgs;
use flowlens_schema::record::{K8S_END_FIELDS, arrow_schema, to_record_batch};
use parquet::arrow::ArrowWriter;

#[derive(Parser)]
pub struct Cli {
    #[command(flatten)]
    pub args: ReportArgs,
}

pub fn write(path: &Path, b: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

/// `b` without the columns `drop` says to drop (an older writer's file).
pub fn without(b: &RecordBatch, drop: impl Fn(&str) -> bool) -> RecordBatch {
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| !drop(b.schema().field(i).name()))
        .collect();
    b.project(&keep).unwrap()
}

/// Three files: current schema, issue-12 schema (no Kubernetes columns), no identity at all.
pub fn lake(dir: &Path) {
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

pub fn report(dir: &Path, extra: &[&str]) -> flowlens_report::Report {
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
    flowlens_report::build(&opts).unwrap()
}

pub fn lines(r: &flowlens_report::compute::Ranking) -> Vec<String> {
    let mut v: Vec<String> = r
        .by_bytes
        .iter()
        .map(|e| format!("{}\t{}\t{}\t{}", e.key, e.records, e.packets, e.bytes))
        .collect();
    v.sort();
    v
}

pub fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("k8sout-group-by-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
