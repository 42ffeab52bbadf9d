//! Kubernetes names for flow ends (issue 13): `flowlens run --kubernetes`.
//!
//! [`start`] spawns one thread (`flowlens-k8s`) with its own single-threaded tokio runtime that
//! runs the real `kube` client's watchers (list, then watch with bookmarks; relist after 410
//! Gone; exponential back-off while the API server is down) for Pods, Services and Nodes
//! (`core/v1`), ReplicaSets (`apps/v1`) and Jobs (`batch/v1`), all cluster-wide (remote ends
//! need every pod's address). Each event is converted outside the lock and applied to the
//! [`Store`] under a short lock; the drain thread's [`Names::fill`] takes the same lock per
//! record, never across an API call, so an API server that is slow or down never blocks the
//! drain: names are simply null until known. The thread also forgets deleted pods after the
//! grace period and logs counts (at most every [`LOG_EVERY`], and at once on the first error
//! and on the first full sync).

pub mod store;
mod watch;

use std::{
    net::IpAddr,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use flowlens_schema::record::Ends;

pub use store::{Kind, NodeMeta, OwnedMeta, PodMeta, ServiceMeta, Store, StoreCounts};
pub use watch::{client_config, start};

/// How often the watcher thread logs its counts (when they changed) and collects garbage.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Counters shared by the watchers and the identity stage.
#[derive(Default, Debug)]
pub struct Counters {
    /// Watch or list errors (API server down, dropped connection, 410 Gone, ...).
    pub errors: AtomicU64,
    /// Lists started (the first of each kind, then one per relist).
    pub lists: AtomicU64,
    /// Objects applied or deleted.
    pub events: AtomicU64,
    /// Record ends named (any field filled).
    pub named_ends: AtomicU64,
    /// Local ends with a pod UID the store does not know (yet).
    pub unknown_pod_uids: AtomicU64,
    /// Kinds whose first list has completed (bit per [`Kind`]).
    pub synced: AtomicU64,
}

/// The handle the identity stage holds: the store and the counters.
#[derive(Clone)]
pub struct Names {
    store: Arc<Mutex<Store>>,
    pub counters: Arc<Counters>,
}

impl Names {
    /// A handle on an empty store (tests and the benchmark feed it directly).
    pub fn new(grace: Duration) -> Names {
        Names {
            store: Arc::new(Mutex::new(Store::new(grace.as_micros() as i64))),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills the Kubernetes fields of both ends of a record whose last packet was at `t_us`
    /// (µs since the epoch): ends with a known pod UID by it, the others by address.
    pub fn fill(&self, ends: &mut Ends, source: IpAddr, destination: IpAddr, t_us: i64) {
        let s = self.lock();
        let mut named = 0;
        let mut unknown = 0;
        for (e, ip) in [
            (&mut ends.source, source),
            (&mut ends.destination, destination),
        ] {
            if let Some(uid) = &e.k8s_pod_uid
                && !s.knows_pod(uid)
            {
                unknown += 1;
            }
            if s.fill(e, ip, t_us) {
                named += 1;
            }
        }
        drop(s);
        if named > 0 {
            self.counters.named_ends.fetch_add(named, Relaxed);
        }
        if unknown > 0 {
            self.counters.unknown_pod_uids.fetch_add(unknown, Relaxed);
        }
    }

    /// Whether every kind's first list has completed.
    pub fn synced(&self) -> bool {
        self.counters.synced.load(Relaxed) == (1 << Kind::ALL.len()) - 1
    }

    pub fn counts(&self) -> StoreCounts {
        self.lock().counts()
    }
}

/// Reads a kubeconfig file and checks it names a cluster, for `--kubeconfig` (one line on
/// error). Returns nothing: [`client_config`] builds the client's configuration.
pub fn check_kubeconfig(path: &Path) -> anyhow::Result<()> {
    watch::read_kubeconfig(path).map(|_| ())
}
