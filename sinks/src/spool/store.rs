//! The on-disk spool: a durable FIFO of flow records in append-only segment files.
//!
//! Layout of a spool directory (one per sink):
//! * `<seq>.spool` segments (`seq` a zero-padded 20-digit number, oldest first). Each starts with
//!   the 8-byte magic [`MAGIC`], then frames: `len: u32 LE`, `crc32(payload): u32 LE`, payload
//!   ([`super::codec`]). A segment is closed at `segment_bytes` and a new one started.
//! * `cursor`: `"<seq> <offset>\n"`, the first frame not yet delivered. Written as a temporary
//!   file, fsynced, renamed over the old one, and the directory fsynced: a crash leaves either
//!   the old or the new cursor, never a torn one.
//!
//! Durability: [`Store::append`] writes a batch of frames with one `write` and `fdatasync`s
//! before returning, so a record the wrapper counted as spooled survives a crash or power loss.
//! [`Store::commit`] advances the cursor the same way and then deletes fully consumed segments.
//!
//! Recovery ([`Store::open`]): segments before the cursor are deleted; every frame from the
//! cursor on is checked (length and CRC). A torn frame (a crash in the middle of an append, or
//! garbage) ends the readable part: the segment is truncated there and the loss is reported in
//! [`OpenReport`] (bytes; the records in a torn frame were never acknowledged as spooled).

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use flowlens_schema::record::FlowRecord;

use super::codec::{self, Decoder};
use crate::{Result, SinkError};

/// First bytes of every segment (format version 1).
pub const MAGIC: &[u8; 8] = b"FLSPOOL1";
const HEADER: u64 = MAGIC.len() as u64;
/// Frame header: length + CRC32.
const FRAME_HEADER: usize = 8;
/// A frame larger than this is garbage (a record is a few hundred bytes).
const MAX_FRAME: u32 = 1 << 20;
/// Default size of one segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// A position in the spool: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Bytes in the file (valid frames only).
    len: u64,
    /// Valid records in the file.
    records: u64,
}

/// What [`Store::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Records waiting (from the cursor on).
    pub records: u64,
    /// Bytes cut off torn or corrupt tails.
    pub truncated_bytes: u64,
    /// Segments whose tail was cut.
    pub truncated_segments: u64,
}

/// The spool directory (see the module documentation).
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Appends go to the last segment through this handle.
    writer: Option<File>,
    /// The last segment may end in a torn frame (a failed append could not be cut off): the
    /// next append starts a new segment.
    sealed: bool,
    /// First undelivered frame (persisted in `cursor`).
    commit: Pos,
    /// Next frame [`Store::read`] returns (>= `commit`).
    read: Pos,
    reader: Option<(u64, BufReader<File>)>,
    /// Records from `commit` to the end.
    pending: u64,
    /// Records from `read` to the end.
    unread: u64,
    decoder: Decoder,
    enc: Vec<u8>,
}

fn seg_name(seq: u64) -> String {
    format!("{seq:020}.spool")
}

fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> SinkError {
    let ctx = ctx.into();
    move |e| SinkError::io(ctx, e)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsync {}", dir.display())))
}

/// Reads one frame at the reader's position. `Ok(None)`: clean end of data; `Err(())`: torn
/// or corrupt frame.
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::result::Result<Option<()>, ()> {
    let mut h = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(());
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf).map_err(|_| ())?;
    if crc32fast::hash(buf) != crc {
        return Err(());
    }
    Ok(Some(()))
}

/// Writes all of `buf`, counting in `done` the bytes written (also when it fails).
fn write_counted(w: &mut File, buf: &[u8], done: &mut usize) -> std::io::Result<()> {
    while *done < buf.len() {
        match w.write(&buf[*done..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The whole frames at the start of `buf` (encoded by [`Store::append`]): (bytes, frames).
fn whole_frames(buf: &[u8]) -> (u64, u64) {
    let (mut off, mut n) = (0usize, 0u64);
    while let Some(h) = buf.get(off..off + FRAME_HEADER) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if off + FRAME_HEADER + len > buf.len() {
            break;
        }
        off += FRAME_HEADER + len;
        n += 1;
    }
    (off as u64, n)
}

impl Store {
    /// Opens (creating if needed) the spool in `dir`, recovering from a crash (see the module
    /// documentation). Fails with a one-line error if the directory is not usable.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<(Store, OpenReport)> {
        std::fs::create_dir_all(dir)
            .map_err(io(format!("creating spool directory {}", dir.display())))?;
        // Probe writability now rather than at the first outage.
        let probe = dir.join(".write-test");
        File::create(&probe)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(io(format!(
                "spool directory {} is not writable",
                dir.display()
            )))?;
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
            let e = e.map_err(io(format!("reading {}", dir.display())))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(".spool")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let cursor = Self::read_cursor(dir)?;
        let first = seqs.first().copied();
        let commit = match (cursor, first) {
            (Some(c), _) => c,
            (None, Some(s)) => Pos {
                seq: s,
                offset: HEADER,
            },
            (None, None) => Pos {
                seq: 1 << 32,
                offset: HEADER,
            },
        };
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        let mut buf = Vec::new();
        for seq in seqs {
            let path = dir.join(seg_name(seq));
            if seq < commit.seq {
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                continue;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            let size = f
                .metadata()
                .map_err(io(format!("stat {}", path.display())))?
                .len();
            let mut r = BufReader::new(&f);
            let mut magic = [0u8; 8];
            let good_magic = r.read_exact(&mut magic).is_ok() && &magic == MAGIC;
            let (mut off, mut records) = (HEADER, 0u64);
            if good_magic {
                let start = if seq == commit.seq {
                    commit.offset.min(size)
                } else {
                    HEADER
                };
                if start > HEADER {
                    r.seek(SeekFrom::Start(start))
                        .map_err(io(format!("seek {}", path.display())))?;
                    off = start;
                }
                while let Ok(Some(())) = read_frame(&mut r, &mut buf) {
                    off += (FRAME_HEADER + buf.len()) as u64;
                    records += 1;
                }
            } else {
                off = 0;
            }
            drop(r);
            if off < size {
                report.truncated_bytes += size - off;
                report.truncated_segments += 1;
                tracing::warn!(segment = %path.display(), valid_bytes = off, cut_bytes = size - off, "spool: torn or corrupt tail (crash during an append?); truncated");
                if off == 0 {
                    f.set_len(0)
                        .map_err(io(format!("truncating {}", path.display())))?;
                    (&f).write_all(MAGIC)
                        .map_err(io(format!("writing {}", path.display())))?;
                    off = HEADER;
                } else {
                    f.set_len(off)
                        .map_err(io(format!("truncating {}", path.display())))?;
                }
                f.sync_all()
                    .map_err(io(format!("fsync {}", path.display())))?;
            }
            report.records += records;
            segments.push_back(Segment {
                seq,
                len: off,
                records,
            });
        }
        let mut s = Store {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(HEADER + 1),
            segments,
            writer: None,
            sealed: false,
            commit,
            read: commit,
            reader: None,
            pending: report.records,
            unread: report.records,
            decoder: Decoder::default(),
            enc: Vec::new(),
        };
        if s.segments.front().is_none_or(|f| f.seq != commit.seq) {
            // The cursor's segment is gone (fully consumed, or never written): start at the
            // first segment that exists, or a fresh one.
            let start = s.segments.front().map(|f| f.seq).unwrap_or(commit.seq + 1);
            s.commit = Pos {
                seq: start,
                offset: HEADER,
            };
            s.read = s.commit;
            if s.segments.is_empty() {
                s.new_segment(start)?;
            }
            s.write_cursor()?;
        }
        if let Some(last) = s.segments.back() {
            let path = s.dir.join(seg_name(last.seq));
            let w = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            s.writer = Some(w);
        }
        Ok((s, report))
    }

    fn read_cursor(dir: &Path) -> Result<Option<Pos>> {
        let path = dir.join("cursor");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SinkError::io(format!("reading {}", path.display()), e)),
        };
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(seq)), Some(Ok(offset))) if offset >= HEADER => Ok(Some(Pos { seq, offset })),
            _ => Err(SinkError::io(
                format!(
                    "spool cursor {} is corrupt ({text:?}); move the spool directory aside to start over",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::InvalidData),
            )),
        }
    }

    fn write_cursor(&self) -> Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        let path = self.dir.join("cursor");
        let mut f = File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        writeln!(f, "{} {}", self.commit.seq, self.commit.offset)
            .and_then(|_| f.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        fsync_dir(&self.dir)
    }

    fn new_segment(&mut self, seq: u64) -> Result<()> {
        let path = self.dir.join(seg_name(seq));
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        f.write_all(MAGIC)
            .and_then(|_| f.sync_data())
            .map_err(io(format!("writing {}", path.display())))?;
        fsync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            seq,
            len: HEADER,
            records: 0,
        });
        self.writer = Some(f);
        self.sealed = false;
        Ok(())
    }

    /// Bytes on disk (segment files, consumed parts of the first one included).
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Records not yet committed as delivered.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Records not yet handed out by [`Store::read`].
    pub fn unread(&self) -> u64 {
        self.unread
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends records (oldest first) and fsyncs. Returns how many were stored (the first ones):
    /// fewer than `records.len()` when the spool is full (`max_bytes`), or when a write failed
    /// part-way and the partial write could not be cut off (then the whole frames that reached
    /// the disk are kept: they would come back at the next open anyway); the rest were not
    /// stored. A failed write that could be cut off stores nothing and returns the error.
    pub fn append(&mut self, records: &[FlowRecord]) -> Result<usize> {
        if self.sealed && !records.is_empty() {
            let next = self
                .segments
                .back()
                .map(|s| s.seq + 1)
                .unwrap_or(self.commit.seq);
            self.new_segment(next)?;
        }
        let mut total = self.bytes();
        let mut enc = std::mem::take(&mut self.enc);
        enc.clear();
        let mut in_enc = 0u64;
        let mut stored = 0;
        let mut frame = Vec::with_capacity(256);
        for r in records {
            frame.clear();
            frame.extend_from_slice(&[0; FRAME_HEADER]);
            codec::encode(r, &mut frame);
            let len = frame.len() - FRAME_HEADER;
            let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
            frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            if total + frame.len() as u64 > self.max_bytes {
                break;
            }
            let seg_len = self.segments.back().map(|s| s.len).unwrap_or(u64::MAX);
            if seg_len + (enc.len() + frame.len()) as u64 > self.segment_bytes
                && seg_len + enc.len() as u64 > HEADER
            {
                let n = self.flush_append(&enc, in_enc)?;
                if n < in_enc {
                    self.enc = enc;
                    return Ok(stored - (in_enc - n) as usize);
                }
                enc.clear();
                in_enc = 0;
                let next = self
                    .segments
                    .back()
                    .map(|s| s.seq + 1)
                    .unwrap_or(self.commit.seq);
                self.new_segment(next)?;
                total += HEADER;
            }
            enc.extend_from_slice(&frame);
            in_enc += 1;
            total += frame.len() as u64;
            stored += 1;
        }
        let n = self.flush_append(&enc, in_enc)?;
        self.enc = enc;
        Ok(stored - (in_enc - n) as usize)
    }

    /// Writes `enc` (`records` whole frames) at the end of the last segment and syncs it.
    /// Returns how many of the records are stored: all of them, or, when the write failed
    /// part-way and the partial write could not be cut off, the whole frames that did reach the
    /// disk (see [`Store::append`]).
    fn flush_append(&mut self, enc: &[u8], records: u64) -> Result<u64> {
        if records == 0 {
            return Ok(0);
        }
        let (seq, good_len) = self
            .segments
            .back()
            .map(|s| (s.seq, s.len))
            .unwrap_or((0, HEADER));
        let mut w = self.writer.take().ok_or_else(|| {
            SinkError::io(
                "spool",
                std::io::Error::other("no segment open for writing"),
            )
        })?;
        let mut done = 0;
        let Err(e) = write_counted(&mut w, enc, &mut done).and_then(|()| w.sync_data()) else {
            self.writer = Some(w);
            self.grow(enc.len() as u64, records);
            return Ok(records);
        };
        let path = self.dir.join(seg_name(seq));
        // Cut what part of the batch was written (e.g. ENOSPC half-way), so that later
        // appends do not follow a torn frame.
        let Err(cut) = w.set_len(good_len).and_then(|()| w.sync_data()) else {
            self.writer = Some(w);
            return Err(SinkError::io(
                format!("appending to spool {}", path.display()),
                e,
            ));
        };
        // The segment keeps what was written: whole frames, then maybe a torn one. It takes no
        // more appends (the next one starts a new segment). Every open finds the whole frames
        // and cuts the torn tail off (`OpenReport::truncated_bytes`), so they are kept as
        // stored if they are durable; the rest of the batch is not stored.
        self.sealed = true;
        let (kept_bytes, kept) = whole_frames(&enc[..done]);
        if kept == 0 {
            return Err(SinkError::io(
                format!(
                    "appending to spool {} failed ({e}), and cutting the partial frame off failed; the segment is closed",
                    path.display()
                ),
                cut,
            ));
        }
        if let Err(sync) = w.sync_data() {
            return Err(SinkError::io(
                format!(
                    "appending to spool {} failed ({e}), and cutting the partial frame off failed ({cut}); {kept} records of the batch may come back at the next start",
                    path.display()
                ),
                sync,
            ));
        }
        tracing::error!(spool = %path.display(), error = %e, cut_error = %cut, stored = kept, not_stored = records - kept, "spool: an append failed part-way and the partial frame could not be cut off; the whole frames written are kept, the segment is closed");
        self.grow(kept_bytes, kept);
        Ok(kept)
    }

    /// Accounts `records` frames of `bytes` appended to the last segment.
    fn grow(&mut self, bytes: u64, records: u64) {
        if let Some(s) = self.segments.back_mut() {
            s.len += bytes;
            s.records += records;
        }
        self.pending += records;
        self.unread += records;
    }

    /// Reads up to `max` records from the read position into `out`; returns the position after
    /// them (pass it to [`Store::commit`] once they are delivered).
    pub fn read(&mut self, max: usize, out: &mut Vec<FlowRecord>) -> Result<Pos> {
        let mut buf = Vec::new();
        let mut n = 0;
        while n < max && self.unread > 0 {
            let Some(idx) = self.segments.iter().position(|s| s.seq == self.read.seq) else {
                break;
            };
            let seg_len = self.segments[idx].len;
            if self.read.offset >= seg_len {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        self.read = Pos {
                            seq: next.seq,
                            offset: HEADER,
                        };
                        continue;
                    }
                    None => break,
                }
            }
            if self
                .reader
                .as_ref()
                .is_none_or(|(seq, _)| *seq != self.read.seq)
            {
                let path = self.dir.join(seg_name(self.read.seq));
                let mut f = BufReader::with_capacity(
                    256 * 1024,
                    File::open(&path).map_err(io(format!("opening {}", path.display())))?,
                );
                f.seek(SeekFrom::Start(self.read.offset))
                    .map_err(io(format!("seek {}", path.display())))?;
                self.reader = Some((self.read.seq, f));
            }
            let Some((_, r)) = self.reader.as_mut() else {
                break;
            };
            match read_frame(r, &mut buf) {
                Ok(Some(())) => {}
                _ => {
                    return Err(SinkError::io(
                        format!(
                            "spool segment {} offset {}",
                            seg_name(self.read.seq),
                            self.read.offset
                        ),
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "frame unreadable (corrupted after it was written?)",
                        ),
                    ));
                }
            }
            let rec = self.decoder.decode(&buf).map_err(|e| {
                SinkError::io(
                    format!(
                        "spool segment {} offset {}",
                        seg_name(self.read.seq),
                        self.read.offset
                    ),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?;
            out.push(rec);
            self.read.offset += (FRAME_HEADER + buf.len()) as u64;
            self.unread -= 1;
            n += 1;
        }
        Ok(self.read)
    }

    /// Marks everything before `pos` (`records` records since the last commit) as delivered:
    /// writes the cursor and deletes fully consumed segments.
    pub fn commit(&mut self, pos: Pos, records: u64) -> Result<()> {
        if pos <= self.commit {
            return Ok(());
        }
        self.commit = pos;
        self.pending = self.pending.saturating_sub(records);
        // Never leave the cursor pointing past the end of a segment that has a successor: move
        // it to the next one so the consumed segment can go.
        while let Some(idx) = self.segments.iter().position(|s| s.seq == self.commit.seq) {
            if self.commit.offset >= self.segments[idx].len && idx + 1 < self.segments.len() {
                self.commit = Pos {
                    seq: self.segments[idx + 1].seq,
                    offset: HEADER,
                };
            } else {
                break;
            }
        }
        // The read position may have been at the end of the segment the cursor just left
        // (the same place in the stream): move it along.
        if self.read < self.commit {
            self.read = self.commit;
            self.reader = None;
        }
        self.write_cursor()?;
        while self
            .segments
            .front()
            .is_some_and(|s| s.seq < self.commit.seq)
        {
            if let Some(s) = self.segments.pop_front() {
                let path = self.dir.join(seg_name(s.seq));
                if self.reader.as_ref().is_some_and(|(q, _)| *q == s.seq) {
                    self.reader = None;
                }
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The position after the last appended record (where the next append starts).
    pub fn end_pos(&self) -> Pos {
        self.segments.back().map_or(self.commit, |s| Pos {
            seq: s.seq,
            offset: s.len,
        })
    }

    /// The position the next [`Store::read`] starts at.
    pub fn read_pos(&self) -> Pos {
        self.read
    }

    /// Moves the read position back to `pos` (returned by [`Store::read_pos`] when `unread`
    /// records were unread): the records read since are read again.
    pub fn seek_read(&mut self, pos: Pos, unread: u64) {
        self.read = pos;
        self.unread = unread;
        self.reader = None;
    }

    /// Forgets what [`Store::read`] handed out since the last commit: the next read starts at
    /// the cursor again (the records were not delivered).
    pub fn rewind(&mut self) {
        self.read = self.commit;
        self.unread = self.pending;
        self.reader = None;
    }

    /// With nothing pending, starts over with one empty segment (keeps the spool small and
    /// the cursor at the start of the head segment, which [`Store::prepend`] relies on).
    pub fn reset_if_empty(&mut self) -> Result<()> {
        if self.pending > 0 {
            return Ok(());
        }
        let fresh = self.segments.len() == 1
            && self.segments[0].len == HEADER
            && self.commit
                == Pos {
                    seq: self.segments[0].seq,
                    offset: HEADER,
                };
        if fresh {
            return Ok(());
        }
        let next = self
            .segments
            .back()
            .map(|s| s.seq + 1)
            .unwrap_or(self.commit.seq + 1);
        self.writer = None;
        self.reader = None;
        self.new_segment(next)?;
        self.commit = Pos {
            seq: next,
            offset: HEADER,
        };
        self.read = self.commit;
        self.unread = 0;
        self.write_cursor()?;
        while self.segments.front().is_some_and(|s| s.seq < next) {
            if let Some(s) = self.segments.pop_front() {
                let path = self.dir.join(seg_name(s.seq));
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Puts records *before* everything pending (used at shutdown for records the inner sink
    /// held in memory, which are older than anything spooled). Requires the cursor to be at
    /// the start of its segment and nothing handed out by `read`; otherwise they are appended
    /// at the end (order within the spool is then not kept, a warning says so).
    /// Returns how many were stored (fewer only when the spool is full).
    pub fn prepend(&mut self, records: &[FlowRecord]) -> Result<usize> {
        if records.is_empty() {
            return Ok(0);
        }
        if self.commit.offset != HEADER || self.read != self.commit || self.commit.seq == 0 {
            tracing::warn!(spool = %self.dir.display(), records = records.len(), "spool: cannot put older records ahead of the spooled ones; appended at the end (order not kept for them)");
            return self.append(records);
        }
        let seq = self.commit.seq - 1;
        let path = self.dir.join(seg_name(seq));
        let mut enc = Vec::with_capacity(records.len() * 160);
        enc.extend_from_slice(MAGIC);
        let mut total = self.bytes() + HEADER;
        let mut n = 0;
        for r in records {
            let at = enc.len();
            enc.extend_from_slice(&[0; FRAME_HEADER]);
            codec::encode(r, &mut enc);
            let len = enc.len() - at - FRAME_HEADER;
            if total + (len + FRAME_HEADER) as u64 > self.max_bytes {
                enc.truncate(at);
                break;
            }
            total += (len + FRAME_HEADER) as u64;
            let crc = crc32fast::hash(&enc[at + FRAME_HEADER..]);
            enc[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            enc[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let _ = std::fs::remove_file(&path);
        let mut f = File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        f.write_all(&enc)
            .and_then(|_| f.sync_all())
            .map_err(io(format!("writing {}", path.display())))?;
        fsync_dir(&self.dir)?;
        self.segments.push_front(Segment {
            seq,
            len: enc.len() as u64,
            records: n as u64,
        });
        self.commit = Pos {
            seq,
            offset: HEADER,
        };
        self.read = self.commit;
        self.write_cursor()?;
        self.pending += n as u64;
        self.unread += n as u64;
        self.reader = None;
        Ok(n)
    }
}
