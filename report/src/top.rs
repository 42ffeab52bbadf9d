//! `flowlens top`: the biggest flows in a directory of flowlens Parquet files, as a table.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use arrow_array::{Int64Array, StringArray, UInt8Array, UInt16Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Aggregated flow (over all records of the same identity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopKey {
    pub observation_point: String,
    pub interface_name: String,
    pub transport: String,
    pub source: String,
    pub destination: String,
    pub source_port: u16,
    pub destination_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Who each end is (issue 12, [`who`]): empty when not named.
    pub source_who: String,
    pub destination_who: String,
}

/// Short name of one end from its identity columns: the container id's first 12 digits (with
/// the pod UID's first 8 when there is one), else the cgroup's last component, else the label;
/// then the process name. With Kubernetes names (issue 13) see [`who_k8s`].
pub fn who(
    container: Option<&str>,
    pod: Option<&str>,
    cgroup: Option<&str>,
    process: Option<&str>,
    label: Option<&str>,
) -> String {
    let mut w = match (container, pod, cgroup) {
        (Some(c), Some(p), _) => format!("pod {}/{}", &p[..p.len().min(8)], &c[..c.len().min(12)]),
        (Some(c), None, _) => format!("ctr {}", &c[..c.len().min(12)]),
        (None, _, Some(g)) => g.rsplit('/').next().unwrap_or(g).to_string(),
        _ => String::new(),
    };
    if let Some(p) = process {
        if !w.is_empty() {
            w.push(' ');
        }
        w.push_str(p);
    }
    if w.is_empty()
        && let Some(l) = label
    {
        w = l.to_string();
    }
    w
}

/// An end's Kubernetes names for `flowlens top` (issue 13), or `None` when it has none: the
/// workload `namespace/OwnerKind/owner` with the pod name, else `namespace/pod`, else the
/// Service `svc namespace/name`, else the node `node NAME`.
pub fn who_k8s(
    namespace: Option<&str>,
    pod: Option<&str>,
    owner_kind: Option<&str>,
    owner: Option<&str>,
    node: Option<&str>,
    service: Option<&str>,
) -> Option<String> {
    let ns = namespace.unwrap_or("?");
    Some(match (owner, pod, service, node) {
        (Some(o), Some(p), _, _) => format!("{ns}/{}/{o} {p}", owner_kind.unwrap_or("?")),
        (Some(o), None, _, _) => format!("{ns}/{}/{o}", owner_kind.unwrap_or("?")),
        (None, Some(p), _, _) => format!("{ns}/{p}"),
        (None, None, Some(s), _) => format!("svc {ns}/{s}"),
        (None, None, None, Some(n)) => format!("node {n}"),
        _ => return None,
    })
}

/// A nullable text column of `b`, absent in files written before it existed.
fn opt_col<'a>(b: &'a arrow_array::RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<StringArray>()
}

fn opt_val(c: Option<&StringArray>, i: usize) -> Option<&str> {
    use arrow_array::Array as _;
    c.filter(|c| !c.is_null(i)).map(|c| c.value(i))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopVal {
    pub packets: i64,
    pub bytes: i64,
    pub records: i64,
}

/// Every complete `.parquet` file under `dir` (hidden in-progress files are skipped).
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    parquet_files_where(dir, &mut |_| true)
}

/// Like [`parquet_files`], but descends only into subdirectories for which `keep_dir` returns
/// true (partition pruning: `flowlens report` skips `date=…/hour=…` directories outside its range).
pub fn parquet_files_where(
    dir: &Path,
    keep_dir: &mut dyn FnMut(&Path) -> bool,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if keep_dir(&p) {
                    stack.push(p);
                }
            } else if flowlens_schema::layout::is_data_file(&name) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn col<'a, T: 'static>(b: &'a arrow_array::RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .with_context(|| format!("column {name} missing"))?
        .as_any()
        .downcast_ref::<T>()
        .with_context(|| format!("column {name} has an unexpected type"))
}

/// Sums packets/bytes per flow identity over all records in `dir`.
pub fn aggregate(dir: &Path) -> Result<HashMap<TopKey, TopVal>> {
    let files = parquet_files(dir)?;
    if files.is_empty() {
        bail!("no .parquet files under {}", dir.display());
    }
    let mut agg: HashMap<TopKey, TopVal> = HashMap::new();
    for f in files {
        let file = File::open(&f).with_context(|| format!("opening {}", f.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading {}", f.display()))?
            .build()?;
        for b in reader {
            // Any lake: other integer widths, timestamp units and string encodings (issue 16).
            let b = crate::normalize::normalize(&b?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            let obs = col::<StringArray>(&b, "observation_point")?;
            let ifn = col::<StringArray>(&b, "interface_name")?;
            let tr = col::<StringArray>(&b, "network_transport")?;
            let src = col::<StringArray>(&b, "source_address")?;
            let dst = col::<StringArray>(&b, "destination_address")?;
            let sp = col::<UInt16Array>(&b, "source_port")?;
            let dp = col::<UInt16Array>(&b, "destination_port")?;
            let it = col::<UInt8Array>(&b, "icmp_type")?;
            let ic = col::<UInt8Array>(&b, "icmp_code")?;
            let pk = col::<Int64Array>(&b, "packets")?;
            let by = col::<Int64Array>(&b, "bytes")?;
            let ends = ["source", "destination"].map(|e| {
                [
                    "container_id",
                    "k8s_pod_uid",
                    "cgroup",
                    "process_name",
                    "label",
                ]
                .map(|f| opt_col(&b, &format!("{e}_{f}")))
            });
            let k8s = ["source", "destination"].map(|e| {
                [
                    "k8s_namespace",
                    "k8s_pod_name",
                    "k8s_owner_kind",
                    "k8s_owner_name",
                    "k8s_node_name",
                    "k8s_service_name",
                ]
                .map(|f| opt_col(&b, &format!("{e}_{f}")))
            });
            // Workload names when the end has them (with the process name), else issue 12's.
            let who_at = |e: usize, i: usize| {
                let c = &ends[e];
                let k = &k8s[e];
                match who_k8s(
                    opt_val(k[0], i),
                    opt_val(k[1], i),
                    opt_val(k[2], i),
                    opt_val(k[3], i),
                    opt_val(k[4], i),
                    opt_val(k[5], i),
                ) {
                    Some(mut w) => {
                        if let Some(p) = opt_val(c[3], i) {
                            w.push(' ');
                            w.push_str(p);
                        }
                        w
                    }
                    None => who(
                        opt_val(c[0], i),
                        opt_val(c[1], i),
                        opt_val(c[2], i),
                        opt_val(c[3], i),
                        opt_val(c[4], i),
                    ),
                }
            };
            for i in 0..b.num_rows() {
                let k = TopKey {
                    observation_point: obs.value(i).to_string(),
                    interface_name: ifn.value(i).to_string(),
                    transport: tr.value(i).to_string(),
                    source: src.value(i).to_string(),
                    destination: dst.value(i).to_string(),
                    source_port: sp.value(i),
                    destination_port: dp.value(i),
                    icmp_type: it.value(i),
                    icmp_code: ic.value(i),
                    source_who: who_at(0, i),
                    destination_who: who_at(1, i),
                };
                let v = agg.entry(k).or_default();
                v.packets += pk.value(i);
                v.bytes += by.value(i);
                v.records += 1;
            }
        }
    }
    Ok(agg)
}

/// The `limit` biggest flows by bytes, as a printable table.
pub fn table(agg: &HashMap<TopKey, TopVal>, limit: usize) -> String {
    let mut rows: Vec<_> = agg.iter().collect();
    rows.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
    let ep = |a: &str, p: u16| {
        if a.contains(':') {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        }
    };
    let mut lines = vec![[
        "point".to_string(),
        "iface".into(),
        "proto".into(),
        "source".into(),
        "destination".into(),
        "packets".into(),
        "bytes".into(),
        "records".into(),
    ]];
    for (k, v) in rows.into_iter().take(limit) {
        let (mut s, mut d) = if k.transport == "icmp" || k.transport == "ipv6-icmp" {
            (
                k.source.clone(),
                format!(
                    "{} (type {} code {})",
                    k.destination, k.icmp_type, k.icmp_code
                ),
            )
        } else {
            (
                ep(&k.source, k.source_port),
                ep(&k.destination, k.destination_port),
            )
        };
        for (text, w) in [(&mut s, &k.source_who), (&mut d, &k.destination_who)] {
            if !w.is_empty() {
                text.push_str(&format!(" ({w})"));
            }
        }
        lines.push([
            k.observation_point.clone(),
            k.interface_name.clone(),
            k.transport.clone(),
            s,
            d,
            v.packets.to_string(),
            v.bytes.to_string(),
            v.records.to_string(),
        ]);
    }
    let mut w = [0usize; 8];
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i >= 5 {
                    format!("{c:>width$}", width = w[i])
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Every aggregated flow as CSV, sorted by bytes (descending).
pub fn csv(agg: &HashMap<TopKey, TopVal>) -> String {
    let mut rows: Vec<_> = agg.iter().collect();
    rows.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
    let mut out = String::from(
        "observation_point,interface_name,network_transport,source_address,source_port,destination_address,destination_port,icmp_type,icmp_code,packets,bytes,records\n",
    );
    for (k, v) in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            k.observation_point,
            k.interface_name,
            k.transport,
            k.source,
            k.source_port,
            k.destination,
            k.destination_port,
            k.icmp_type,
            k.icmp_code,
            v.packets,
            v.bytes,
            v.records
        ));
    }
    out
}

#[cfg(test)]
mod who_tests {
    use super::who;

    #[test]
    fn names_each_kind_of_end() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            who(
                Some(id),
                Some("0b5a9f6e-1c2d"),
                Some("/x"),
                Some("nginx"),
                None
            ),
            "pod 0b5a9f6e/0123456789ab nginx"
        );
        assert_eq!(who(Some(id), None, None, None, None), "ctr 0123456789ab");
        assert_eq!(
            who(
                None,
                None,
                Some("/system.slice/sshd.service"),
                None,
                Some("lab")
            ),
            "sshd.service"
        );
        assert_eq!(who(None, None, None, None, Some("site-a")), "site-a");
        assert_eq!(who(None, None, None, None, None), "");
    }

    #[test]
    fn names_kubernetes_ends_by_workload() {
        use super::who_k8s;
        assert_eq!(
            who_k8s(
                Some("shop"),
                Some("checkout-7d9f-x"),
                Some("Deployment"),
                Some("checkout"),
                Some("n1"),
                None
            )
            .as_deref(),
            Some("shop/Deployment/checkout checkout-7d9f-x")
        );
        assert_eq!(
            who_k8s(Some("db"), Some("pg-0"), None, None, None, None).as_deref(),
            Some("db/pg-0")
        );
        assert_eq!(
            who_k8s(Some("shop"), None, None, None, None, Some("frontend")).as_deref(),
            Some("svc shop/frontend")
        );
        assert_eq!(
            who_k8s(None, None, None, None, Some("node-1"), None).as_deref(),
            Some("node node-1")
        );
        assert_eq!(who_k8s(Some("x"), None, None, None, None, None), None);
    }
}
