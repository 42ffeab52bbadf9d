//! Shared by the XDP end-to-end tests (`mod common;`): reading flowlens' Parquet output back
//! with the parquet crate (independent of the sink's writer) and checking per-row invariants.

use std::{collections::BTreeMap, fs::File, path::Path};

use arrow_array::{Array, Int64Array, StringArray, UInt8Array, UInt16Array};
use flowlens_testkit::FlowTuple;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub packets: u64,
    pub bytes: u64,
    pub records: u64,
}

/// Reads every record back, summing per tuple (ports zero for non-TCP/UDP, as in the capture),
/// and checks per-row invariants.
pub fn read_records(dir: &Path, ifname: &str) -> BTreeMap<FlowTuple, Sum> {
    let files = flowlens::top::parquet_files(dir).unwrap();
    assert!(!files.is_empty(), "no parquet files in {}", dir.display());
    let mut out: BTreeMap<FlowTuple, Sum> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        assert!(
            rel.starts_with("date=") && rel.contains("/hour="),
            "not Hive-partitioned: {rel}"
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let s = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let u16c = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<UInt16Array>()
                    .unwrap()
                    .clone()
            };
            let i64c = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (src, dst, obs, ifn, dir_, reason) = (
                s("source_address"),
                s("destination_address"),
                s("observation_point"),
                s("interface_name"),
                s("direction"),
                s("flow_end_reason"),
            );
            let proto = b
                .column_by_name("protocol")
                .unwrap()
                .as_any()
                .downcast_ref::<UInt8Array>()
                .unwrap()
                .clone();
            let (sp, dp, pk, by) = (
                u16c("source_port"),
                u16c("destination_port"),
                i64c("packets"),
                i64c("bytes"),
            );
            let start = b
                .column_by_name("flow_start")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            let end = b
                .column_by_name("flow_end")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            let cid = s("community_id");
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64;
            for i in 0..b.num_rows() {
                assert_eq!(obs.value(i), "xdp");
                assert_eq!(ifn.value(i), ifname);
                assert_eq!(dir_.value(i), "ingress");
                assert!(start.value(i) <= end.value(i));
                // Wall-clock conversion: within the last 5 minutes, not in the future.
                assert!(
                    end.value(i) <= now_us && end.value(i) > now_us - 300_000_000,
                    "bad time {}",
                    end.value(i)
                );
                assert!(cid.value(i).starts_with("1:") && cid.value(i).len() == 30);
                assert!(
                    [
                        "idle_timeout",
                        "active_timeout",
                        "end_of_flow",
                        "forced_end"
                    ]
                    .contains(&reason.value(i))
                );
                let p = proto.value(i);
                let ports = matches!(p, 6 | 17);
                let t = FlowTuple {
                    src: src.value(i).parse().unwrap(),
                    dst: dst.value(i).parse().unwrap(),
                    proto: p,
                    src_port: if ports { sp.value(i) } else { 0 },
                    dst_port: if ports { dp.value(i) } else { 0 },
                };
                let e = out.entry(t).or_default();
                e.packets += pk.value(i) as u64;
                e.bytes += by.value(i) as u64;
                e.records += 1;
                assert!(pk.null_count() == 0 && by.value(i) > 0);
            }
        }
    }
    out
}
