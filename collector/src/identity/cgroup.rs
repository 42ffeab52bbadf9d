//! cgroup id → cgroup v2 path (and what the path names), with a cache refreshed on miss.
//!
//! The id the probe captures is the cgroup's kernfs node id, which on 64-bit kernels is the
//! inode number of the cgroup's directory in every cgroup2 mount (`kernfs_id_ino`); so one walk
//! of the cgroup2 mount (`stat` of each directory) maps ids to paths. Ids are not reused while
//! the system runs (kernfs ids only grow; the upper 32 bits count wrap-arounds), so an entry
//! stays valid after the cgroup is removed: a container that goes away keeps its name for the
//! flows it left open. Resolution happens when an id first shows up in a drain
//! ([`CgroupResolver::learn`]), i.e. while the socket's cgroup most likely still exists.
//!
//! The mount is found in `/proc/self/mountinfo`: `/sys/fs/cgroup` on pure v2 hosts,
//! `/sys/fs/cgroup/unified` on hybrid (v1 + v2) systemd hosts. Paths are relative to the mount's
//! root (the collector's cgroup namespace root).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::container;

/// What a cgroup id resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Path relative to the cgroup2 root, starting with `/`.
    pub path: Arc<str>,
    pub container_id: Option<Arc<str>>,
    pub k8s_pod_uid: Option<Arc<str>>,
    /// `comm` and pid of the lowest-pid process in the cgroup when it was resolved.
    pub process: Option<(Arc<str>, u32)>,
}

impl CgroupInfo {
    /// Info of `path` (relative, starting with `/`) with ids parsed from its name.
    pub fn from_path(path: &str, process: Option<(Arc<str>, u32)>) -> CgroupInfo {
        let (container_id, pod) = container::parse(path);
        CgroupInfo {
            path: path.into(),
            container_id: container_id.map(Arc::from),
            k8s_pod_uid: pod.map(Arc::from),
            process,
        }
    }
}

/// Ids not found are looked for again after this long (a walk per miss would let a flood of
/// unknown ids walk the tree every drain).
const MISS_RETRY: Duration = Duration::from_secs(30);
/// Bound on cached ids (each entry is a path and a few names); the cache is emptied when full.
const MAX_KNOWN: usize = 200_000;
/// Bound on directories one walk visits (a runaway tree cannot stall the pipeline for long).
const MAX_WALK: usize = 1_000_000;

#[derive(Default, Debug, Clone, Copy)]
pub struct ResolverStats {
    pub walks: u64,
    pub resolved: u64,
    pub unresolved: u64,
}

pub struct CgroupResolver {
    root: Option<PathBuf>,
    known: HashMap<u64, Arc<CgroupInfo>>,
    missed: HashMap<u64, Instant>,
    pub stats: ResolverStats,
}

/// The cgroup2 mount point, from a `/proc/self/mountinfo` text: the first cgroup2 mount of the
/// hierarchy's root (mount root `/`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        let mount = f.get(4)?;
        (f.get(3) == Some(&"/")).then(|| PathBuf::from(unescape(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `comm` and pid of the lowest pid in `dir/cgroup.procs` (best effort).
fn first_process(dir: &Path) -> Option<(Arc<str>, u32)> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pid = procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .min()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some((comm.trim_end_matches('\n').into(), pid))
}

impl CgroupResolver {
    /// A resolver for the cgroup2 mount of this system (none: every id stays unresolved).
    ///
    /// When this mount namespace shows no cgroup2 (e.g. under `ip netns exec`, which remounts
    /// `/sys`), the hierarchy is read through pid 1's root (`/proc/1/root`), as init sees it.
    pub fn from_system() -> CgroupResolver {
        let own = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        let root = own.or_else(|| {
            let init = std::fs::read_to_string("/proc/1/mountinfo")
                .ok()
                .and_then(|m| cgroup2_mount(&m))?;
            let via = Path::new("/proc/1/root").join(init.strip_prefix("/").ok()?);
            via.is_dir().then_some(via)
        });
        match &root {
            Some(r) => tracing::debug!(root = %r.display(), "cgroup2 hierarchy for flow identity"),
            None => {
                tracing::warn!("no cgroup2 mount found: flows' cgroup/container columns stay null")
            }
        }
        Self::with_root(root)
    }

    pub fn with_root(root: Option<PathBuf>) -> CgroupResolver {
        CgroupResolver {
            root,
            known: HashMap::new(),
            missed: HashMap::new(),
            stats: ResolverStats::default(),
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub fn get(&self, id: u64) -> Option<&Arc<CgroupInfo>> {
        self.known.get(&id)
    }

    /// Resolves the ids not known yet: one walk of the cgroup2 tree for all of them (stopping
    /// once every one is found), unless each was missed less than [`MISS_RETRY`] ago.
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        let mut wanted: HashSet<u64> = ids
            .into_iter()
            .filter(|id| *id != 0 && !self.known.contains_key(id))
            .filter(|id| {
                self.missed
                    .get(id)
                    .is_none_or(|t| now.duration_since(*t) >= MISS_RETRY)
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Some(root) = self.root.clone() else {
            return;
        };
        if self.known.len() + wanted.len() > MAX_KNOWN {
            self.known.clear();
        }
        if self.missed.len() > MAX_KNOWN {
            self.missed
                .retain(|_, t| now.duration_since(*t) < MISS_RETRY);
        }
        self.stats.walks += 1;
        let mut stack = vec![root.clone()];
        let mut visited = 0usize;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > MAX_WALK || wanted.is_empty() {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed during the walk
            };
            if wanted.remove(&meta.ino()) {
                let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
                let path = format!("/{}", rel.to_string_lossy());
                let info = CgroupInfo::from_path(&path, first_process(&dir));
                tracing::debug!(id = meta.ino(), path, process = ?info.process, "cgroup resolved");
                self.known.insert(meta.ino(), Arc::new(info));
                self.stats.resolved += 1;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        for id in wanted {
            self.missed.insert(id, now);
            self.stats.unresolved += 1;
        }
    }

    /// Inserts an entry (tests and benchmarks).
    pub fn insert(&mut self, id: u64, info: CgroupInfo) {
        self.known.insert(id, Arc::new(info));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_pure_and_hybrid() {
        let pure =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // A bind mount of a sub-tree is not the root; v1 only: none.
        let sub = "40 24 0:30 /kubepods /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(sub), None);
        assert_eq!(
            cgroup2_mount("32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        let escaped = "35 24 0:30 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/mnt/cg two")));
    }

    /// The walk over a plain directory tree (inode numbers stand in for cgroup ids): ids are
    /// found, paths are relative, a miss is remembered, and a removed directory keeps its entry.
    #[test]
    fn walk_resolves_ids_and_keeps_removed_entries() {
        let tmp = std::env::temp_dir().join(format!("flowlens-cg-{}", std::process::id()));
        let id = "a".repeat(64);
        let deep = tmp.join(format!("system.slice/docker-{id}.scope"));
        std::fs::create_dir_all(&deep).unwrap();
        let ino = std::fs::metadata(&deep).unwrap().ino();
        let mut r = CgroupResolver::with_root(Some(tmp.clone()));
        r.learn([ino, 0, u64::MAX]);
        let info = r.get(ino).unwrap();
        assert_eq!(&*info.path, format!("/system.slice/docker-{id}.scope"));
        assert_eq!(info.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(r.stats.walks, 1);
        assert_eq!(r.stats.unresolved, 1);
        // The miss is not walked again right away; the known id never is.
        r.learn([ino, u64::MAX]);
        assert_eq!(r.stats.walks, 1);
        std::fs::remove_dir_all(&tmp).unwrap();
        r.learn([ino]);
        assert_eq!(
            r.get(ino).unwrap().container_id.as_deref(),
            Some(id.as_str())
        );
    }
}
