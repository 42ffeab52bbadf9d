//! Finding and reading the Parquet files: Hive partition pruning by directory name, row-group
//! pruning by `flow_end` statistics, column projection, and a parallel scan (one work item per
//! row group, pulled by `threads` workers) with progress on stderr.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use parquet::{
    arrow::{
        ProjectionMask,
        arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder},
    },
    file::statistics::Statistics,
};
use serde::Serialize;

use super::{
    ReportError,
    compute::{Agg, Selection},
    normalize::{OPTIONAL, REQUIRED, normalize},
    remote::{Object, Remote},
};

/// Where the lake is: a local directory or an S3 prefix (`--input`, repeatable).
#[derive(Clone)]
pub enum Input {
    Dir(PathBuf),
    S3 { remote: Arc<Remote>, prefix: String },
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Dir(d) => write!(f, "{}", d.display()),
            Input::S3 { remote, prefix } => write!(f, "s3://{}/{prefix}", remote.bucket()),
        }
    }
}

/// One file of the lake.
pub enum Source {
    Local(PathBuf),
    Remote(Object),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Remote(o) => o.url(),
        }
    }
}

/// `[start, end)` in µs of a `date=YYYY-MM-DD[/hour=HH]` path, if the path has such components
/// (the layout the sinks write: [`flowlens_schema::layout`]).
pub fn partition_interval(path: &Path) -> Option<(i64, i64)> {
    flowlens_schema::layout::interval_of_path(path)
}

/// The file's Arrow schema with `source_address`/`destination_address` as
/// `Dictionary(Int32, Utf8)` (when they are `Utf8`).
fn dictionary_hint(schema: &arrow_schema::SchemaRef) -> arrow_schema::SchemaRef {
    use arrow_schema::{DataType, Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if super::compute::DICTIONARY_COLUMNS.contains(&f.name().as_str())
                && *f.data_type() == DataType::Utf8
            {
                f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Counters of what was read and skipped (part of the JSON report).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct ScanStats {
    /// Partition directories skipped by name (their files were never listed).
    pub partitions_pruned: u64,
    /// `.parquet` files listed in the kept partitions.
    pub files: u64,
    /// Files all of whose row groups were pruned by statistics.
    pub files_pruned: u64,
    pub row_groups: u64,
    pub row_groups_pruned: u64,
    /// Rows decoded (in kept row groups).
    pub rows_read: u64,
    /// Rows that passed the time range and observation point filter.
    pub rows_selected: u64,
    /// Rows not counted (null or negative counts, `flow_end` at or before the epoch).
    pub rows_rejected: u64,
    /// Selected rows whose `flow_start` was unusable (null, at/before the epoch, after
    /// `flow_end`, or more than a day before it): counted at `flow_end` in the time series.
    pub rows_clamped: u64,
}

/// One row group to read.
struct Unit {
    file: usize,
    row_group: usize,
    rows: u64,
}

/// The files and row groups a scan will read, with their footers loaded once.
pub struct Plan {
    files: Vec<(Source, ArrowReaderMetadata)>,
    units: Vec<Unit>,
    pub stats: ScanStats,
    /// Observation points present in the kept row groups according to their statistics:
    /// every row group's min and max value (exact for the names flowlens writes, see
    /// `default_observation_point`). `None` if some row group has no statistics.
    pub observation_points_in_stats: Option<Vec<String>>,
}

/// Min and max of an INT64 timestamp column chunk in µs (`per_us`: the file's unit per µs, as
/// a multiplier or, for nanoseconds, a divisor). INT96 (Spark's default) has no usable
/// statistics: such row groups are never pruned.
fn i64_stats(s: Option<&Statistics>, per_us: Result<i64, i64>) -> Option<(i64, i64)> {
    let (a, b) = match s? {
        Statistics::Int64(v) => (*v.min_opt()?, *v.max_opt()?),
        _ => return None,
    };
    match per_us {
        Ok(m) => Some((a.checked_mul(m)?, b.checked_mul(m)?)),
        Err(d) => Some((a.div_euclid(d), b.div_euclid(d))),
    }
}

/// The unit of `flow_end` in a file's Arrow schema, for [`i64_stats`] (`None`: don't prune).
fn time_unit(schema: &arrow_schema::Schema) -> Option<Result<i64, i64>> {
    use arrow_schema::{DataType, TimeUnit};
    match schema.field_with_name("flow_end").ok()?.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => Some(Ok(1_000_000)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Some(Ok(1000)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(Ok(1)),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(Err(1000)),
        _ => None,
    }
}

fn str_stats(s: Option<&Statistics>) -> Option<(String, String)> {
    match s? {
        Statistics::ByteArray(v) => Some((
            v.min_opt()?.as_utf8().ok()?.to_string(),
            v.max_opt()?.as_utf8().ok()?.to_string(),
        )),
        _ => None,
    }
}

/// Lists the files under `dir` whose partitions overlap `[from, to)` and keeps the row groups
/// whose `flow_end` statistics overlap it.
pub fn plan(inputs: &[Input], from_us: i64, to_us: i64) -> Result<Plan, ReportError> {
    let mut stats = ScanStats::default();
    let mut pruned = 0u64;
    let mut keep = |p: &Path| match partition_interval(p) {
        Some((a, b)) if b <= from_us || a >= to_us => {
            pruned += 1;
            false
        }
        _ => true,
    };
    let mut sources = Vec::new();
    for input in inputs {
        match input {
            Input::Dir(dir) => sources.extend(
                crate::top::parquet_files_where(dir, &mut keep)
                    .map_err(|e| ReportError::Input(format!("{e:#}")))?
                    .into_iter()
                    .map(Source::Local),
            ),
            Input::S3 { remote, prefix } => sources.extend(
                remote
                    .list(prefix, &mut keep)?
                    .into_iter()
                    .map(Source::Remote),
            ),
        }
    }
    stats.partitions_pruned = pruned;
    let mut files = Vec::new();
    let mut units = Vec::new();
    let mut obs: Option<Vec<String>> = Some(Vec::new());
    for src in sources {
        let (name, key) = match &src {
            Source::Local(p) => (p.display().to_string(), p.clone()),
            Source::Remote(o) => (o.url(), PathBuf::from(o.path.as_ref())),
        };
        // Files outside the partition range (e.g. a file placed by hand) are checked too.
        if let Some((a, b)) = partition_interval(&key)
            && (b <= from_us || a >= to_us)
        {
            continue;
        }
        stats.files += 1;
        let md = match &src {
            Source::Local(p) => {
                let f = File::open(p).map_err(|e| ReportError::Io(name.clone(), e))?;
                ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
            }
            Source::Remote(o) => {
                let footer = o.remote.footer(o)?;
                ArrowReaderMetadata::load(&footer, ArrowReaderOptions::new())
            }
        };
        let md = md
            .and_then(|md| {
                // Read the address columns as dictionaries: the aggregation then interns each
                // distinct address once per column chunk instead of once per row.
                let hint = dictionary_hint(md.schema());
                ArrowReaderMetadata::try_new(
                    md.metadata().clone(),
                    ArrowReaderOptions::new().with_schema(hint),
                )
            })
            .map_err(|e| ReportError::Parquet(name.clone(), e))?;
        let schema = md.metadata().file_metadata().schema_descr();
        let col_idx = |name: &str| schema.columns().iter().position(|c| c.name() == name);
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| col_idx(c).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(ReportError::Schema(format!(
                "{name}: no column {} (flowlens report needs {})",
                missing.join(", no column "),
                REQUIRED.join(", ")
            )));
        }
        let (Some(end_i), Some(obs_i)) = (col_idx("flow_end"), col_idx("observation_point")) else {
            return Err(ReportError::Schema(format!(
                "{name}: no flow_end/observation_point column"
            )));
        };
        let unit = time_unit(md.schema());
        let before = units.len();
        for (rg_i, rg) in md.metadata().row_groups().iter().enumerate() {
            stats.row_groups += 1;
            if let Some((min, max)) = unit.and_then(|u| i64_stats(rg.column(end_i).statistics(), u))
                && (max < from_us || min >= to_us)
            {
                stats.row_groups_pruned += 1;
                continue;
            }
            if rg.num_rows() == 0 {
                continue;
            }
            match (&mut obs, str_stats(rg.column(obs_i).statistics())) {
                (Some(v), Some((a, b))) => {
                    v.push(a);
                    v.push(b);
                }
                (o, _) => *o = None,
            }
            units.push(Unit {
                file: files.len(),
                row_group: rg_i,
                rows: rg.num_rows() as u64,
            });
        }
        if units.len() == before {
            stats.files_pruned += 1;
        }
        files.push((src, md));
    }
    if let Some(v) = &mut obs {
        v.sort();
        v.dedup();
    }
    Ok(Plan {
        files,
        units,
        stats,
        observation_points_in_stats: obs,
    })
}

impl Plan {
    pub fn rows(&self) -> u64 {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// Distinct values of `observation_point` in the planned row groups (reads only that column).
    pub fn read_observation_points(&self) -> Result<Vec<String>, ReportError> {
        let mut out: Vec<String> = Vec::new();
        for u in &self.units {
            self.read_row_group(u, &["observation_point"], &mut |batch| {
                let a = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .ok_or_else(|| "observation_point is not text".to_string())?;
                for v in a.iter().flatten() {
                    if !out.iter().any(|o| o == v) {
                        out.push(v.to_string());
                    }
                }
                Ok(())
            })?;
        }
        out.sort();
        Ok(out)
    }

    /// Reads every planned row group (projected to [`COLUMNS`]) into per-thread aggregates and
    /// merges them. Progress goes to stderr every second unless `quiet`.
    pub fn scan(
        &self,
        sel: &Selection,
        threads: usize,
        quiet: bool,
        label: &str,
    ) -> Result<Agg, ReportError> {
        let next = AtomicUsize::new(0);
        let rows_done = AtomicU64::new(0);
        let units_done = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let first_err: Mutex<Option<ReportError>> = Mutex::new(None);
        let total_rows = self.rows();
        let t0 = Instant::now();
        let threads = threads.clamp(1, self.units.len().max(1));
        let result = std::thread::scope(|s| {
            let progress = (!quiet).then(|| {
                s.spawn(|| {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        if last.elapsed() >= Duration::from_secs(1) {
                            last = Instant::now();
                            let _ = writeln!(
                                std::io::stderr(),
                                "flowlens report: {label}: {}/{} row groups, {}/{} rows, {:.1} s",
                                units_done.load(Ordering::Relaxed),
                                self.units.len(),
                                rows_done.load(Ordering::Relaxed),
                                total_rows,
                                t0.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            });
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut agg = Agg::default();
                        loop {
                            if first_err.lock().map(|e| e.is_some()).unwrap_or(true) {
                                break;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(u) = self.units.get(i) else { break };
                            if let Err(e) = self.read_unit(u, sel, &mut agg, &rows_done) {
                                if let Ok(mut slot) = first_err.lock() {
                                    slot.get_or_insert(e);
                                }
                                break;
                            }
                            units_done.fetch_add(1, Ordering::Relaxed);
                        }
                        agg
                    })
                })
                .collect();
            // The first worker's aggregate is the base (no copy); the others merge into it.
            let mut total: Option<Agg> = None;
            for w in workers {
                match w.join() {
                    Ok(a) => match &mut total {
                        Some(t) => t.merge(a),
                        None => total = Some(a),
                    },
                    Err(_) => {
                        if let Ok(mut slot) = first_err.lock() {
                            slot.get_or_insert(ReportError::Input("a scan thread panicked".into()));
                        }
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(p) = progress {
                let _ = p.join();
            }
            total.unwrap_or_default()
        });
        if let Some(e) = first_err.into_inner().ok().flatten() {
            return Err(e);
        }
        if !quiet {
            let secs = t0.elapsed().as_secs_f64();
            let _ = writeln!(
                std::io::stderr(),
                "flowlens report: {label}: scanned {} files, {} row groups, {} rows in {:.2} s ({:.0} rows/s)",
                self.files.len() as u64 - self.stats.files_pruned,
                self.units.len(),
                result.rows_read,
                secs,
                result.rows_read as f64 / secs.max(1e-9)
            );
        }
        Ok(result)
    }

    fn read_unit(
        &self,
        u: &Unit,
        sel: &Selection,
        agg: &mut Agg,
        rows_done: &AtomicU64,
    ) -> Result<(), ReportError> {
        let mut agg_err = None;
        let group_cols = match sel.group_by {
            Some(g) if sel.talkers => g.columns(),
            _ => Vec::new(),
        };
        let columns: Vec<&str> = REQUIRED
            .iter()
            .chain(OPTIONAL)
            .copied()
            .chain(group_cols.iter().map(String::as_str))
            .collect();
        self.read_row_group(u, &columns, &mut |batch| {
            if let Err(e) = agg.add_batch(sel, batch) {
                let msg = e.to_string();
                agg_err = Some(e);
                return Err(msg);
            }
            rows_done.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            Ok(())
        })
        .map_err(|e| match (agg_err, e) {
            // Errors about the selection as a whole (e.g. too many buckets) stay as they are.
            (Some(a @ ReportError::Input(_)), _) => a,
            (_, e) => e,
        })
    }

    /// Reads `columns` (those the file has) of one row group, normalised (see
    /// [`crate::normalize`]), into `f`. Errors name the file and the row group.
    fn read_row_group(
        &self,
        u: &Unit,
        columns: &[&str],
        f: &mut dyn FnMut(&arrow_array::RecordBatch) -> Result<(), String>,
    ) -> Result<(), ReportError> {
        let (src, md) = &self.files[u.file];
        let name = src.name();
        let at = |e: &dyn std::fmt::Display| {
            ReportError::Schema(format!("{name}: row group {}: {e}", u.row_group))
        };
        let pq = md.metadata().file_metadata().schema_descr();
        let mask = ProjectionMask::columns(pq, columns.iter().copied());
        let mut run = |reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader| {
            for batch in reader {
                let batch = batch.map_err(|e| at(&e))?;
                let batch = normalize(&batch).map_err(|e| at(&e))?;
                f(&batch).map_err(|e| at(&e))?;
            }
            Ok::<(), ReportError>(())
        };
        match src {
            Source::Local(path) => {
                let file = File::open(path).map_err(|e| ReportError::Io(name.clone(), e))?;
                let r = ParquetRecordBatchReaderBuilder::new_with_metadata(file, md.clone())
                    .with_projection(mask)
                    .with_row_groups(vec![u.row_group])
                    .with_batch_size(8192)
                    .build()
                    .map_err(|e| ReportError::Parquet(name.clone(), e))?;
                run(r)
            }
            Source::Remote(o) => {
                // The byte ranges of the projected column chunks, fetched in one go.
                let rg = md.metadata().row_group(u.row_group);
                let mut ranges = Vec::new();
                for (i, c) in rg.columns().iter().enumerate() {
                    if !mask.leaf_included(i) {
                        continue;
                    }
                    let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
                    let len = c.compressed_size();
                    if start < 0 || len < 0 || (start + len) as u64 > o.size {
                        return Err(at(&"column chunk outside the file"));
                    }
                    ranges.push(start as u64..(start + len) as u64);
                }
                let data = o.remote.fetch(o, ranges)?;
                let r = ParquetRecordBatchReaderBuilder::new_with_metadata(data, md.clone())
                    .with_projection(mask)
                    .with_row_groups(vec![u.row_group])
                    .with_batch_size(8192)
                    .build()
                    .map_err(|e| ReportError::Parquet(name.clone(), e))?;
                run(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_intervals() {
        // 2026-11-26 = day 20418.
        let day = 20_783 * 86_400_000_000i64;
        assert_eq!(
            partition_interval(Path::new("/x/date=2026-11-26/hour=07/f.parquet")),
            Some((day + 7 * 3_600_000_000, day + 8 * 3_600_000_000))
        );
        assert_eq!(
            partition_interval(Path::new("/x/date=2026-11-26")),
            Some((day, day + 86_400_000_000))
        );
        assert_eq!(partition_interval(Path::new("/x/other/f.parquet")), None);
        // Dates written by an independent formatter (humantime), and one before the epoch.
        for d in [0u64, 19_723, 19_782, 20_783] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(d * 86_400);
            let date = humantime::format_rfc3339_seconds(t).to_string();
            assert_eq!(
                flowlens_schema::layout::parse_date(&date[..10]),
                Some(d as i64),
                "{date}"
            );
        }
        assert_eq!(flowlens_schema::layout::parse_date("1969-12-31"), Some(-1));
        // The directory the sinks write for a timestamp is that timestamp's hour.
        let us = day + 7 * 3_600_000_000 + 1;
        let written = format!("/x/{}", flowlens_schema::layout::partition_path(us));
        assert_eq!(
            partition_interval(Path::new(&written)),
            Some((day + 7 * 3_600_000_000, day + 8 * 3_600_000_000))
        );
    }
}
