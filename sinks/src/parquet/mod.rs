//! Parquet files in a local directory, Hive-style partitions.
//!
//! Layout ([`flowlens_schema::layout`], shared with the report):
//! `DIR/date=YYYY-MM-DD/hour=HH/flows-<host>-<opened unix ms>-<pid>-<seq>.parquet`, partitioned
//! by each record's `flow_end` (UTC). A file is written as `.flows-….parquet.inprogress` (a hidden
//! name that Spark, DuckDB and Hive-style readers skip) and renamed only after its footer is
//! written and synced: a reader never sees a partial `.parquet` file, even if the process is
//! killed mid-file. Rows count as acknowledged only once the rename itself is synced (the
//! directory fsync); if that fails, the file goes back to its hidden name and is not complete.
//!
//! Modules: [`writer`] (one file: create, append, complete), [`journal`] (the write-ahead
//! journal and its recovery state); this module is the sink that drives both.
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

pub mod journal;
pub mod writer;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_schema::SchemaRef;
use flowlens_schema::{
    layout::Partition,
    record::{FlowRecord, arrow_schema, to_record_batch},
};
use parquet::file::properties::WriterProperties;

pub use self::{journal::JournalOptions, writer::writer_properties};
use self::{
    journal::{Journal, RECOVER_CHUNK, RECOVER_PER_TICK},
    writer::{OpenFile, SyncDir},
};
use crate::{Result, Sink, SinkError};

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

pub struct ParquetSink {
    opts: ParquetOptions,
    name: String,
    schema: SchemaRef,
    props: WriterProperties,
    open: BTreeMap<Partition, OpenFile>,
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
    /// `writer::sync_dir`, or a failing one in tests.
    sync_dir: SyncDir,
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
        std::fs::File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| SinkError::io(format!("{} is not writable", opts.dir.display()), e))?;
        let journal = opts.journal.as_ref().map(Journal::open).transpose()?;
        let (stale, bytes) = writer::stale_in_progress(&opts.dir, &opts.host);
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
            sync_dir: writer::sync_dir,
        })
    }

    fn open_file(&mut self, part: Partition) -> Result<OpenFile> {
        self.seq += 1;
        OpenFile::create(
            &self.opts.dir,
            part,
            &self.opts.host,
            self.seq,
            self.schema.clone(),
            self.props.clone(),
        )
    }

    fn finish(&mut self, f: OpenFile) -> Result<()> {
        let (rows, tmp, fin) = (f.rows, f.tmp.clone(), f.fin.clone());
        let res = self.finish_inner(f);
        if res.is_err() && self.journal.is_some() {
            // Its rows are in the journal; the partial file would only hold space (and a file
            // left under its final name would duplicate them when the journal is replayed).
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&fin);
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
        let rows = f.rows;
        let fin = f.complete(self.sync_dir)?;
        tracing::debug!(file = %fin.display(), "parquet file complete");
        self.acknowledged += rows;
        if self.track_new_files {
            self.new_files.push((fin.clone(), rows));
        }
        self.completed.push(fin);
        Ok(())
    }

    /// Closes files that are due (size or age); `all` closes every open file.
    fn rotate(&mut self, all: bool) -> Result<()> {
        let mut due: Vec<Partition> = self
            .open
            .iter()
            .filter(|(_, f)| {
                all || f.opened.elapsed() >= self.opts.rotate_interval
                    || f.size() >= self.opts.rotate_bytes
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
            j.commit_all()?;
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
        let first = j.degrade();
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
                j.recovered();
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

impl Sink for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Rows are acknowledged when their file is complete.
    fn ack_latency(&self) -> Duration {
        self.opts.rotate_interval
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
        let first = Partition::of_us(records[0].flow_end_us);
        if records
            .iter()
            .all(|r| Partition::of_us(r.flow_end_us) == first)
        {
            self.write_partition(first, records)?;
        } else {
            let mut idx: BTreeMap<Partition, Vec<FlowRecord>> = BTreeMap::new();
            for r in records {
                idx.entry(Partition::of_us(r.flow_end_us))
                    .or_default()
                    .push(r.clone());
            }
            for (part, recs) in idx {
                self.write_partition(part, &recs)?;
            }
        }
        Ok(())
    }

    fn write_partition(&mut self, part: Partition, records: &[FlowRecord]) -> Result<()> {
        if !self.open.contains_key(&part) {
            let f = self.open_file(part)?;
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
            ends: Default::default(),
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
                let f = std::fs::File::open(p).unwrap();
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

    fn failing_sync(_: &std::path::Path) -> std::io::Result<()> {
        Err(std::io::Error::other("injected directory fsync failure"))
    }

    /// Rows in visible (complete) files under `dir`, read back from their footers.
    fn visible_rows(dir: &std::path::Path) -> (usize, i64) {
        let (mut files, mut rows) = (0, 0);
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() {
                    stack.push(p);
                } else if flowlens_schema::layout::is_data_file(&name) {
                    let f = std::fs::File::open(&p).unwrap();
                    let r = ::parquet::file::reader::SerializedFileReader::new(f).unwrap();
                    rows += ::parquet::file::reader::FileReader::metadata(&r)
                        .file_metadata()
                        .num_rows();
                    files += 1;
                }
            }
        }
        (files, rows)
    }

    fn options(dir: &std::path::Path, journal: bool) -> ParquetOptions {
        ParquetOptions {
            dir: dir.join("out"),
            rotate_bytes: u64::MAX,
            rotate_interval: Duration::from_secs(3600),
            host: "h".into(),
            journal: journal.then(|| JournalOptions {
                dir: dir.join("journal"),
                max_bytes: 64 << 20,
            }),
        }
    }

    /// Without a journal: a file whose directory fsync fails is not complete. Its rows are not
    /// acknowledged (they are counted lost), close reports the error, and no reader sees the
    /// file (it is back under its hidden in-progress name).
    #[test]
    fn failed_directory_fsync_does_not_acknowledge() {
        let dir = std::env::temp_dir().join(format!("flowlens-pq-dirsync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = ParquetSink::new(options(&dir, false)).unwrap();
        sink.sync_dir = failing_sync;
        let hour0 = 1_700_000_000_000_000i64;
        let recs: Vec<FlowRecord> = (0..10).map(|i| record(hour0 + i)).collect();
        sink.write(&recs).unwrap();
        let e = sink.close().unwrap_err().to_string();
        assert!(e.contains("syncing directory"), "{e}");
        let m = sink.metrics();
        assert_eq!((m.sent, m.acknowledged, m.lost), (10, 0, 10));
        assert!(sink.completed.is_empty());
        assert_eq!(visible_rows(&dir.join("out")), (0, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a journal: the rows of a file whose directory fsync fails stay in the journal (not
    /// acknowledged, reported as spooled); once syncing works they are written exactly once.
    #[test]
    fn failed_directory_fsync_keeps_rows_in_the_journal() {
        let dir =
            std::env::temp_dir().join(format!("flowlens-pq-dirsync-j-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let hour0 = 1_700_000_000_000_000i64;
        let recs: Vec<FlowRecord> = (0..10).map(|i| record(hour0 + i)).collect();
        {
            let mut sink = ParquetSink::new(options(&dir, true)).unwrap();
            sink.sync_dir = failing_sync;
            sink.write(&recs).unwrap();
            sink.close().unwrap();
            let m = sink.metrics();
            assert_eq!((m.sent, m.acknowledged, m.lost), (10, 0, 0));
            assert_eq!(m.spooled, 10, "the rows wait in the journal");
            assert_eq!(visible_rows(&dir.join("out")), (0, 0));
        }
        // The next start writes them (real fsync this time), once.
        let mut sink = ParquetSink::new(options(&dir, true)).unwrap();
        sink.close().unwrap();
        let m = sink.metrics();
        assert_eq!((m.acknowledged, m.spooled, m.lost), (10, 0, 0));
        assert_eq!(visible_rows(&dir.join("out")), (1, 10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
