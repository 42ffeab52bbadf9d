//! The Parquet sink's write-ahead journal: an on-disk [`Store`] (the spool's format) that
//! holds every row until the file it went into is complete, and the sink's recovery state
//! (degraded or not, retry backoff, rate-limited log lines). What the sink does with it is in
//! the parent module's documentation.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{Result, log_limit::RateLimited, spool::Store};

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
pub(super) const RECOVER_CHUNK: usize = 65_536;
pub(super) const RECOVER_PER_TICK: usize = 8 * RECOVER_CHUNK;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub(super) struct Journal {
    pub store: Store,
    /// Writing Parquet failed: records go only to the journal until it is replayed.
    pub degraded: bool,
    pub retry_at: Instant,
    pub backoff: Duration,
    /// Failed retries while degraded, journal append failures, records lost or unprotected:
    /// each logged once, then at most every 30 s with the number suppressed.
    pub log_failed: RateLimited,
    pub log_append: RateLimited,
    pub log_lost: RateLimited,
    pub log_unprotected: RateLimited,
    /// Rows in open files that the journal could not take (full or failing): lost if their
    /// file cannot be completed.
    pub unjournaled: u64,
}

impl Journal {
    /// Opens (or creates) the journal; one left with records by an earlier run starts degraded
    /// (its records are written first).
    pub fn open(o: &JournalOptions) -> Result<Journal> {
        let (store, _) = Store::open(
            &o.dir,
            o.max_bytes,
            crate::spool::store::DEFAULT_SEGMENT_BYTES,
        )?;
        let degraded = store.pending() > 0;
        if degraded {
            tracing::warn!(
                journal = %o.dir.display(),
                records = store.pending(),
                "parquet: the journal holds records an earlier run did not get into complete files (killed, or writing failed); writing them now"
            );
        }
        Ok(Journal {
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

    /// Writing failed: degraded from now on, next retry after the backoff (1 s doubling to
    /// 30 s), replay from the first uncommitted record. Returns whether this is the first
    /// failure (not a failed retry).
    pub fn degrade(&mut self) -> bool {
        let first = !self.degraded;
        self.backoff = if first {
            RETRY_FIRST
        } else {
            (self.backoff * 2).min(RETRY_MAX)
        };
        self.degraded = true;
        self.retry_at = Instant::now() + self.backoff;
        self.store.rewind();
        first
    }

    /// The journal is written completely: back to normal.
    pub fn recovered(&mut self) {
        self.degraded = false;
        self.backoff = RETRY_FIRST;
    }

    /// Every row journaled since the last commit is in a completed file: commit them all.
    pub fn commit_all(&mut self) -> Result<()> {
        let end = self.store.end_pos();
        let n = self.store.pending();
        self.store.commit(end, n)?;
        self.store.reset_if_empty()?;
        self.unjournaled = 0;
        Ok(())
    }
}
