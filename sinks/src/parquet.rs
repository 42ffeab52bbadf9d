//! Parquet files in a local directory, Hive-style partitions.
//!
//! Layout: `DIR/date=YYYY-MM-DD/hour=HH/flows-<host>-<opened unix ms>-<pid>-<seq>.parquet`, partitioned
//! by each record's `flow_end` (UTC). A file is written as `.flows-….parquet.inprogress` (a hidden
//! name that Spark, DuckDB and Hive-style readers skip) and renamed only after its footer is
//! written and synced: a reader never sees a partial `.parquet` file, even if the process is
//! killed mid-file.
//!
//! Files rotate when they reach `rotate_bytes` or are `rotate_interval` old, and on close.
//!
//! **Journal** (with [`ParquetOptions::journal`], the default in `flowlens run`): every batch is
//! first appended (fdatasync'd) to a write-ahead journal in the spool directory, which should
//! be on another file system than the output. The journal is committed when the open files are
//! completed (with a journal all open files rotate together, so it is a plain FIFO). When
//! writing Parquet fails (disk full, I/O error), the open files are abandoned and deleted (their
//! rows are in the journal), new records go only to the journal, and every tick after a backoff
//! (1 s doubling to 30 s) the journal is replayed into new files; once it is written the sink
//! is back to normal. A flowlens killed with files open replays their rows from the journal at
//! the next start. Rows are lost only when the journal itself is full or failing.

use std::{
    collections::BTreeMap,
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arrow_schema::SchemaRef;
use flowlens_schema::record::{FlowRecord, arrow_schema, to_record_batch};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};

use crate::{Result, Sink, SinkError, log_limit::RateLimited, spool::Store};

/// Options of the Parquet sink.
#[derive(Clone, Debug)]
pub struct ParquetOptions {
    pub dir: PathBuf,
    /// Close a file once this many bytes are written (compressed, approximate).
    pub rotate_bytes: u64,
    /// Close a file this long after it was opened.
    pub rotate_interval: Duration,
    /// Exporter hostname, part of file names so several hosts can share one directory/bucket.
    pub host: Arc<str>,
    /// Write-ahead journal (see the module documentation); `None`: rows of a file that cannot
    /// be completed are lost (counted).
    pub journal: Option<JournalOptions>,
}

/// Where the Parquet sink keeps its write-ahead journal.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    pub dir: PathBuf,
    /// Bound of the journal on disk; past it records are lost (counted) while writing Parquet
    /// fails, or written unprotected otherwise.
    pub max_bytes: u64,
}

/// Records replayed from the journal per chunk while recovering (each chunk's files are
/// completed and the journal committed), and per tick.
const RECOVER_CHUNK: usize = 65_536;
const RECOVER_PER_TICK: usize = 8 * RECOVER_CHUNK;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

struct Journal {
    store: Store,
    /// Writing Parquet failed: records go only to the journal until it is replayed.
    degraded: bool,
    retry_at: Instant,
    backoff: Duration,
    /// Failed retries while degraded, journal append failures, records lost or unprotected:
    /// each logged once, then at most every 30 s with the number suppressed.
    log_failed: RateLimited,
    log_append: RateLimited,
    log_lost: RateLimited,
    log_unprotected: RateLimited,
    /// Rows in open files that the journal could not take (full or failing): lost if their
    /// file cannot be completed.
    unjournaled: u64,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    /// Rows accepted into this file so far.
    rows: u64,
    tmp: PathBuf,
    fin: PathBuf,
    opened: Instant,
}

pub struct ParquetSink {
    opts: ParquetOptions,
    name: String,
    schema: SchemaRef,
    props: WriterProperties,
    open: BTreeMap<(i64, u32), OpenFile>,
    seq: u64,
    /// Files completed so far (final paths), for logs and tests.
    pub completed: Vec<PathBuf>,
    /// Files completed since the last [`ParquetSink::take_new_files`], with their row counts.
    new_files: Vec<(PathBuf, u64)>,
    /// Whether to fill `new_files` (only a wrapping sink drains it).
    track_new_files: bool,
    /// Rows of files that could not be completed (left as `.inprogress`).
    lost: u64,
    /// Rows accepted into files so far.
    sent: u64,
    /// Rows in completed (renamed, fsynced) files.
    acknowledged: u64,
    journal: Option<Journal>,
}

/// Writer settings, in one place.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        // zstd level 3: the usual speed/size balance; flow records compress ~5-10x.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        // Row groups of 128k rows keep writer memory bounded (~tens of MB) while staying large
        // enough for efficient scans.
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_created_by(concat!("flowlens ", env!("CARGO_PKG_VERSION")).to_string())
        .build()
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Partition of a timestamp (µs since epoch, UTC): (days since epoch, hour).
fn partition_of(us: i64) -> (i64, u32) {
    let secs = us.div_euclid(1_000_000);
    (
        secs.div_euclid(86_400),
        (secs.rem_euclid(86_400) / 3600) as u32,
    )
}

/// `date=YYYY-MM-DD/hour=HH` for a timestamp in µs since the epoch.
pub fn partition_path(us: i64) -> String {
    let (days, hour) = partition_of(us);
    let (y, m, d) = civil_from_days(days);
    format!("date={y:04}-{m:02}-{d:02}/hour={hour:02}")
}

impl ParquetSink {
    /// The sink's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.opts.dir
    }

    /// Files completed (footer written, synced, renamed) since the last call, with their rows:
    /// what the object-storage sink uploads.
    pub fn take_new_files(&mut self) -> Vec<(PathBuf, u64)> {
        self.track_new_files = true;
        std::mem::take(&mut self.new_files)
    }

    /// Creates the directory if needed and checks that it is writable.
    pub fn new(opts: ParquetOptions) -> Result<Self> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| SinkError::io(format!("creating {}", opts.dir.display()), e))?;
        let probe = opts
            .dir
            .join(format!(".flowlens-write-test-{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| SinkError::io(format!("{} is not writable", opts.dir.display()), e))?;
        let journal = match &opts.journal {
            Some(j) => {
                let (store, _) = Store::open(
                    &j.dir,
                    j.max_bytes,
                    crate::spool::store::DEFAULT_SEGMENT_BYTES,
                )?;
                let degraded = store.pending() > 0;
                if degraded {
                    tracing::warn!(
                        journal = %j.dir.display(),
                        records = store.pending(),
                        "parquet: the journal holds records an earlier run did not get into complete files (killed, or writing failed); writing them now"
                    );
                }
                Some(Journal {
                    store,
                    degraded,
                    retry_at: Instant::now(),
                    backoff: RETRY_FIRST,
                    log_failed: RateLimited::default(),
                    log_append: RateLimited::default(),
                    log_lost: RateLimited::default(),
                    log_unprotected: RateLimited::default(),
                    unjournaled: 0,
                })
            }
            None => None,
        };
        let (stale, bytes) = stale_in_progress(&opts.dir, &opts.host);
        if !stale.is_empty() {
            let fate = if journal.as_ref().is_some_and(|j| j.degraded) {
                "their rows are written again from the journal"
            } else {
                "their rows were lost with it"
            };
            tracing::warn!(
                dir = %opts.dir.display(),
                files = stale.len(),
                bytes,
                first = %stale[0].display(),
                "unfinished Parquet files left by an earlier flowlens that was killed (SIGKILL, crash, power loss): {fate}; the files are hidden from readers and can be deleted"
            );
        }
        Ok(ParquetSink {
            name: format!("parquet:{}", opts.dir.display()),
            opts,
            schema: arrow_schema(),
            props: writer_properties(),
            open: BTreeMap::new(),
            seq: 0,
            completed: Vec::new(),
            new_files: Vec::new(),
            track_new_files: false,
            lost: 0,
            sent: 0,
            acknowledged: 0,
            journal,
        })
    }

    fn open_file(&mut self, sample_us: i64) -> Result<OpenFile> {
        let dir = self.opts.dir.join(partition_path(sample_us));
        std::fs::create_dir_all(&dir)
            .map_err(|e| SinkError::io(format!("creating {}", dir.display()), e))?;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.seq += 1;
        let base = format!(
            "flows-{}-{}-{}-{:04}.parquet",
            self.opts.host,
            ms,
            std::process::id(),
            self.seq
        );
        let tmp = dir.join(format!(".{base}.inprogress"));
        let fin = dir.join(base);
        let file = File::create(&tmp)
            .map_err(|e| SinkError::io(format!("creating {}", tmp.display()), e))?;
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))?;
        Ok(OpenFile {
            writer,
            rows: 0,
            tmp,
            fin,
            opened: Instant::now(),
        })
    }

    fn finish(&mut self, f: OpenFile) -> Result<()> {
        let (rows, tmp) = (f.rows, f.tmp.clone());
        let res = self.finish_inner(f);
        if res.is_err() && self.journal.is_some() {
            // Its rows are in the journal; the partial file would only hold space.
            let _ = std::fs::remove_file(&tmp);
        }
        if let Err(e) = &res
            && self.journal.is_none()
        {
            self.lost += rows;
            tracing::error!(file = %tmp.display(), rows, error = %e, "parquet file could not be completed; its rows are lost (the partial file stays as .inprogress)");
        }
        res
    }

    fn finish_inner(&mut self, f: OpenFile) -> Result<()> {
        let file = f.writer.into_inner()?;
        file.sync_all()
            .map_err(|e| SinkError::io(format!("syncing {}", f.tmp.display()), e))?;
        drop(file);
        std::fs::rename(&f.tmp, &f.fin).map_err(|e| {
            SinkError::io(
                format!("renaming {} to {}", f.tmp.display(), f.fin.display()),
                e,
            )
        })?;
        if let Some(dir) = f.fin.parent() {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        tracing::debug!(file = %f.fin.display(), "parquet file complete");
        self.acknowledged += f.rows;
        if self.track_new_files {
            self.new_files.push((f.fin.clone(), f.rows));
        }
        self.completed.push(f.fin);
        Ok(())
    }

    /// Closes files that are due (size or age); `all` closes every open file.
    fn rotate(&mut self, all: bool) -> Result<()> {
        let mut due: Vec<(i64, u32)> = self
            .open
            .iter()
            .filter(|(_, f)| {
                all || f.opened.elapsed() >= self.opts.rotate_interval
                    || f.writer.bytes_written() as u64 + f.writer.in_progress_size() as u64
                        >= self.opts.rotate_bytes
            })
            .map(|(k, _)| *k)
            .collect();
        if self.journal.is_some() && !due.is_empty() {
            // With a journal, files complete together so the journal stays a FIFO.
            due = self.open.keys().copied().collect();
        }
        let mut first_err = None;
        for k in due {
            if first_err.is_some() && self.journal.is_some() {
                break; // the rest is abandoned by `degrade`
            }
            if let Some(f) = self.open.remove(&k)
                && let Err(e) = self.finish(f)
            {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if self.open.is_empty()
            && let Some(j) = self.journal.as_mut()
            && !j.degraded
            && j.store.pending() > 0
        {
            // Every row journaled since the last commit is in a completed file now.
            let end = j.store.end_pos();
            let n = j.store.pending();
            j.store.commit(end, n)?;
            j.store.reset_if_empty()?;
            j.unjournaled = 0;
        }
        Ok(())
    }

    /// Writing Parquet failed: abandon (and delete) every open file, whose rows are in the
    /// journal, and keep new records in the journal until a retry succeeds.
    fn degrade(&mut self, e: &SinkError) {
        let open = std::mem::take(&mut self.open);
        for (_, f) in open {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        self.lost += j.unjournaled;
        let unjournaled = std::mem::take(&mut j.unjournaled);
        let first = !j.degraded;
        j.backoff = if first {
            RETRY_FIRST
        } else {
            (j.backoff * 2).min(RETRY_MAX)
        };
        j.degraded = true;
        j.retry_at = Instant::now() + j.backoff;
        j.store.rewind();
        // Entering the degraded state is always logged; failed retries are rate-limited.
        let limited = j.log_failed.check();
        if first || limited.is_some() {
            tracing::error!(
                sink = %self.name,
                error = %e,
                suppressed = limited.unwrap_or(0),
                journaled_records = j.store.pending(),
                lost_records = unjournaled,
                journal = %j.store.dir().display(),
                retry_in = ?j.backoff,
                "parquet: writing failed; records are kept in the journal and written when writing works again"
            );
        }
    }

    /// While degraded: replays the journal into new files (at most about `budget` records),
    /// completing them and committing the journal chunk by chunk. Returns whether the journal
    /// is written completely (the sink is back to normal).
    fn recover(&mut self, budget: usize) -> bool {
        let mut done = 0usize;
        let mut recs = Vec::with_capacity(RECOVER_CHUNK.min(budget));
        loop {
            let Some(j) = self.journal.as_mut() else {
                return true;
            };
            if j.store.unread() == 0 {
                if let Err(e) = j.store.reset_if_empty() {
                    tracing::warn!(error = %e, "parquet journal: starting a fresh segment");
                }
                j.degraded = false;
                j.backoff = RETRY_FIRST;
                tracing::info!(sink = %self.name, records = done, "parquet: writing works again; the journal is written");
                return true;
            }
            if done >= budget {
                return false;
            }
            recs.clear();
            let pos = match j.store.read(RECOVER_CHUNK, &mut recs) {
                Ok(p) => p,
                Err(e) => {
                    self.degrade(&e);
                    return false;
                }
            };
            let n = recs.len() as u64;
            if let Err(e) = self.write_records(&recs).and_then(|()| self.rotate(true)) {
                self.degrade(&e);
                return false;
            }
            let Some(j) = self.journal.as_mut() else {
                return true;
            };
            if let Err(e) = j.store.commit(pos, n) {
                tracing::error!(error = %e, "parquet journal: commit failed (these records may be written twice)");
            }
            done += recs.len();
        }
    }
}

/// Hidden `.flows-HOST-MS-PID-SEQ.parquet.inprogress` files of this host under `dir` whose
/// writer process no longer runs, and their total size.
fn stale_in_progress(dir: &std::path::Path, host: &str) -> (Vec<PathBuf>, u64) {
    let (mut stale, mut bytes) = (Vec::new(), 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                // Only the sink's own partition directories.
                if e.file_name().to_string_lossy().contains('=') {
                    stack.push(e.path());
                }
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name
                .strip_prefix(".flows-")
                .and_then(|n| n.strip_suffix(".parquet.inprogress"))
            else {
                continue;
            };
            // HOST may contain '-': split from the right.
            let mut parts = stem.rsplitn(4, '-');
            let (_seq, pid, _ms, file_host) =
                (parts.next(), parts.next(), parts.next(), parts.next());
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let alive =
                pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists();
            if file_host == Some(host) && !alive {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                stale.push(e.path());
            }
        }
    }
    stale.sort();
    (stale, bytes)
}

impl Sink for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(j) = self.journal.as_mut() else {
            self.write_records(records)?;
            return self.rotate(false);
        };
        let stored = match j.store.append(records) {
            Ok(n) => n,
            Err(e) => {
                if let Some(suppressed) = j.log_append.check() {
                    tracing::error!(error = %e, suppressed, "parquet journal: append failed");
                }
                0
            }
        };
        let unstored = (records.len() - stored) as u64;
        self.sent += records.len() as u64;
        if j.degraded {
            if unstored > 0 {
                self.lost += unstored;
                if let Some(suppressed) = j.log_lost.check() {
                    tracing::error!(sink = %self.name, lost_records = unstored, total_lost = self.lost, suppressed, journal = %j.store.dir().display(), "parquet: writing fails and the journal is full; records lost");
                }
            }
            return Ok(());
        }
        if unstored > 0 {
            j.unjournaled += unstored;
            if let Some(suppressed) = j.log_unprotected.check() {
                tracing::warn!(sink = %self.name, records = unstored, suppressed, "parquet journal full or failing: records written without a journal copy");
            }
        }
        if let Err(e) = self
            .write_records(records)
            .and_then(|()| self.rotate(false))
        {
            self.degrade(&e);
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        match self.journal.as_ref() {
            None => self.rotate(false),
            Some(j) if j.degraded => {
                if Instant::now() >= j.retry_at {
                    self.recover(RECOVER_PER_TICK);
                }
                Ok(())
            }
            Some(_) => {
                if let Err(e) = self.rotate(false) {
                    self.degrade(&e);
                }
                Ok(())
            }
        }
    }

    fn close(&mut self) -> Result<()> {
        let Some(j) = self.journal.as_ref() else {
            return self.rotate(true);
        };
        if !j.degraded
            && let Err(e) = self.rotate(true)
        {
            self.degrade(&e);
        }
        if self.journal.as_ref().is_some_and(|j| j.degraded) && !self.recover(usize::MAX) {
            let left = self
                .journal
                .as_ref()
                .map(|j| (j.store.pending(), j.store.dir().display().to_string()));
            if let Some((records, journal)) = left {
                tracing::warn!(sink = %self.name, records, %journal, "parquet: records stay in the journal; the next start writes them");
            }
        }
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.lost
    }

    fn metrics(&self) -> crate::SinkMetrics {
        // The journal counts as a spool only while it holds a backlog (writing Parquet fails);
        // in normal operation it mirrors the open files, which `queued` already reports.
        let (spooled, spool_bytes) = match &self.journal {
            Some(j) if j.degraded => (j.store.pending(), j.store.bytes()),
            _ => (0, 0),
        };
        crate::SinkMetrics {
            sent: self.sent,
            acknowledged: self.acknowledged,
            queued: self.open.values().map(|f| f.rows).sum(),
            lost: self.lost,
            spooled,
            spool_bytes,
            ..Default::default()
        }
    }
}

impl ParquetSink {
    /// Writes records into the open files of their partitions (no rotation).
    fn write_records(&mut self, records: &[FlowRecord]) -> Result<()> {
        // Group by partition; records usually all fall into one hour.
        let first = partition_of(records[0].flow_end_us);
        if records.iter().all(|r| partition_of(r.flow_end_us) == first) {
            self.write_partition(first, records)?;
        } else {
            let mut idx: BTreeMap<(i64, u32), Vec<FlowRecord>> = BTreeMap::new();
            for r in records {
                idx.entry(partition_of(r.flow_end_us))
                    .or_default()
                    .push(r.clone());
            }
            for (part, recs) in idx {
                self.write_partition(part, &recs)?;
            }
        }
        Ok(())
    }

    fn write_partition(&mut self, part: (i64, u32), records: &[FlowRecord]) -> Result<()> {
        if !self.open.contains_key(&part) {
            let f = self.open_file(records[0].flow_end_us)?;
            self.open.insert(part, f);
        }
        let batch = to_record_batch(&self.schema, records)?;
        let f = self.open.get_mut(&part).ok_or_else(|| SinkError::Spec {
            spec: self.name.clone(),
            reason: "internal: partition vanished".into(),
        })?;
        if let Err(e) = f.writer.write(&batch) {
            if self.journal.is_some() {
                // The caller abandons every open file; their rows are in the journal.
                return Err(e.into());
            }
            // The writer may be unusable now: abandon the file (its earlier rows are lost and
            // counted; this batch is reported by the caller through the error).
            if let Some(f) = self.open.remove(&part) {
                self.lost += f.rows;
                tracing::error!(file = %f.tmp.display(), rows = f.rows, error = %e, "abandoning parquet file after a write error; its rows are lost");
            }
            return Err(e.into());
        }
        f.rows += records.len() as u64;
        if self.journal.is_none() {
            // With a journal, `write` counts each record once as it enters the journal
            // (journal replays write the same records again).
            self.sent += records.len() as u64;
        }
        Ok(())
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if !self.open.is_empty()
            && let Err(e) = self.rotate(true)
        {
            tracing::error!(error = %e, "closing parquet files on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use flowlens_schema::flow::{FlowKey, OBS_XDP};
    use flowlens_schema::record::{EndReason, FlowRecord};

    fn record(end_us: i64) -> FlowRecord {
        let mut key = FlowKey::ZERO;
        key.ip_version = 4;
        key.protocol = 17;
        key.observation_point = OBS_XDP;
        FlowRecord {
            flow_start_us: end_us - 1_000,
            flow_end_us: end_us,
            key,
            interface_name: "eth0".into(),
            packets: 1,
            bytes: 100,
            tcp_flags: 0,
            dscp: 0,
            end_reason: EndReason::IdleTimeout,
            host: "h".into(),
            community_id: String::new(),
        }
    }

    /// Metrics follow the file life cycle: rows are `queued` while their file is open and
    /// `acknowledged` once it is renamed; completed files hold exactly those rows.
    #[test]
    fn metrics_follow_file_lifecycle() {
        let dir = std::env::temp_dir().join(format!("flowlens-pq-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = ParquetSink::new(ParquetOptions {
            dir: dir.clone(),
            rotate_bytes: u64::MAX,
            rotate_interval: Duration::from_secs(3600),
            host: "h".into(),
            journal: None,
        })
        .unwrap();
        let hour0 = 1_700_000_000_000_000i64;
        let recs: Vec<FlowRecord> = (0..10)
            .map(|i| record(hour0 + i * 400_000_000_000 / 10))
            .collect();
        sink.write(&recs).unwrap();
        let m = sink.metrics();
        assert_eq!((m.sent, m.acknowledged, m.queued, m.lost), (10, 0, 10, 0));
        sink.close().unwrap();
        let m = sink.metrics();
        assert_eq!((m.sent, m.acknowledged, m.queued, m.lost), (10, 10, 0, 0));
        assert!(sink.completed.len() >= 2, "records span several hours");
        let rows: i64 = sink
            .completed
            .iter()
            .map(|p| {
                let f = File::open(p).unwrap();
                ::parquet::file::reader::SerializedFileReader::new(f)
                    .map(|r| {
                        ::parquet::file::reader::FileReader::metadata(&r)
                            .file_metadata()
                            .num_rows()
                    })
                    .unwrap()
            })
            .sum();
        assert_eq!(rows, 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2026-11-26T06:44:03Z
        assert_eq!(
            partition_path(1_795_675_443_000_000),
            "date=2026-11-26/hour=06"
        );
    }
}
