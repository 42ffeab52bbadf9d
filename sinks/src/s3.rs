//! Parquet on S3-compatible object storage (`parquet:s3://BUCKET/PREFIX`).
//!
//! Same layout, rotation and atomicity as the local Parquet sink: files are written by a
//! [`ParquetSink`] into a local spool directory (hidden `.inprogress` name, footer, fsync,
//! rename), and only a *completed* file is uploaded, to
//! `PREFIX/date=YYYY-MM-DD/hour=HH/flows-….parquet`. An S3 object becomes visible only when its
//! single PUT, or its multipart upload's CompleteMultipartUpload, succeeds, so readers never see
//! a partial object, and no `.inprogress` name is ever uploaded.
//!
//! Uploads run on the sink's own thread (a single-threaded tokio runtime for `object_store`), so
//! the collector loop never waits for the network. Files up to `multipart_threshold` are sent
//! with one PUT, larger ones with a multipart upload of `part_size` parts. A failed upload is
//! retried `upload_attempts` times with exponential backoff (on top of `object_store`'s own
//! request retries); then its rows are counted as lost, logged with the file name, and the
//! completed file stays in the spool directory for a manual upload. Uploaded files are deleted
//! from the spool. Completed files left in the spool by an earlier run are uploaded at start.
//!
//! Credentials, region and endpoint come from the usual AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...) and from `store_options` (`--s3-option KEY=VALUE`,
//! `object_store`'s `AmazonS3ConfigKey` names such as `endpoint`, `region`, `allow_http`), which
//! win over the environment.

use std::{
    io::Read as _,
    path::{Path as FsPath, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use flowlens_schema::record::FlowRecord;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    path::Path as ObjPath,
};

use crate::{
    Result, Sink, SinkError, SinkMetrics,
    parquet::{ParquetOptions, ParquetSink},
};

/// Files larger than this are uploaded with a multipart upload.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 32 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB, except for the last part).
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;

/// Parent of the default staging directories (`BUCKET/PREFIX` below it): the systemd unit's
/// `StateDirectory` (deploy/systemd), which survives restarts. Not `$TMPDIR`: the unit's
/// `PrivateTmp` is emptied at every start, and with it every file not uploaded yet.
pub const DEFAULT_STAGING_ROOT: &str = "/var/lib/flowlens/s3-staging";

/// The default staging directory of `target`: [`DEFAULT_STAGING_ROOT`]`/BUCKET/PREFIX`.
pub fn default_staging_dir(target: &S3Target) -> PathBuf {
    PathBuf::from(DEFAULT_STAGING_ROOT)
        .join(&target.bucket)
        .join(&target.prefix)
}

/// `close` returns at most this long after `close_timeout`: uploads stop at the deadline, and
/// the upload thread then needs a moment to count what it did not finish (a blocking file read
/// of the upload in progress cannot be cut short).
pub const CLOSE_SLACK: Duration = Duration::from_secs(5);

/// Where the objects go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Target {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> std::result::Result<S3Target, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("only s3:// object storage URLs are supported")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("expected s3://BUCKET/PREFIX".into());
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err("the prefix must not contain empty, `.` or `..` segments".into());
        }
        Ok(S3Target {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Options of the S3 Parquet sink.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub target: S3Target,
    /// Local directory for files being written and waiting for upload.
    pub spool_dir: PathBuf,
    pub rotate_bytes: u64,
    pub rotate_interval: Duration,
    pub host: Arc<str>,
    /// `object_store` S3 settings (key, value); they win over the AWS_* environment.
    pub store_options: Vec<(String, String)>,
    pub multipart_threshold: u64,
    pub part_size: usize,
    /// Attempts per file before its rows are counted as lost.
    pub upload_attempts: u32,
    pub initial_backoff: Duration,
    /// `close` waits this long for pending uploads (and returns at most [`CLOSE_SLACK`] after
    /// it); the rest is reported lost (files stay spooled). The collector sets it to
    /// `--shutdown-grace`.
    pub close_timeout: Duration,
}

impl S3Options {
    pub fn new(target: S3Target, spool_dir: PathBuf, host: Arc<str>) -> Self {
        S3Options {
            target,
            spool_dir,
            rotate_bytes: 128 * 1024 * 1024,
            rotate_interval: Duration::from_secs(300),
            host,
            store_options: Vec::new(),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            upload_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            close_timeout: crate::spool::DEFAULT_GRACE,
        }
    }
}

/// Builds the S3 client: environment first, then explicit options.
pub fn build_store(
    target: &S3Target,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>> {
    let bucket = &target.bucket;
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (k, v) in options {
        let key: AmazonS3ConfigKey = k.to_ascii_lowercase().parse().map_err(|_| SinkError::Spec {
            spec: format!("parquet:{target}"),
            reason: format!("unknown --s3-option key {k:?} (object_store AmazonS3ConfigKey names: endpoint, region, allow_http, access_key_id, secret_access_key, ...)"),
        })?;
        b = b.with_config(key, v);
    }
    // Our own per-file retries (counted) sit on top of a few quick request-level retries.
    b = b.with_retry(RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
        ..Default::default()
    });
    Ok(Arc::new(b.build()?))
}

#[derive(Default)]
struct Counters {
    acknowledged: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    /// Rows of files waiting for (or in) upload.
    pending: AtomicU64,
    files_uploaded: AtomicU64,
    files_failed: AtomicU64,
}

struct Upload {
    local: PathBuf,
    key: ObjPath,
    rows: u64,
}

/// The S3 Parquet sink (see the module documentation).
pub struct S3ParquetSink {
    name: String,
    local: ParquetSink,
    opts: S3Options,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Upload>>,
    counters: Arc<Counters>,
    worker: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
    /// Set by `close`: uploads stop being retried after it.
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl S3ParquetSink {
    pub fn new(opts: S3Options) -> Result<Self> {
        let name = format!("parquet:{}", opts.target);
        let store = build_store(&opts.target, &opts.store_options)?;
        let mut local = ParquetSink::new(ParquetOptions {
            dir: opts.spool_dir.clone(),
            rotate_bytes: opts.rotate_bytes,
            rotate_interval: opts.rotate_interval,
            host: opts.host.clone(),
            journal: None,
        })?;
        let _ = local.take_new_files();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::io("starting the S3 upload runtime", e))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let deadline = Arc::new(Mutex::new(None));
        let up = Uploader {
            store,
            opts: opts.clone(),
            counters: counters.clone(),
            deadline: deadline.clone(),
            retry_log: Default::default(),
        };
        let worker = std::thread::Builder::new()
            .name("flowlens-s3".into())
            .spawn(move || {
                rt.block_on(up.run(rx));
                let _ = done_tx.send(());
            })
            .map_err(|e| SinkError::io("starting the S3 upload thread", e))?;
        let mut sink = S3ParquetSink {
            name,
            local,
            opts,
            tx: Some(tx),
            counters,
            worker: Some(worker),
            done,
            deadline,
        };
        for (path, rows) in leftover_files(&sink.opts.spool_dir) {
            tracing::info!(file = %path.display(), rows, "uploading a completed file left in the spool by an earlier run");
            sink.enqueue(path, rows);
        }
        Ok(sink)
    }

    fn enqueue(&mut self, local: PathBuf, rows: u64) {
        let rel = local
            .strip_prefix(&self.opts.spool_dir)
            .unwrap_or(&local)
            .to_string_lossy()
            .into_owned();
        let key = if self.opts.target.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.opts.target.prefix))
        };
        self.counters.pending.fetch_add(rows, Relaxed);
        let job = Upload { local, key, rows };
        let sent = self.tx.as_ref().map(|tx| tx.send(job));
        if !matches!(sent, Some(Ok(()))) {
            // Uploader gone (it only ends after close): count, never drop silently.
            self.counters.pending.fetch_sub(rows, Relaxed);
            self.counters.lost.fetch_add(rows, Relaxed);
            tracing::error!(sink = %self.name, rows, "S3 uploader is not running; file stays in the spool, rows lost");
        }
    }

    fn forward_completed(&mut self) {
        for (path, rows) in self.local.take_new_files() {
            self.enqueue(path, rows);
        }
    }
}

/// Completed `.parquet` files under the spool (not `.inprogress`), with their row counts.
fn leftover_files(dir: &FsPath) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .is_some_and(|n| flowlens_schema::layout::is_data_file(&n.to_string_lossy()))
            {
                let rows = std::fs::File::open(&p)
                    .ok()
                    .and_then(|f| ::parquet::file::reader::SerializedFileReader::new(f).ok())
                    .map(|r| {
                        ::parquet::file::reader::FileReader::metadata(&r)
                            .file_metadata()
                            .num_rows()
                            .max(0) as u64
                    })
                    .unwrap_or(0);
                out.push((p, rows));
            }
        }
    }
    out.sort();
    out
}

impl Sink for S3ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Rows are acknowledged when their file is complete and uploaded.
    fn ack_latency(&self) -> Duration {
        self.opts.rotate_interval
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        let r = self.local.write(records);
        self.forward_completed();
        r
    }

    fn tick(&mut self) -> Result<()> {
        let r = self.local.tick();
        self.forward_completed();
        r
    }

    fn close(&mut self) -> Result<()> {
        let local = self.local.close();
        self.forward_completed();
        let Some(worker) = self.worker.take() else {
            return local;
        };
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(Instant::now() + self.opts.close_timeout);
        }
        // Closing the channel ends the uploader once the queue is empty.
        self.tx = None;
        let finished = self
            .done
            .recv_timeout(self.opts.close_timeout + CLOSE_SLACK)
            .is_ok();
        if finished {
            let _ = worker.join();
        }
        let pending = self.counters.pending.swap(0, Relaxed);
        if pending > 0 {
            self.counters.lost.fetch_add(pending, Relaxed);
            tracing::error!(sink = %self.name, rows = pending, spool = %self.opts.spool_dir.display(), "uploads unfinished at shutdown; the files stay in the spool (uploaded at next start)");
        }
        local?;
        let lost = self.counters.lost.load(Relaxed);
        if lost > 0 {
            return Err(SinkError::Upload(format!(
                "{lost} rows not uploaded to {} (files kept in {})",
                self.opts.target,
                self.opts.spool_dir.display()
            )));
        }
        tracing::info!(
            sink = %self.name,
            files = self.counters.files_uploaded.load(Relaxed),
            "S3 uploads complete"
        );
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.local.records_lost() + self.counters.lost.load(Relaxed)
    }

    fn metrics(&self) -> SinkMetrics {
        let l = self.local.metrics();
        let c = &self.counters;
        SinkMetrics {
            sent: l.sent,
            acknowledged: c.acknowledged.load(Relaxed),
            retried: c.retried.load(Relaxed),
            rejected: 0,
            queued: l.queued + c.pending.load(Relaxed),
            lost: l.lost + c.lost.load(Relaxed),
            ..SinkMetrics::default()
        }
    }
}

impl Drop for S3ParquetSink {
    fn drop(&mut self) {
        if self.worker.is_some()
            && let Err(e) = self.close()
        {
            tracing::error!(sink = %self.name, error = %e, "closing S3 sink on drop");
        }
    }
}

struct Uploader {
    store: Arc<dyn ObjectStore>,
    opts: S3Options,
    counters: Arc<Counters>,
    deadline: Arc<Mutex<Option<Instant>>>,
    /// Retries repeat while the store is down: logged at most once per interval.
    retry_log: crate::log_limit::RateLimited,
}

impl Uploader {
    fn deadline(&self) -> Option<Instant> {
        self.deadline.lock().map(|d| *d).unwrap_or(None)
    }

    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Upload>) {
        while let Some(job) = rx.recv().await {
            let c = &self.counters;
            let mut backoff = self.opts.initial_backoff;
            let mut attempt = 1;
            let result = loop {
                let res = match self.deadline() {
                    Some(d) => tokio::time::timeout_at(d.into(), self.upload(&job))
                        .await
                        .unwrap_or_else(|_| Err("shutdown deadline reached".into())),
                    None => self.upload(&job).await,
                };
                match res {
                    Ok(()) => break Ok(()),
                    Err(e) if attempt >= self.opts.upload_attempts => break Err(e),
                    Err(e) => {
                        let wake = Instant::now() + backoff;
                        if self.deadline().is_some_and(|d| wake >= d) {
                            break Err(e);
                        }
                        if let Some(suppressed) = self.retry_log.check() {
                            tracing::warn!(key = %job.key, attempt, suppressed, error = %e, "S3 upload failed; retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        attempt += 1;
                        c.retried.fetch_add(job.rows, Relaxed);
                    }
                }
            };
            c.pending.fetch_sub(job.rows, Relaxed);
            match result {
                Ok(()) => {
                    c.acknowledged.fetch_add(job.rows, Relaxed);
                    c.files_uploaded.fetch_add(1, Relaxed);
                    if let Err(e) = std::fs::remove_file(&job.local) {
                        tracing::warn!(file = %job.local.display(), error = %e, "removing an uploaded file from the spool");
                    }
                    tracing::debug!(key = %job.key, rows = job.rows, "uploaded");
                }
                Err(e) => {
                    c.lost.fetch_add(job.rows, Relaxed);
                    c.files_failed.fetch_add(1, Relaxed);
                    tracing::error!(key = %job.key, file = %job.local.display(), rows = job.rows, attempts = attempt, error = %e, "S3 upload failed for good; rows lost (the file stays in the spool)");
                }
            }
        }
    }

    /// One upload attempt: a single PUT, or a multipart upload for large files.
    async fn upload(&self, job: &Upload) -> std::result::Result<(), String> {
        let size = std::fs::metadata(&job.local)
            .map_err(|e| format!("reading {}: {e}", job.local.display()))?
            .len();
        if size <= self.opts.multipart_threshold {
            let bytes = std::fs::read(&job.local)
                .map_err(|e| format!("reading {}: {e}", job.local.display()))?;
            self.store
                .put(&job.key, PutPayload::from(bytes))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&job.key)
            .await
            .map_err(|e| e.to_string())?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.opts.part_size);
        let mut f = std::fs::File::open(&job.local)
            .map_err(|e| format!("opening {}: {e}", job.local.display()))?;
        let mut buf = vec![0u8; self.opts.part_size.min(8 * 1024 * 1024)];
        loop {
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(format!("reading {}: {e}", job.local.display()));
                }
            };
            if n == 0 {
                break;
            }
            // Bounded memory: at most a few parts in flight.
            if let Err(e) = w.wait_for_capacity(4).await {
                let _ = w.abort().await;
                return Err(e.to_string());
            }
            w.write(&buf[..n]);
        }
        w.finish().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_options_are_validated() {
        let t = S3Target::parse("s3://b/x/y/").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("b", "x/y"));
        assert_eq!(S3Target::parse("s3://b").unwrap().prefix, "");
        for bad in ["gs://b/x", "s3://", "s3:///x", "s3://b/x//y", "s3://b/../x"] {
            assert!(S3Target::parse(bad).is_err(), "{bad}");
        }
        let Err(e) = build_store(&t, &[("bogus".into(), "1".into())]) else {
            panic!("unknown key accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("bogus") && e.contains("parquet:s3://b/x/y"),
            "{e}"
        );
        assert!(build_store(&t, &[("endpoint".into(), "http://127.0.0.1:1".into())]).is_ok());
    }
}
