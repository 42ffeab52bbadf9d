//! One Parquet file at a time: created under its hidden in-progress name in its partition
//! directory, appended to, then completed (footer, file fsync, rename, directory fsync). Names
//! and directories come from [`flowlens_schema::layout`], their one owner.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arrow_schema::SchemaRef;
use flowlens_schema::layout::{self, FileName, Partition};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};

use crate::{Result, SinkError};

/// Writer settings, in one place.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        // zstd level 3: the usual speed/size balance; flow records compress ~5-10x.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        // Row groups of 32k rows (about 1 MB compressed) keep the open row group's memory small
        // (128k rows cost about 7 MB more peak RSS in `flowlens-bench rss-child`, issue 17)
        // while staying large enough for efficient scans.
        .set_max_row_group_row_count(Some(32 * 1024))
        .set_created_by(concat!("flowlens ", env!("CARGO_PKG_VERSION")).to_string())
        .build()
}

/// Makes a directory entry (the rename of a completed file) durable. A seam: tests swap in a
/// failing one.
pub(super) type SyncDir = fn(&Path) -> io::Result<()>;

/// The real [`SyncDir`]: `fsync` of the directory.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being written.
pub(super) struct OpenFile {
    pub writer: ArrowWriter<File>,
    /// Rows accepted into this file so far.
    pub rows: u64,
    pub tmp: PathBuf,
    pub fin: PathBuf,
    pub opened: Instant,
}

impl OpenFile {
    /// Creates `root/date=…/hour=…/.flows-HOST-MS-PID-SEQ.parquet.inprogress`.
    pub fn create(
        root: &Path,
        part: Partition,
        host: &str,
        seq: u64,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<OpenFile> {
        let dir = root.join(part.dir());
        std::fs::create_dir_all(&dir)
            .map_err(|e| SinkError::io(format!("creating {}", dir.display()), e))?;
        let name = FileName {
            host: host.to_string(),
            opened_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            pid: std::process::id(),
            seq,
        };
        let tmp = dir.join(name.in_progress());
        let fin = dir.join(name.complete());
        let file = File::create(&tmp)
            .map_err(|e| SinkError::io(format!("creating {}", tmp.display()), e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(props))?;
        Ok(OpenFile {
            writer,
            rows: 0,
            tmp,
            fin,
            opened: Instant::now(),
        })
    }

    /// Compressed bytes written or buffered so far (approximate).
    pub fn size(&self) -> u64 {
        self.writer.bytes_written() as u64 + self.writer.in_progress_size() as u64
    }

    /// Writes the footer, syncs the file, renames it to its final name and syncs the
    /// directory. `Ok` only when all of that is durable. If syncing the directory fails, the
    /// file is renamed back to its in-progress name (hidden from readers) before the error is
    /// returned: a rename that may not survive a crash is not a completed file.
    pub fn complete(self, sync_dir: SyncDir) -> Result<PathBuf> {
        let file = self.writer.into_inner()?;
        file.sync_all()
            .map_err(|e| SinkError::io(format!("syncing {}", self.tmp.display()), e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.fin).map_err(|e| {
            SinkError::io(
                format!("renaming {} to {}", self.tmp.display(), self.fin.display()),
                e,
            )
        })?;
        let dir = self.fin.parent().unwrap_or(Path::new("."));
        if let Err(e) = sync_dir(dir) {
            let _ = std::fs::rename(&self.fin, &self.tmp);
            return Err(SinkError::io(
                format!(
                    "syncing directory {} after completing {}",
                    dir.display(),
                    self.fin.display()
                ),
                e,
            ));
        }
        Ok(self.fin)
    }
}

/// Hidden in-progress files of this host under `dir` whose writer process no longer runs, and
/// their total size.
pub(super) fn stale_in_progress(dir: &Path, host: &str) -> (Vec<PathBuf>, u64) {
    let (mut stale, mut bytes) = (Vec::new(), 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() {
                // Only the sink's own partition directories.
                if layout::is_partition_component(&name) {
                    stack.push(e.path());
                }
                continue;
            }
            let Some(f) = FileName::parse_in_progress(&name) else {
                continue;
            };
            let alive =
                f.pid == std::process::id() || Path::new(&format!("/proc/{}", f.pid)).exists();
            if f.host == host && !alive {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                stale.push(e.path());
            }
        }
    }
    stale.sort();
    (stale, bytes)
}
