//! `flowlens report --from-json FILE`: a report from what another engine computed (issue 16).
//!
//! The scan of the lake — the part that grows with the number of rows — is plain SQL in
//! `report/sql/` (DuckDB, ClickHouse, Spark SQL): filters, the bad-row rules, the spreading of
//! each record over the buckets it overlaps (in the same fixed point as [`compute`]), and
//! group-bys per observation point, host, series bucket, address, conversation and service.
//! `report/sql/run.py` runs it and writes a `flowlens-aggregates/1` JSON file; this module turns
//! that into the same aggregate a local scan builds, and [`crate::finish`] makes the report
//! from it with the very code a local report uses, so the numbers are identical.
//!
//! A `flowlens-report/1` file (the `--json` of a report) is read back as is, to render it
//! (`--html`, the terminal table) somewhere else.

use serde::Deserialize;

use crate::{
    ReportError,
    compute::{Agg, Counts},
};

/// Format tag of the aggregates file.
pub const AGG_FORMAT: &str = "flowlens-aggregates/1";

/// Records, packets and bytes of one key.
#[derive(Clone, Debug, Deserialize)]
pub struct Row {
    pub key: Option<String>,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Row {
    pub fn counts(&self) -> Counts {
        Counts {
            records: self.records,
            packets: self.packets,
            bytes: self.bytes,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct SeriesRow {
    pub interface: String,
    pub direction: String,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// One bucket of one series: fixed-point sums (decimal strings: they exceed 2^64).
#[derive(Clone, Debug, Deserialize)]
pub struct BucketRow {
    pub interface: String,
    pub direction: String,
    pub bucket: i64,
    pub bytes_fixed: String,
    pub packets_fixed: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PairRow {
    pub a: String,
    pub z: String,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServiceRow {
    pub transport: String,
    pub port: u16,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The aggregates of one period.
#[derive(Clone, Debug, Deserialize)]
pub struct Part {
    pub rows_read: u64,
    pub rows_rejected: u64,
    pub rows_clamped: u64,
    pub min_end: Option<i64>,
    pub max_end: Option<i64>,
    pub totals: Row,
    /// Every observation point in the range (not only the selected one).
    pub observation_points: Vec<Row>,
    pub hosts: Vec<Row>,
    pub series: Vec<SeriesRow>,
    pub buckets: Vec<BucketRow>,
    #[serde(default)]
    pub sources: Vec<Row>,
    #[serde(default)]
    pub destinations: Vec<Row>,
    #[serde(default)]
    pub conversations: Vec<PairRow>,
    #[serde(default)]
    pub services: Vec<ServiceRow>,
}

/// What `report/sql/run.py` writes.
#[derive(Clone, Debug, Deserialize)]
pub struct Aggregates {
    pub format: String,
    /// Engine and version, e.g. `duckdb 1.2.0` (shown as the report's input).
    pub engine: String,
    pub input: String,
    pub from_us: i64,
    pub to_us: i64,
    pub bucket_us: i64,
    pub observation_point: String,
    pub range: Part,
    /// `[from - (to - from), from)`, for the growth section.
    pub previous: Option<Part>,
}

impl Part {
    /// The aggregate a local scan of the same rows would have built.
    pub fn to_agg(&self) -> Result<Agg, ReportError> {
        let mut a = Agg::default();
        a.rows_read = self.rows_read;
        a.rows_rejected = self.rows_rejected;
        a.rows_clamped = self.rows_clamped;
        a.min_end = self.min_end;
        a.max_end = self.max_end;
        a.totals = self.totals.counts();
        for o in &self.observation_points {
            let name = o
                .key
                .clone()
                .ok_or_else(|| ReportError::Input("aggregates: null observation point".into()))?;
            a.observation_points.insert(name, o.counts());
        }
        for h in &self.hosts {
            a.hosts.insert(h.key.clone(), h.counts());
        }
        for s in &self.series {
            a.set_series_counts(
                &s.interface,
                &s.direction,
                Counts {
                    records: s.records,
                    packets: s.packets,
                    bytes: s.bytes,
                },
            );
        }
        let fixed = |s: &str| {
            s.parse::<u128>()
                .map_err(|_| ReportError::Input(format!("aggregates: bad fixed-point sum {s:?}")))
        };
        for b in &self.buckets {
            a.add_bucket(
                &b.interface,
                &b.direction,
                b.bucket,
                fixed(&b.bytes_fixed)?,
                fixed(&b.packets_fixed)?,
            )?;
        }
        let name = |r: &Row| {
            r.key
                .clone()
                .ok_or_else(|| ReportError::Input("aggregates: null address".into()))
        };
        for r in &self.sources {
            a.add_source(&name(r)?, r.counts());
        }
        for r in &self.destinations {
            a.add_destination(&name(r)?, r.counts());
        }
        for c in &self.conversations {
            a.add_conversation(
                &c.a,
                &c.z,
                Counts {
                    records: c.records,
                    packets: c.packets,
                    bytes: c.bytes,
                },
            );
        }
        for s in &self.services {
            a.add_service(
                &s.transport,
                s.port,
                Counts {
                    records: s.records,
                    packets: s.packets,
                    bytes: s.bytes,
                },
            );
        }
        Ok(a)
    }
}
