//! The spool's disk format on its own: segments, cursor, reopen, torn tails, bad directories.

use std::{io::Write, path::PathBuf};

use flowlens_sinks::spool::Store;
#[cfg(feature = "kernel-tests")]
use flowlens_testkit::Tmpfs;
use flowlens_testkit::{records::conversations, unique_path};

fn spool_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    v.sort();
    v
}

#[test]
fn fifo_across_segments_reopen_and_torn_tail() {
    let dir = unique_path("store-fifo");
    let recs = conversations(500); // 1000 records
    let (mut s, rep) = Store::open(&dir, 1 << 30, 16 * 1024).unwrap();
    assert_eq!(rep.records, 0);
    assert_eq!(s.append(&recs).unwrap(), 1000);
    assert_eq!((s.pending(), s.unread()), (1000, 1000));
    let files = spool_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    assert_eq!(
        s.bytes(),
        files
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>()
    );

    // Read and commit in uneven chunks; read exactly up to segment ends too.
    let mut out = Vec::new();
    let mut done = 0;
    for n in [1, 99, 7, 300] {
        let pos = s.read(n, &mut out).unwrap();
        s.commit(pos, n as u64).unwrap();
        done += n;
    }
    assert_eq!(out, recs[..done]);
    assert_eq!(s.pending(), 1000 - done as u64);
    assert!(
        spool_files(&dir).len() < files.len(),
        "consumed segments deleted"
    );
    // Read some without committing: a reopen hands them out again.
    let mut uncommitted = Vec::new();
    s.read(50, &mut uncommitted).unwrap();
    drop(s);

    // A torn frame at the tail (crash in the middle of an append).
    let tail = spool_files(&dir).pop().unwrap();
    let good = std::fs::metadata(&tail).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&tail)
        .unwrap()
        .write_all(&[90, 0, 0, 0, 0xde, 0xad])
        .unwrap();
    let (mut s, rep) = Store::open(&dir, 1 << 30, 16 * 1024).unwrap();
    assert_eq!(
        (rep.records, rep.truncated_bytes, rep.truncated_segments),
        (1000 - done as u64, 6, 1)
    );
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), good);
    let mut rest = Vec::new();
    loop {
        let before = rest.len();
        let pos = s.read(64, &mut rest).unwrap();
        if rest.len() == before {
            break;
        }
        s.commit(pos, (rest.len() - before) as u64).unwrap();
    }
    assert_eq!(rest, recs[done..]);
    assert_eq!(uncommitted, recs[done..done + 50]);
    assert_eq!(s.pending(), 0);
    s.reset_if_empty().unwrap();
    assert_eq!(spool_files(&dir).len(), 1);
    assert_eq!(s.bytes(), 8);

    // Prepend puts older records ahead of newer ones.
    s.append(&recs[10..20]).unwrap();
    s.prepend(&recs[..10]).unwrap();
    let mut out = Vec::new();
    s.read(100, &mut out).unwrap();
    assert_eq!(out, recs[..20]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bound_bad_cursor_and_unwritable_directory_are_reported() {
    let dir = unique_path("store-bound");
    let recs = conversations(500);
    let (mut s, _) = Store::open(&dir, 20 * 1024, 8 * 1024).unwrap();
    let stored = s.append(&recs).unwrap();
    assert!(stored > 50 && stored < 1000, "{stored}");
    assert!(s.bytes() <= 20 * 1024);
    // The record that did not fit still does not (records differ in size: some carry
    // identity columns).
    let next = stored as usize;
    assert_eq!(s.append(&recs[next..next + 1]).unwrap(), 0, "full");
    drop(s);

    std::fs::write(dir.join("cursor"), "garbage\n").unwrap();
    let e = Store::open(&dir, 20 * 1024, 8 * 1024)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cursor") && e.contains("corrupt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A path under a regular file cannot be a directory.
    let f = unique_path("store-file");
    std::fs::write(&f, "x").unwrap();
    let e = Store::open(&f.join("spool"), 1 << 20, 8192)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("spool directory") && e.contains(f.to_str().unwrap()),
        "{e}"
    );
    std::fs::remove_file(&f).unwrap();
}

/// Disk full (a 96 KiB tmpfs): the append fails with the spool's path in the error, the segment
/// is cut back to its last whole frame, and everything stored before is read back intact.
/// Mounting needs root: kernel tier.
#[cfg(feature = "kernel-tests")]
#[test]
fn disk_full_fails_the_append_without_a_torn_frame() {
    let fs = Tmpfs::mount("store-enospc", "96k").unwrap();
    let spool = fs.path().join("s");
    let recs = conversations(500);
    let (mut s, _) = Store::open(&spool, 1 << 30, 1 << 30).unwrap();
    let mut stored = 0;
    let err = loop {
        match s.append(&recs[stored % 1000..(stored % 1000) + 40]) {
            Ok(n) => {
                assert_eq!(n, 40);
                stored += n;
            }
            Err(e) => break e.to_string(),
        }
        assert!(stored < 100_000, "never filled");
    };
    assert!(
        err.contains("appending to spool") && err.contains(spool.to_str().unwrap()),
        "{err}"
    );
    let seg = spool_files(&spool).pop().unwrap();
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        s.bytes(),
        "no partial frame left"
    );
    assert_eq!(s.pending(), stored as u64);
    drop(s);
    let (mut s, rep) = Store::open(&spool, 1 << 30, 1 << 30).unwrap();
    assert_eq!((rep.records, rep.truncated_bytes), (stored as u64, 0));
    let mut out = Vec::new();
    s.read(usize::MAX, &mut out).unwrap();
    assert_eq!(out.len(), stored);
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r, &recs[i % 1000], "record {i}");
    }
}

/// `chattr FLAG path` (e2fsprogs, Priority: required in Debian).
#[cfg(feature = "kernel-tests")]
fn chattr(flag: &str, path: &std::path::Path) {
    let st = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .expect("running chattr (e2fsprogs)");
    assert!(st.success(), "chattr {flag} {}: {st}", path.display());
}

/// A failed append whose partial write cannot be cut off: the disk is full (a 96 KiB tmpfs)
/// and the segment is append-only (`chattr +a`: the write goes on, `ftruncate` fails with
/// EPERM). The whole frames that reached the disk are kept and counted as stored (they would
/// come back at every open anyway), the rest of the batch is not stored; the segment is closed
/// and later appends go to a new one. Every record counted as stored is read back, in order,
/// by this store and after a reopen, which cuts the torn tail off and reports it.
#[cfg(feature = "kernel-tests")]
#[test]
fn a_partial_write_that_cannot_be_cut_off_keeps_whole_frames_and_closes_the_segment() {
    let fs = Tmpfs::mount("store-sealed", "96k").unwrap();
    let spool = fs.path().join("s");
    let recs = conversations(250); // 500 records
    let (mut s, _) = Store::open(&spool, 1 << 30, 1 << 30).unwrap();
    assert_eq!(s.append(&recs[..100]).unwrap(), 100);
    let seg = spool_files(&spool).pop().unwrap();
    let filler = fs.fill("filler").unwrap();
    chattr("+a", &seg);
    let stored = s.append(&recs[100..400]);
    chattr("-a", &seg);
    let kept = stored.unwrap();
    // The file's last page had room for some whole frames and part of the next.
    assert!(kept > 0 && kept < 300, "{kept}");
    assert_eq!(s.pending(), 100 + kept as u64);
    let torn = std::fs::metadata(&seg).unwrap().len() - s.bytes();
    assert!(torn > 0, "the failed append left part of a frame");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(s.append(&recs[400..500]).unwrap(), 100);
    assert_eq!(
        spool_files(&spool).len(),
        2,
        "later appends go to a new segment"
    );
    let want: Vec<_> = recs[..100 + kept]
        .iter()
        .chain(&recs[400..500])
        .cloned()
        .collect();
    let mut out = Vec::new();
    s.read(usize::MAX, &mut out).unwrap();
    assert_eq!(out, want);
    drop(s);

    let (mut s, rep) = Store::open(&spool, 1 << 30, 1 << 30).unwrap();
    assert_eq!(
        (rep.records, rep.truncated_bytes, rep.truncated_segments),
        (want.len() as u64, torn, 1)
    );
    let mut out = Vec::new();
    s.read(usize::MAX, &mut out).unwrap();
    assert_eq!(out, want);
}
