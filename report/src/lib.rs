//! `flowlens report`: capacity-planning numbers from a directory of flowlens Parquet files.
//!
//! [`scan`] finds and reads the files (partition pruning, row-group statistics, projection,
//! parallel), [`compute`] aggregates record batches and builds the [`Report`], [`text`] and
//! [`html`] render it; `--json` is `serde_json` of [`Report`] (structure in docs/REPORT.md).
//!
//! Engine: hand-written aggregation over Arrow record batches from the parquet crate's arrow
//! reader (already a dependency of the sink). DataFusion or polars would add hundreds of crates
//! and minutes of build time on 2 cores for a handful of group-bys (see docs/ARCHITECTURE.md).

pub mod compute;
pub mod engine;
pub mod html;
pub mod normalize;
pub mod remote;
pub mod scan;
pub mod text;
/// `flowlens top`.
pub mod top;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use compute::{Counts, Grouping, Selection, Series, Top};
use scan::{Input, ScanStats};

/// Version tag of the JSON structure; bumped on incompatible changes.
pub const FORMAT: &str = "flowlens-report/1";

/// 9999-12-31T23:59:59Z in µs, the last time RFC 3339 can write.
pub const MAX_RFC3339_US: i64 = 253_402_300_799_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Input(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Parquet(String, #[source] parquet::errors::ParquetError),
    #[error("{0}")]
    Schema(String),
}

/// Command-line options of `flowlens report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The flow lake: a directory or `s3://BUCKET/PREFIX` (S3 settings from the AWS_*
    /// environment, as for the S3 sink). Any Parquet with the needed columns: every codec,
    /// any integer widths and timestamp units, `date=/hour=` partitions or none. Repeatable:
    /// several inputs are read as one lake.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", default_value = "./flows")]
    pub input: Vec<String>,
    /// S3 setting for s3:// inputs, winning over the AWS_* environment: object_store's
    /// AmazonS3ConfigKey names (endpoint, region, allow_http, access_key_id,
    /// secret_access_key, ...), as the S3 sink's --s3-option. Repeatable.
    #[arg(long = "s3-option", value_name = "KEY=VALUE")]
    pub s3_option: Vec<String>,
    /// Only records whose `host` column is one of these (repeatable, or comma-separated).
    /// Default: every host; the report always has a per-host breakdown (`hosts`).
    #[arg(long, value_name = "HOST", value_delimiter = ',')]
    pub host: Vec<String>,
    /// Start of the range (inclusive, on flow_end): RFC 3339 UTC (2026-11-26T07:00:00Z), a date
    /// (2026-11-26), `now`, or relative to now (-24h, -7d). Default: the earliest record.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the range (exclusive), same forms as --from. Default: just after the last record.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Width of a time-series bucket (whole seconds: 1m, 5m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub bucket: String,
    /// Also write a self-contained HTML report (inline SVG charts, no network fetches).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the report as JSON (`-` for stdout instead of the table; docs/REPORT.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Group subnets by these networks (longest match wins; others are `other`),
    /// e.g. 10.0.0.0/8,192.168.0.0/16,2001:db8::/32. Overrides --group-by-prefix.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub group_by_cidr: Vec<String>,
    /// Group subnets by prefix length: `24`, `/64`, `v4/16,v6/48`. A bare length up to 32
    /// applies to IPv4, a longer one to IPv6.
    #[arg(long, value_name = "LEN,...", default_value = "24,64")]
    pub group_by_prefix: String,
    /// Also rank sources, destinations and conversations, and chart the throughput of the top
    /// groups, with each end named by: `namespace`, `workload` (namespace/OwnerKind/owner),
    /// `pod` (namespace/pod), `container` (container id), `cgroup`, `label` (--label-cidrs) or
    /// `host` (the end's Kubernetes node). An end without the name (or a lake without the
    /// column) is `(unknown)`. The other rankings and series stay as they are.
    #[arg(long, value_name = "KIND")]
    pub group_by: Option<String>,
    /// Capacity of an interface per direction, e.g. eth0=10Gbit (units bit, Kbit, Mbit, Gbit,
    /// Tbit per second, powers of 1000). Repeatable.
    #[arg(long, value_name = "IFACE=RATE")]
    pub link_capacity: Vec<String>,
    /// Utilisation at which a link counts as full, for the projection.
    #[arg(long, value_name = "PERCENT", default_value = "80%")]
    pub threshold: String,
    /// Entries per top-N list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Observation point to count (a packet seen at several points would otherwise be added up
    /// several times). Default: `xdp` if present, else the first present (alphabetically).
    #[arg(long, value_name = "NAME")]
    pub observation_point: Option<String>,
    /// Scan threads (default: number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Instead of reading a lake: a `flowlens-report/1` file (a report's --json: rendered as
    /// is) or the `flowlens-aggregates/1` output of `report/sql/run.py` (the report's SQL run
    /// by DuckDB, ClickHouse or Spark; finished into the report; its range, bucket and
    /// observation point are the engine's). --input, --from, --to, --bucket, --host ignored.
    #[arg(long, value_name = "FILE")]
    pub from_json: Option<PathBuf>,
}

/// Report options after validation.
#[derive(Clone, Debug)]
pub struct Options {
    pub inputs: Vec<Input>,
    pub hosts: Vec<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub bucket_us: i64,
    pub grouping: Grouping,
    /// `--group-by`.
    pub group_by: Option<compute::GroupBy>,
    /// (interface, bits per second)
    pub capacities: Vec<(String, f64)>,
    /// Fraction 0..1.
    pub threshold: f64,
    pub top: usize,
    pub observation_point: Option<String>,
    pub threads: usize,
    pub quiet: bool,
}

fn bad(what: &str, value: &str, why: impl std::fmt::Display) -> ReportError {
    ReportError::Input(format!("{what} {value:?}: {why}"))
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Parses `--from`/`--to`.
pub fn parse_time(what: &str, s: &str, now_us: i64) -> Result<i64, ReportError> {
    let hint = "expected RFC 3339 UTC (2026-11-26T07:00:00Z), a date (2026-11-26), `now` or a relative time like -24h";
    let s = s.trim();
    if s == "now" {
        return Ok(now_us);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel).map_err(|e| bad(what, s, format!("{e}; {hint}")))?;
        return Ok(now_us - d.as_micros() as i64);
    }
    let full = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t =
        humantime::parse_rfc3339_weak(&full).map_err(|e| bad(what, s, format!("{e}; {hint}")))?;
    let us = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    Ok(us)
}

/// RFC 3339 (UTC) of µs since the epoch; seconds precision when the value has no fraction.
pub fn fmt_time(us: i64) -> String {
    let t = if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_micros(us.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    };
    if us % 1_000_000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_micros(t).to_string()
    }
}

/// Parses a rate like `10Gbit` (also `10 Gbit/s`, `2.5gbit`) into bits per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| "missing unit; use bit, Kbit, Mbit, Gbit or Tbit".to_string())?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{num:?} is not a number"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        "tbit" | "tbps" => 1e12,
        u => {
            return Err(format!(
                "unknown unit {u:?}; use bit, Kbit, Mbit, Gbit or Tbit (per second, powers of 1000)"
            ));
        }
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err("must be greater than zero".into());
    }
    Ok(n * mult)
}

fn parse_prefixes(s: &str) -> Result<Grouping, ReportError> {
    let (mut v4, mut v6) = (24u8, 64u8);
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (fam, len) = if let Some(l) = item.strip_prefix("v4/") {
            (Some(4), l)
        } else if let Some(l) = item.strip_prefix("v6/") {
            (Some(6), l)
        } else {
            (None, item.trim_start_matches('/'))
        };
        let n: u8 = len.parse().map_err(|_| {
            bad(
                "--group-by-prefix",
                s,
                format!("{item:?} is not a prefix length"),
            )
        })?;
        match fam {
            Some(4) | None if n <= 32 => v4 = n,
            Some(6) | None if n <= 128 => v6 = n,
            _ => {
                return Err(bad(
                    "--group-by-prefix",
                    s,
                    format!("{item:?}: IPv4 prefixes are 0-32, IPv6 0-128"),
                ));
            }
        }
    }
    Ok(Grouping::Prefix { v4, v6 })
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), ReportError> {
    let err = |why: &str| bad("--group-by-cidr", s, why);
    let (a, l) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| err("expected ADDRESS/LEN, e.g. 10.0.0.0/8"))?;
    let a: IpAddr = a.parse().map_err(|_| err("not an IP address"))?;
    let l: u8 = l
        .parse()
        .map_err(|_| err("prefix length is not a number"))?;
    if l > if a.is_ipv4() { 32 } else { 128 } {
        return Err(err("prefix length too long"));
    }
    if compute::mask(a, l) != a {
        return Err(err(&format!(
            "host bits set; did you mean {}/{l}?",
            compute::mask(a, l)
        )));
    }
    Ok((a, l))
}

impl ReportArgs {
    pub fn resolve(&self, now_us: i64) -> Result<Options, ReportError> {
        let mut inputs = Vec::new();
        for i in self.input.iter().filter(|_| self.from_json.is_none()) {
            if i.contains("://") {
                let (bucket, prefix) = remote::parse_url(i).map_err(|e| bad("--input", i, e))?;
                let mut options = Vec::new();
                for o in &self.s3_option {
                    let (k, v) = o
                        .split_once('=')
                        .ok_or_else(|| bad("--s3-option", o, "expected KEY=VALUE"))?;
                    options.push((k.trim().to_string(), v.to_string()));
                }
                let remote = remote::Remote::open(&bucket, &options)?;
                inputs.push(Input::S3 { remote, prefix });
                continue;
            }
            let input = PathBuf::from(i);
            if !input.exists() {
                return Err(bad("--input", i, "no such directory"));
            }
            if !input.is_dir() {
                return Err(bad("--input", i, "not a directory"));
            }
            inputs.push(Input::Dir(input));
        }
        if inputs.is_empty() && self.from_json.is_none() {
            return Err(ReportError::Input(
                "--input: give a directory or s3:// URL".into(),
            ));
        }
        if self.host.iter().any(|h| h.trim().is_empty()) {
            return Err(bad("--host", "", "empty host name"));
        }
        let from_us = self
            .from
            .as_deref()
            .map(|s| parse_time("--from", s, now_us))
            .transpose()?;
        let to_us = self
            .to
            .as_deref()
            .map(|s| parse_time("--to", s, now_us))
            .transpose()?;
        if let (Some(f), Some(t)) = (from_us, to_us)
            && f >= t
        {
            return Err(ReportError::Input(format!(
                "--from ({}) must be before --to ({})",
                fmt_time(f),
                fmt_time(t)
            )));
        }
        let b = humantime::parse_duration(&self.bucket)
            .map_err(|e| bad("--bucket", &self.bucket, format!("{e}; e.g. 1m, 5m, 1h")))?;
        if b < Duration::from_secs(1) || b.subsec_nanos() != 0 {
            return Err(bad(
                "--bucket",
                &self.bucket,
                "must be a whole number of seconds, at least 1s",
            ));
        }
        if b > Duration::from_secs(366 * 86_400) {
            return Err(bad("--bucket", &self.bucket, "must be at most a year"));
        }
        let grouping = if self.group_by_cidr.is_empty() {
            parse_prefixes(&self.group_by_prefix)?
        } else {
            Grouping::Cidrs(
                self.group_by_cidr
                    .iter()
                    .filter(|c| !c.trim().is_empty())
                    .map(|c| parse_cidr(c))
                    .collect::<Result<_, _>>()?,
            )
        };
        let mut capacities = Vec::new();
        for c in &self.link_capacity {
            let (ifn, rate) = c.split_once('=').ok_or_else(|| {
                bad(
                    "--link-capacity",
                    c,
                    "expected IFACE=RATE, e.g. eth0=10Gbit",
                )
            })?;
            if ifn.is_empty() {
                return Err(bad("--link-capacity", c, "empty interface name"));
            }
            let r = parse_rate(rate).map_err(|e| bad("--link-capacity", c, e))?;
            if capacities.iter().any(|(i, _)| i == ifn) {
                return Err(bad("--link-capacity", c, "interface given twice"));
            }
            capacities.push((ifn.to_string(), r));
        }
        let th = self.threshold.trim();
        let threshold = th
            .strip_suffix('%')
            .unwrap_or(th)
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && *v <= 100.0)
            .ok_or_else(|| {
                bad(
                    "--threshold",
                    th,
                    "expected a percentage in (0, 100], e.g. 80%",
                )
            })?
            / 100.0;
        if self.top == 0 {
            return Err(bad("--top", "0", "must be at least 1"));
        }
        Ok(Options {
            inputs,
            hosts: self.host.iter().map(|h| h.trim().to_string()).collect(),
            from_us,
            to_us,
            bucket_us: b.as_micros() as i64,
            grouping,
            group_by: self
                .group_by
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(ReportError::Input)?,
            capacities,
            threshold,
            top: self.top,
            observation_point: self.observation_point.clone(),
            threads: self.threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
            quiet: self.quiet,
        })
    }
}

/// The time range of the report: records with `flow_end` in `[from, to)`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Range {
    pub from_us: i64,
    pub to_us: i64,
    pub from: String,
    pub to: String,
    pub seconds: f64,
    /// Whether from/to were given (false: taken from the data).
    pub from_given: bool,
    pub to_given: bool,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ObservationPoint {
    pub name: String,
    /// True for the point counted in this report.
    pub selected: bool,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct PreviousSeries {
    pub interface: String,
    pub direction: String,
    pub bytes: u64,
    pub packets: u64,
    pub p95_bytes_per_sec: f64,
    /// This period's p95 divided by the previous one's, minus 1 (null if the previous was 0).
    pub p95_change: Option<f64>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Previous {
    pub from_us: i64,
    pub to_us: i64,
    pub from: String,
    pub to: String,
    pub totals: Counts,
    /// This period's bytes divided by the previous period's, minus 1 (null if the previous was 0).
    pub bytes_change: Option<f64>,
    pub packets_change: Option<f64>,
    pub interfaces: Vec<PreviousSeries>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Growth {
    /// The period of equal length just before this one; null if --from was not given or it has
    /// no records at this observation point. The trend line of each series is in `series`.
    pub previous: Option<Previous>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct CapacityDirection {
    pub direction: String,
    pub p95_bits_per_sec: f64,
    pub peak_bits_per_sec: f64,
    /// p95 / capacity (0..1+).
    pub utilisation_p95: f64,
    pub utilisation_peak: f64,
    /// Slope of the least-squares trend of the bucket rates, in bits/s per day.
    pub trend_bits_per_sec_per_day: f64,
    /// `above_threshold` (p95 already at or over it), `growing` (projection below),
    /// `not_growing` (trend <= 0: no projection).
    pub status: String,
    /// Days after the end of the range until p95 + trend reaches the threshold (null unless
    /// `growing`).
    pub days_to_threshold: Option<f64>,
    pub reaches_threshold_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Capacity {
    pub interface: String,
    pub capacity_bits_per_sec: f64,
    pub threshold: f64,
    /// One entry per direction seen on the interface (empty if it had no traffic).
    pub directions: Vec<CapacityDirection>,
}

/// Selected traffic of one exporter (`host` column; null for files without it).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HostCounts {
    pub host: Option<String>,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything `--json` writes.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    pub format: String,
    pub input: String,
    pub range: Range,
    pub observation_point: String,
    pub observation_points: Vec<ObservationPoint>,
    /// Per exporter, at the selected observation point, sorted by host (null first).
    pub hosts: Vec<HostCounts>,
    pub scan: ScanStats,
    pub totals: Counts,
    pub series: Series,
    pub top: Top,
    /// `--group-by` rankings and series (absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<compute::Groups>,
    pub growth: Growth,
    pub capacity: Vec<Capacity>,
}

/// Picks the default observation point from those present.
pub fn default_observation_point(present: &[String]) -> Option<String> {
    if present.iter().any(|p| p == "xdp") {
        return Some("xdp".into());
    }
    present.iter().min().cloned()
}

fn change(now: f64, before: f64) -> Option<f64> {
    (before != 0.0).then(|| now / before - 1.0)
}

/// Series bucket range: the buckets records touched, extended to the given range ends.
fn bucket_range(agg: &compute::Agg, b: i64, from: Option<i64>, to: Option<i64>) -> (i64, i64) {
    let (mut first, mut last) = compute::touched_buckets(agg).unwrap_or((0, 0));
    if let Some(f) = from {
        first = first.min(f.div_euclid(b));
    }
    if let Some(t) = to {
        last = last.max((t - 1).div_euclid(b));
    }
    (first, last)
}

/// Computes the report.
pub fn build(opts: &Options) -> Result<Report, ReportError> {
    let from = opts.from_us.unwrap_or(i64::MIN / 4);
    let to = opts.to_us.unwrap_or(i64::MAX / 4);
    let plan = scan::plan(&opts.inputs, from, to)?;
    let input_text = opts
        .inputs
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if plan.stats.files == 0 && plan.stats.partitions_pruned == 0 {
        return Err(ReportError::Input(format!(
            "no .parquet files under {}",
            input_text
        )));
    }
    let range_text = || {
        format!(
            "[{}, {})",
            opts.from_us.map_or("start".into(), fmt_time),
            opts.to_us.map_or("end".into(), fmt_time)
        )
    };
    if plan.rows() == 0 {
        return Err(ReportError::Input(format!(
            "no flow records in {} under {} ({} partitions pruned by name, {} files and {} of {} row groups by statistics)",
            range_text(),
            input_text,
            plan.stats.partitions_pruned,
            plan.stats.files_pruned,
            plan.stats.row_groups_pruned,
            plan.stats.row_groups,
        )));
    }
    let obs = match &opts.observation_point {
        Some(o) => o.clone(),
        None => {
            let present = match &plan.observation_points_in_stats {
                Some(v) => v.clone(),
                None => plan.read_observation_points()?,
            };
            default_observation_point(&present)
                .ok_or_else(|| ReportError::Input("no observation points in the data".into()))?
        }
    };
    let sel = Selection {
        from_us: from,
        to_us: to,
        observation_point: obs.clone(),
        bucket_us: opts.bucket_us,
        talkers: true,
        hosts: opts.hosts.clone(),
        group_by: opts.group_by,
    };
    let agg = plan.scan(&sel, opts.threads, opts.quiet, "range")?;
    let mut previous_scan = |pf: i64, pt: i64| -> Result<Option<compute::Agg>, ReportError> {
        let pplan = scan::plan(&opts.inputs, pf, pt)?;
        if pplan.rows() == 0 {
            return Ok(None);
        }
        let psel = Selection {
            from_us: pf,
            to_us: pt,
            talkers: false,
            ..sel.clone()
        };
        Ok(Some(pplan.scan(
            &psel,
            opts.threads,
            opts.quiet,
            "previous period",
        )?))
    };
    finish(
        opts,
        input_text,
        obs,
        plan.stats.clone(),
        agg,
        &mut previous_scan,
    )
}

/// The report from the aggregate of the range (and, through `previous_scan(from, to)`, of the
/// previous period): shared by a scan of the lake and by `--from-json` aggregates computed by
/// another engine, so both give the same numbers.
pub fn finish(
    opts: &Options,
    input_text: String,
    obs: String,
    stats: ScanStats,
    agg: compute::Agg,
    previous_scan: &mut dyn FnMut(i64, i64) -> Result<Option<compute::Agg>, ReportError>,
) -> Result<Report, ReportError> {
    let range_text = || {
        format!(
            "[{}, {})",
            opts.from_us.map_or("start".into(), fmt_time),
            opts.to_us.map_or("end".into(), fmt_time)
        )
    };
    let mut observation_points: Vec<ObservationPoint> = agg
        .observation_points
        .iter()
        .map(|(k, c)| ObservationPoint {
            name: k.clone(),
            selected: *k == obs,
            records: c.records,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    observation_points.sort_by(|a, b| a.name.cmp(&b.name));
    if agg.totals.records == 0 {
        let others: Vec<String> = observation_points.iter().map(|o| o.name.clone()).collect();
        return Err(ReportError::Input(format!(
            "no records at observation point {obs:?} in {} (points present: {})",
            range_text(),
            if others.is_empty() {
                "none".into()
            } else {
                others.join(", ")
            }
        )));
    }
    let (min_end, max_end) = (agg.min_end.unwrap_or(0), agg.max_end.unwrap_or(0));
    let range_from = opts.from_us.unwrap_or(min_end);
    let range_to = opts.to_us.unwrap_or(max_end + 1);
    let (first, last) = bucket_range(&agg, opts.bucket_us, opts.from_us, opts.to_us);
    let n_buckets = last - first + 1;
    if n_buckets > 1_000_000 {
        return Err(ReportError::Input(format!(
            "--bucket {} s over this range gives {n_buckets} buckets (max 1000000); use a larger --bucket",
            opts.bucket_us / 1_000_000
        )));
    }
    let series = compute::series(&agg, opts.bucket_us, first, last, range_from, range_to);
    let top = compute::top(&agg, opts.top, &opts.grouping);
    let groups = compute::groups(
        &agg,
        opts.group_by,
        opts.top,
        opts.bucket_us,
        first,
        last,
        range_from,
        range_to,
    );
    let mut scan_stats = stats;
    scan_stats.rows_read = agg.rows_read;
    scan_stats.rows_selected = agg.totals.records;
    scan_stats.rows_rejected = agg.rows_rejected;
    scan_stats.rows_clamped = agg.rows_clamped;
    let mut hosts: Vec<HostCounts> = agg
        .hosts
        .iter()
        .map(|(h, c)| HostCounts {
            host: h.clone(),
            records: c.records,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));

    // Growth: the previous period of equal length, when the range start was given.
    let previous = match opts.from_us {
        Some(f) => {
            let len = range_to - f;
            let (pf, pt) = (f - len, f);
            match previous_scan(pf, pt)? {
                Some(p) if p.totals.records > 0 => {
                    let (a, b) = bucket_range(&p, opts.bucket_us, Some(pf), Some(pt));
                    let ps = compute::series(&p, opts.bucket_us, a, b, pf, pt);
                    let interfaces = ps
                        .interfaces
                        .iter()
                        .map(|s| {
                            let now = series
                                .interfaces
                                .iter()
                                .find(|c| c.interface == s.interface && c.direction == s.direction)
                                .map_or(0.0, |c| c.bytes_per_sec_stats.p95);
                            PreviousSeries {
                                interface: s.interface.clone(),
                                direction: s.direction.clone(),
                                bytes: s.bytes,
                                packets: s.packets,
                                p95_bytes_per_sec: s.bytes_per_sec_stats.p95,
                                p95_change: change(now, s.bytes_per_sec_stats.p95),
                            }
                        })
                        .collect();
                    Some(Previous {
                        from_us: pf,
                        to_us: pt,
                        from: fmt_time(pf),
                        to: fmt_time(pt),
                        totals: p.totals,
                        bytes_change: change(agg.totals.bytes as f64, p.totals.bytes as f64),
                        packets_change: change(agg.totals.packets as f64, p.totals.packets as f64),
                        interfaces,
                    })
                }
                _ => None,
            }
        }
        None => None,
    };

    let capacity = opts
        .capacities
        .iter()
        .map(|(ifn, cap)| {
            let directions = series
                .interfaces
                .iter()
                .filter(|s| &s.interface == ifn)
                .map(|s| {
                    let p95 = s.bytes_per_sec_stats.p95 * 8.0;
                    let peak = s.bytes_per_sec_stats.peak * 8.0;
                    let slope = s.trend.bytes_per_sec_slope_per_day * 8.0;
                    let limit = opts.threshold * cap;
                    let (status, days) = if p95 >= limit {
                        ("above_threshold", None)
                    } else if slope > 0.0 {
                        ("growing", Some((limit - p95) / slope))
                    } else {
                        ("not_growing", None)
                    };
                    CapacityDirection {
                        direction: s.direction.clone(),
                        p95_bits_per_sec: p95,
                        peak_bits_per_sec: peak,
                        utilisation_p95: p95 / cap,
                        utilisation_peak: peak / cap,
                        trend_bits_per_sec_per_day: slope,
                        status: status.into(),
                        days_to_threshold: days,
                        reaches_threshold_at: days.and_then(|d| {
                            let us = range_to as f64 + d * 86_400e6;
                            // RFC 3339 ends at year 9999; further is reported as null.
                            (us < MAX_RFC3339_US as f64)
                                .then(|| fmt_time(us as i64 / 1_000_000 * 1_000_000))
                        }),
                    }
                })
                .collect();
            Capacity {
                interface: ifn.clone(),
                capacity_bits_per_sec: *cap,
                threshold: opts.threshold,
                directions,
            }
        })
        .collect();

    Ok(Report {
        format: FORMAT.to_string(),
        input: input_text,
        range: Range {
            from_us: range_from,
            to_us: range_to,
            from: fmt_time(range_from),
            to: fmt_time(range_to),
            seconds: (range_to - range_from) as f64 / 1e6,
            from_given: opts.from_us.is_some(),
            to_given: opts.to_us.is_some(),
        },
        observation_point: obs,
        observation_points,
        hosts,
        scan: scan_stats,
        totals: agg.totals,
        series,
        top,
        groups,
        growth: Growth { previous },
        capacity,
    })
}

/// `flowlens report`: builds the report and writes the requested outputs.
/// A report from `--from-json FILE` (see [`engine`]).
pub fn from_json(opts: &Options, path: &Path) -> Result<Report, ReportError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::Io(name.clone(), e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ReportError::Input(format!("{name}: not JSON: {e}")))?;
    let bad_json = |e: serde_json::Error| ReportError::Input(format!("{name}: {e}"));
    match v.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => serde_json::from_value(v).map_err(bad_json),
        Some(engine::AGG_FORMAT) => {
            let a: engine::Aggregates = serde_json::from_value(v).map_err(bad_json)?;
            if a.bucket_us < 1_000_000 || a.bucket_us % 1_000_000 != 0 || a.from_us >= a.to_us {
                return Err(ReportError::Input(format!(
                    "{name}: bad range or bucket (from_us {}, to_us {}, bucket_us {})",
                    a.from_us, a.to_us, a.bucket_us
                )));
            }
            let opts = Options {
                from_us: Some(a.from_us),
                to_us: Some(a.to_us),
                bucket_us: a.bucket_us,
                observation_point: Some(a.observation_point.clone()),
                ..opts.clone()
            };
            let agg = a.range.to_agg()?;
            let prev = a.previous.as_ref().map(|p| p.to_agg()).transpose()?;
            let len = a.to_us - a.from_us;
            let mut prev = Some(prev);
            let mut previous_scan = |pf: i64, pt: i64| {
                if (pf, pt) != (a.from_us - len, a.from_us) {
                    return Err(ReportError::Input(format!(
                        "{name}: the previous period must be [{pf}, {pt})"
                    )));
                }
                Ok(prev.take().flatten())
            };
            finish(
                &opts,
                format!("{} ({})", a.input, a.engine),
                a.observation_point.clone(),
                ScanStats::default(),
                agg,
                &mut previous_scan,
            )
        }
        f => Err(ReportError::Input(format!(
            "{name}: format {f:?} is neither {FORMAT:?} nor {:?}",
            engine::AGG_FORMAT
        ))),
    }
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let opts = args.resolve(now_us())?;
    let report = match &args.from_json {
        Some(p) => from_json(&opts, p)?,
        None => build(&opts)?,
    };
    let s = &report.scan;
    if s.rows_rejected + s.rows_clamped > 0 {
        eprintln!(
            "flowlens report: warning: {} rows rejected (null or negative packets/bytes, flow_end at or before 1970-01-01), {} rows with an unusable flow_start counted at flow_end (docs/REPORT.md)",
            s.rows_rejected, s.rows_clamped
        );
    }
    for c in &report.capacity {
        if c.directions.is_empty() {
            eprintln!(
                "flowlens report: warning: --link-capacity {}: no traffic on that interface in the range",
                c.interface
            );
        }
    }
    let json_stdout = args.json.as_deref() == Some(Path::new("-"));
    if let Some(p) = &args.json {
        let s = serde_json::to_string_pretty(&report).context("serialising the report")?;
        if json_stdout {
            println!("{s}");
        } else {
            std::fs::write(p, s + "\n").with_context(|| format!("writing {}", p.display()))?;
        }
    }
    if let Some(p) = &args.html {
        std::fs::write(p, html::render(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !json_stdout {
        print!("{}", text::render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10Gbit").unwrap(), 1e10);
        assert_eq!(parse_rate("2.5 mbit/s").unwrap(), 2.5e6);
        assert_eq!(parse_rate("100bit").unwrap(), 100.0);
        assert_eq!(parse_rate("1Tbit").unwrap(), 1e12);
        assert!(parse_rate("10GB").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("10").unwrap_err().contains("missing unit"));
        assert!(parse_rate("0Gbit").is_err());
        assert!(parse_rate("x.yGbit").is_err());
    }

    #[test]
    fn times() {
        let now = 1_795_675_443_000_000;
        assert_eq!(parse_time("--from", "now", now).unwrap(), now);
        assert_eq!(
            parse_time("--from", "-24h", now).unwrap(),
            now - 86_400_000_000
        );
        assert_eq!(
            parse_time("--from", "2026-11-26T06:44:03Z", now).unwrap(),
            1_795_675_443_000_000
        );
        assert_eq!(
            parse_time("--from", "2026-11-26", now).unwrap(),
            20_783 * 86_400_000_000
        );
        let e = parse_time("--from", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--from \"yesterday\""), "{e}");
        assert_eq!(fmt_time(1_795_675_443_000_000), "2026-11-26T06:44:03Z");
        assert_eq!(
            fmt_time(1_795_675_443_000_001),
            "2026-11-26T06:44:03.000001Z"
        );
    }

    #[test]
    fn prefixes_and_cidrs() {
        assert_eq!(
            parse_prefixes("24,64").unwrap(),
            Grouping::Prefix { v4: 24, v6: 64 }
        );
        assert_eq!(
            parse_prefixes("/48").unwrap(),
            Grouping::Prefix { v4: 24, v6: 48 }
        );
        assert_eq!(
            parse_prefixes("16").unwrap(),
            Grouping::Prefix { v4: 16, v6: 64 }
        );
        assert_eq!(
            parse_prefixes("v6/32,v4/8").unwrap(),
            Grouping::Prefix { v4: 8, v6: 32 }
        );
        assert!(parse_prefixes("v4/33").is_err());
        assert!(parse_prefixes("abc").is_err());
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(
            parse_cidr("10.0.0.1/8")
                .unwrap_err()
                .to_string()
                .contains("10.0.0.0/8")
        );
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("2001:db8::/129").is_err());
    }

    #[test]
    fn default_point() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            default_observation_point(&v(&["nf_local_in", "xdp"])).unwrap(),
            "xdp"
        );
        assert_eq!(
            default_observation_point(&v(&["nf_pre_routing", "nf_local_in"])).unwrap(),
            "nf_local_in"
        );
        assert_eq!(default_observation_point(&[]), None);
    }
}
