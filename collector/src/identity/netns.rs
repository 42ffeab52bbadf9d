//! Host interface → peer network namespace → container (issue 12).
//!
//! A container in its own network namespace talks to the host through a veth pair: one end in
//! the container's namespace, the other (the "host-side interface") in the namespace flowlens
//! watches. Packets that cross a veth have lost their socket, so the netfilter programs capture
//! no cgroup for them; the interface names the container instead:
//!
//! 1. `RTM_GETLINK` (a dump of this namespace's links) gives, for each interface whose link
//!    peer lives in another namespace, that namespace's id as seen from here
//!    (`IFLA_LINK_NETNSID`).
//! 2. The namespaces with processes are found by scanning `/proc/*/ns/net` (grouped by the
//!    namespace's inode); `RTM_GETNSID` with an fd of each candidate (`NETNSA_FD`) tells which
//!    id it has here, until every wanted id is found.
//! 3. The processes of that namespace and their cgroup v2 paths (`/proc/<pid>/cgroup`, the
//!    `0::` line) name it, with the same [`CgroupInfo`] (container id, pod UID) the socket
//!    cgroups get ([`name_netns`]): the namespace's oldest process (start time), skipping
//!    processes named `pause` (a Kubernetes pod's sandbox) when others exist, gives the cgroup
//!    and the process. Processes of other cgroups that pass through the namespace (CNI
//!    plugins, `ip netns exec`, `nsenter`) are ignored, except that when other processes of
//!    the same pod (same pod UID) live in other cgroups (a pod with several containers), the
//!    name is the pod's cgroup (their common ancestor: pod UID, no container id, no process).
//!
//! Each (interface, namespace inode, identity) gets a fresh *end id*: an interface index
//! reused by a new container is a new end, never the old one. The map is refreshed when a
//! link notification (`RTMGRP_LINK`) announces a new interface or a changed peer, when a
//! drain sees an interface index the map does not know (at most once per [`MISS_RETRY`]), and,
//! for a namespace that had no process yet (runtimes create the namespace and its veth before
//! they start the container), again at every drain that sees traffic on its interface (at
//! most one refresh per drain); a name not yet confirmed by a second lookup, or only `pause`,
//! is looked up again [`RETRY_MIN`] later, then at doubling intervals up to [`RETRY_MAX`]. A removed interface keeps its entry for
//! [`TOMBSTONE_DRAINS`] drains (packets captured before the removal are drained after it),
//! unless a new interface takes its index.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    sync::Arc,
    time::{Duration, Instant},
};

use super::cgroup::CgroupInfo;

/// An unknown interface index (or a namespace without a process) is looked up again after this long.
pub const MISS_RETRY: Duration = Duration::from_secs(1);
/// First and longest wait between two lookups of a namespace that had no process.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Drains a removed interface's entry outlives its removal.
pub const TOMBSTONE_DRAINS: u64 = 3;
/// Processes of one namespace whose cgroup is read (the lowest pids).
const MAX_PROCS_PER_NETNS: usize = 64;

// rtnetlink constants (linux/rtnetlink.h, if_link.h, net_namespace.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const RTMGRP_LINK: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// What names the far end of a host-side interface.
#[derive(Clone, Debug)]
pub struct PeerEnd {
    /// Unique per (interface index, namespace, identity) for the life of the process.
    pub end_id: u64,
    pub info: Arc<CgroupInfo>,
}

#[derive(Debug)]
struct Link {
    nsid: i32,
    netns: u64,
    end: Option<PeerEnd>,
    /// No process (or only `pause`) in the namespace when resolved: looked up again.
    tentative: bool,
    /// When a tentative link is looked up again, and the wait after that.
    retry_at: Instant,
    backoff: Duration,
    /// Drain at which the link was seen removed.
    removed: Option<u64>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct PeerStats {
    /// Full refreshes (link dump + /proc scan).
    pub refreshes: u64,
    /// Duration of the last refresh.
    pub last_refresh: Duration,
    /// Host-side interfaces named after the last refresh.
    pub named: usize,
}

/// Host interface index → the container behind it.
pub struct PeerMap {
    nl: Option<Netlink>,
    events: Option<Netlink>,
    own_netns: u64,
    links: HashMap<u32, Link>,
    /// Interfaces without a peer in another namespace.
    others: HashSet<u32>,
    dirty: bool,
    last_refresh: Option<Instant>,
    next_end: u64,
    drain: u64,
    /// Drain of the last refresh caused by a miss.
    miss_drain: u64,
    /// The last `/proc` scan could not read some processes' namespaces, for lack of
    /// `CAP_SYS_PTRACE`.
    denied: bool,
    /// This process has `CAP_SYS_PTRACE` (checked once).
    ptrace: bool,
    pub stats: PeerStats,
}

impl PeerMap {
    /// A map that names nothing.
    pub fn disabled() -> PeerMap {
        PeerMap {
            nl: None,
            events: None,
            own_netns: 0,
            links: HashMap::new(),
            others: HashSet::new(),
            dirty: false,
            last_refresh: None,
            next_end: 1,
            drain: 0,
            miss_drain: u64::MAX,
            denied: false,
            ptrace: false,
            stats: PeerStats::default(),
        }
    }

    /// A map of this network namespace's interfaces, filled now (one refresh) and kept up to
    /// date by link notifications. Without rtnetlink (never on Linux) it names nothing.
    pub fn from_system() -> PeerMap {
        let mut m = PeerMap::disabled();
        m.own_netns = netns_inode("thread-self").unwrap_or(0);
        m.ptrace = has_cap_sys_ptrace();
        match (Netlink::open(0), Netlink::open(RTMGRP_LINK)) {
            (Ok(nl), Ok(ev)) => {
                m.nl = Some(nl);
                m.events = Some(ev);
                m.refresh();
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "rtnetlink unavailable: containers behind veth interfaces are not named")
            }
        }
        m
    }

    pub fn is_enabled(&self) -> bool {
        self.nl.is_some()
    }

    /// Whether any interface has (or recently had) a peer namespace.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Once per drain, before [`PeerMap::end`]: reads link notifications, ages removed
    /// interfaces, and refreshes when a new interface or a changed peer was announced.
    pub fn next_drain(&mut self) {
        self.drain += 1;
        self.read_events();
        let d = self.drain;
        self.links
            .retain(|_, l| l.removed.is_none_or(|r| d - r <= TOMBSTONE_DRAINS));
        if self.dirty {
            self.refresh();
        }
    }

    /// The container behind interface `ifindex`, for packets drained now.
    pub fn end(&mut self, ifindex: u32) -> Option<&PeerEnd> {
        let want = match self.links.get(&ifindex) {
            Some(l) => l.tentative && l.removed.is_none() && Instant::now() >= l.retry_at,
            None => {
                !self.others.contains(&ifindex)
                    && ifindex != 0
                    && self.last_refresh.is_none_or(|t| t.elapsed() >= MISS_RETRY)
            }
        };
        // At most one refresh per drain for all misses together.
        if want && self.nl.is_some() && self.miss_drain != self.drain {
            self.miss_drain = self.drain;
            self.refresh();
        }
        self.links.get(&ifindex)?.end.as_ref()
    }

    /// Names interface `ifindex` after `info` as a new end (tests and benchmarks); returns
    /// the end id.
    pub fn insert(&mut self, ifindex: u32, info: CgroupInfo) -> u64 {
        self.next_end += 1;
        self.links.insert(
            ifindex,
            Link {
                nsid: -1,
                netns: 0,
                end: Some(PeerEnd {
                    end_id: self.next_end,
                    info: Arc::new(info),
                }),
                tentative: false,
                retry_at: Instant::now(),
                backoff: Duration::ZERO,
                removed: None,
            },
        );
        self.next_end
    }

    /// Marks interface `ifindex` removed now (what a link notification does).
    pub fn remove(&mut self, ifindex: u32) {
        if let Some(l) = self.links.get_mut(&ifindex) {
            l.removed.get_or_insert(self.drain);
        }
    }

    fn read_events(&mut self) {
        let Some(ev) = &mut self.events else { return };
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match ev.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // ENOBUFS: notifications were lost; resynchronize.
                    self.dirty = true;
                    break;
                }
            };
            for (ty, payload) in messages(&buf[..n]) {
                if ty != RTM_NEWLINK && ty != RTM_DELLINK {
                    continue;
                }
                let Some((index, _, nsid)) = parse_link(payload) else {
                    continue;
                };
                if ty == RTM_DELLINK {
                    if let Some(l) = self.links.get_mut(&index) {
                        l.removed.get_or_insert(self.drain);
                    }
                    self.others.remove(&index);
                    continue;
                }
                let known = match self.links.get(&index) {
                    Some(l) => l.removed.is_none() && Some(l.nsid) == nsid,
                    None => nsid.is_none() && self.others.contains(&index),
                };
                if !known {
                    self.dirty = true;
                }
            }
        }
    }

    /// Dumps the links, maps the peer namespace ids to namespaces and names them.
    pub fn refresh(&mut self) {
        let t0 = Instant::now();
        self.dirty = false;
        self.last_refresh = Some(t0);
        let Some(nl) = &mut self.nl else { return };
        let links = match nl.dump_links() {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "link dump failed");
                return;
            }
        };
        let wanted: HashSet<i32> = links.iter().filter_map(|(_, _, n)| *n).collect();
        let mut by_nsid: HashMap<i32, (u64, Vec<u32>)> = HashMap::new();
        if !wanted.is_empty() {
            let mut by_inode: HashMap<u64, Vec<u32>> = HashMap::new();
            let (procs, denied) = proc_netns();
            // With CAP_SYS_PTRACE a denial is a race (a process exiting, a kernel thread):
            // nothing is hidden, not worth a warning, and namespaces without a process are
            // still looked up at every drain with traffic. Without it, containers are not
            // named: warn once, and back off.
            let hidden = denied > 0 && !self.ptrace;
            if hidden && !self.denied {
                tracing::warn!(
                    processes = denied,
                    "cannot read other processes' network namespaces (needs CAP_SYS_PTRACE): containers behind veth interfaces may not be named"
                );
            }
            self.denied = hidden;
            for (pid, ino) in procs {
                if ino != self.own_netns {
                    by_inode.entry(ino).or_default().push(pid);
                }
            }
            for (ino, mut pids) in by_inode {
                if by_nsid.len() == wanted.len() {
                    break;
                }
                pids.sort_unstable();
                let nsid = nl.nsid_of_netns(ino, &pids).filter(|n| wanted.contains(n));
                if let Some(n) = nsid {
                    by_nsid.insert(n, (ino, pids));
                }
            }
        }
        let mut present = HashSet::new();
        self.others.clear();
        for (index, _name, nsid) in links {
            present.insert(index);
            let Some(nsid) = nsid else {
                self.others.insert(index);
                self.links.remove(&index);
                continue;
            };
            let (ino, pids) = by_nsid
                .get(&nsid)
                .map_or((0, &[][..]), |(i, p)| (*i, p.as_slice()));
            if let Some(l) = self.links.get(&index)
                && l.removed.is_none()
                && l.nsid == nsid
                && l.netns == ino
                && !l.tentative
            {
                continue;
            }
            let (info, tentative) = identity_of(ino, pids);
            tracing::debug!(
                index,
                nsid,
                netns = ino,
                ?pids,
                ?info,
                tentative,
                "host interface named"
            );
            let end = match (info, self.links.get(&index)) {
                // Same namespace, same identity: the same end (open records stay whole).
                (Some(i), Some(l))
                    if l.removed.is_none()
                        && l.netns == ino
                        && l.end.as_ref().is_some_and(|e| *e.info == i) =>
                {
                    l.end.clone()
                }
                (Some(i), _) => {
                    self.next_end += 1;
                    Some(PeerEnd {
                        end_id: self.next_end,
                        info: Arc::new(i),
                    })
                }
                (None, _) => None,
            };
            // A name is confirmed when a second lookup agrees (a container's first process
            // often execs its entrypoint after the runtime attached the veth): until then it is
            // looked up again too.
            let confirmed = matches!(
                (&end, self.links.get(&index)),
                (Some(e), Some(l)) if l.end.as_ref().is_some_and(|o| o.end_id == e.end_id)
            );
            let tentative = tentative || ino == 0 || !confirmed;
            // A namespace without its process yet (or a name not confirmed): looked up again
            // when its interface carries traffic, RETRY_MIN later, then less and less often.
            let backoff = match self.links.get(&index) {
                // No process at all: at the next drain with traffic (the kernel's own IPv6
                // packets of a new link come before any process of the container).
                // (Unless processes are hidden from us: then backing off like the others.)
                _ if end.is_none() && !self.denied => Duration::ZERO,
                Some(l) if l.tentative && l.removed.is_none() && l.nsid == nsid => {
                    (l.backoff * 2).clamp(RETRY_MIN, RETRY_MAX)
                }
                _ => RETRY_MIN,
            };
            self.links.insert(
                index,
                Link {
                    nsid,
                    netns: ino,
                    end,
                    tentative,
                    retry_at: Instant::now() + backoff,
                    backoff,
                    removed: None,
                },
            );
        }
        let d = self.drain;
        for (i, l) in self.links.iter_mut() {
            if !present.contains(i) {
                l.removed.get_or_insert(d);
            }
        }
        self.stats.refreshes += 1;
        self.stats.last_refresh = t0.elapsed();
        self.stats.named = self
            .links
            .values()
            .filter(|l| l.removed.is_none() && l.end.is_some())
            .count();
        tracing::debug!(
            took = ?self.stats.last_refresh,
            named = self.stats.named,
            "interface peer namespaces refreshed"
        );
    }
}

/// Whether this process has `CAP_SYS_PTRACE` (bit 19) in its effective set.
fn has_cap_sys_ptrace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

/// Inode of `/proc/<pid>/ns/net`.
fn netns_inode(pid: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(&l.to_string_lossy())
}

/// `net:[4026531840]` → 4026531840.
fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// (pid, network namespace inode) of every process visible here, and how many processes'
/// namespace links could not be read for lack of permission (`CAP_SYS_PTRACE`).
fn proc_netns() -> (Vec<(u32, u64)>, usize) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (Vec::new(), 0);
    };
    let mut denied = 0;
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            Ok(l) => {
                if let Some(ino) = parse_ns_link(&l.to_string_lossy()) {
                    out.push((pid, ino));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied += 1,
            Err(_) => {} // exited
        }
    }
    (out, denied)
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` text (the `0::` line).
pub fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Names a namespace after its processes (see the module doc); `true` when it should be looked
/// up again (no process, or only `pause`).
fn identity_of(netns: u64, pids: &[u32]) -> (Option<CgroupInfo>, bool) {
    let mut procs: Vec<Proc> = Vec::new();
    for pid in pids.iter().take(MAX_PROCS_PER_NETNS) {
        let (Ok(cg), Ok(stat)) = (
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue;
        };
        // Still in the namespace after its cgroup was read (it may have left since the scan).
        if netns_inode(&pid.to_string()) != Some(netns) {
            continue;
        }
        let (Some(path), Some((comm, start))) = (v2_path(&cg), parse_stat(&stat)) else {
            continue;
        };
        procs.push(Proc {
            start,
            pid: *pid,
            comm: comm.to_string(),
            cgroup: path.to_string(),
        });
    }
    name_netns(procs)
}

/// A process of a namespace: start time (clock ticks since boot), pid, `comm`, cgroup v2 path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub start: u64,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
}

/// (comm, start time) of a `/proc/<pid>/stat` text (`comm` is in parentheses and may hold
/// spaces and parentheses; the start time is field 22).
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // Fields after comm start at field 3 (state): the start time is the 20th of them.
    let start = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((comm, start))
}

/// [`identity_of`] on a namespace's processes (see the module doc).
pub fn name_netns(mut procs: Vec<Proc>) -> (Option<CgroupInfo>, bool) {
    procs.sort();
    if procs.is_empty() {
        return (None, true);
    }
    let only_pause = procs.iter().all(|p| p.comm == "pause");
    if !only_pause {
        procs.retain(|p| p.comm != "pause");
    }
    let first = &procs[0];
    let info = CgroupInfo::from_path(
        &first.cgroup,
        Some((Arc::from(first.comm.as_str()), first.pid)),
    );
    let Some(pod) = info.k8s_pod_uid.clone() else {
        return (Some(info), only_pause);
    };
    // Other containers of the same pod in this namespace: the pod's cgroup.
    let same_pod: Vec<&str> = procs
        .iter()
        .filter(|p| p.cgroup != first.cgroup)
        .filter(|p| {
            CgroupInfo::from_path(&p.cgroup, None)
                .k8s_pod_uid
                .as_deref()
                == Some(&*pod)
        })
        .map(|p| p.cgroup.as_str())
        .collect();
    if same_pod.is_empty() {
        return (Some(info), only_pause);
    }
    let mut common: Vec<&str> = first.cgroup.split('/').collect();
    for p in same_pod {
        let n = common
            .iter()
            .zip(p.split('/'))
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(n);
    }
    let path = common.join("/");
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    (Some(CgroupInfo::from_path(&path, None)), only_pause)
}

/// Netlink messages of one datagram: (type, payload after the header).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// Route attributes: (type without flags, value).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let v = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, v))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// (index, name, peer namespace id) of an `RTM_NEWLINK`/`RTM_DELLINK` payload.
fn parse_link(p: &[u8]) -> Option<(u32, String, Option<i32>)> {
    if p.len() < IFINFOMSG_LEN {
        return None;
    }
    let index = i32::from_ne_bytes(p[4..8].try_into().ok()?) as u32;
    let mut name = String::new();
    let mut nsid = None;
    for (ty, v) in attrs(&p[IFINFOMSG_LEN..]) {
        match ty {
            IFLA_IFNAME => {
                name = String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into()
            }
            IFLA_LINK_NETNSID if v.len() >= 4 => {
                nsid = Some(i32::from_ne_bytes(v[..4].try_into().ok()?)).filter(|n| *n >= 0)
            }
            _ => {}
        }
    }
    Some((index, name, nsid))
}

/// A NETLINK_ROUTE socket.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open(groups: u32) -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if groups != 0 {
            let size: libc::c_int = 1 << 20;
            // SAFETY: setsockopt with a c_int value.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
        }
        Ok(Netlink { fd, seq: 0 })
    }

    fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one request; calls `each` with every answer message of it (type, payload) until
    /// the end of a dump, or the single answer of a plain request.
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        payload: &[u8],
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: msg is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP != 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf, 0)?;
            let mut done = false;
            for (mty, p) in messages(&buf[..n]) {
                // Skip answers to an earlier request (sequence number in the header).
                let off = p.as_ptr() as usize - buf.as_ptr() as usize - NLMSG_HDRLEN;
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if seq != self.seq {
                    continue;
                }
                match mty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = p
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        done = true;
                    }
                    _ => {
                        each(mty, p);
                        if !dump {
                            done = true;
                        }
                    }
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// (index, name, peer namespace id) of every link of this namespace.
    fn dump_links(&mut self) -> io::Result<Vec<(u32, String, Option<i32>)>> {
        let mut out = Vec::new();
        self.request(RTM_GETLINK, NLM_F_DUMP, &[0u8; IFINFOMSG_LEN], |ty, p| {
            if ty == RTM_NEWLINK
                && let Some(l) = parse_link(p)
            {
                out.push(l);
            }
        })?;
        Ok(out)
    }

    /// The id this namespace gives the namespace of `fd` (an error when it has none).
    /// The id here of network namespace `ino`, found through an fd of one of its processes
    /// `pids` (found by an earlier scan). The fd must be that very namespace: a process can
    /// enter another one between the scan and the open (`nsenter`, a runtime starting a
    /// container), and its new namespace's id must not name this one. The first fd that is
    /// the namespace answers for all of its processes.
    fn nsid_of_netns(&mut self, ino: u64, pids: &[u32]) -> Option<i32> {
        pids.iter()
            .find_map(|pid| {
                let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
                (f.metadata().ok()?.ino() == ino).then(|| self.nsid_of(f.as_raw_fd()).ok())
            })
            .flatten()
    }

    fn nsid_of(&mut self, fd: i32) -> io::Result<i32> {
        let mut p = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&NETNSA_FD.to_ne_bytes());
        p.extend_from_slice(&(fd as u32).to_ne_bytes());
        let mut nsid = None;
        self.request(RTM_GETNSID, 0, &p, |ty, p| {
            if ty == RTM_NEWNSID && p.len() >= 4 {
                for (t, v) in attrs(&p[4..]) {
                    if t == NETNSA_NSID && v.len() >= 4 {
                        nsid = Some(i32::from_ne_bytes(v[..4].try_into().unwrap()));
                    }
                }
            }
        })?;
        nsid.filter(|n| *n >= 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(pid: u32, comm: &str, path: &str) -> Proc {
        // Start times in pid order, except where a test says otherwise.
        Proc {
            start: u64::from(pid),
            pid,
            comm: comm.into(),
            cgroup: path.into(),
        }
    }

    const POD: &str = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice";
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    #[test]
    fn a_netns_is_named_after_its_processes() {
        let c = format!("{POD}/cri-containerd-{ID}.scope");
        let pause = format!("{POD}/cri-containerd-ffff.scope");
        // One process: its cgroup and itself.
        let (i, t) = name_netns(vec![p(10, "python3", &c)]);
        let i = i.unwrap();
        assert_eq!(i.container_id.as_deref(), Some(ID));
        assert_eq!(i.k8s_pod_uid.as_deref(), Some(UID));
        assert_eq!(i.process, Some((Arc::from("python3"), 10)));
        assert!(!t);
        // The oldest process wins (pids wrap), transient ones of other cgroups are ignored.
        let mut old = p(900, "app", "/system.slice/docker-1.scope");
        old.start = 1;
        let (i, _) = name_netns(vec![p(5, "ip", "/user.slice/x.scope"), old]);
        assert_eq!(&*i.unwrap().path, "/system.slice/docker-1.scope");
        // pause is skipped when another process is there; alone it is tentative.
        let (i, t) = name_netns(vec![p(12, "nginx", &c), p(5, "pause", &pause)]);
        assert_eq!(i.unwrap().process, Some((Arc::from("nginx"), 12)));
        assert!(!t);
        let (i, t) = name_netns(vec![p(5, "pause", &pause)]);
        assert_eq!(*i.unwrap().path, pause);
        assert!(t);
        // Two containers of one pod: the pod's cgroup, no container, no process.
        let other = c.replace(ID, &"e".repeat(64));
        let (i, _) = name_netns(vec![p(12, "a", &c), p(13, "b", &other), p(14, "ip", "/")]);
        let i = i.unwrap();
        assert_eq!(&*i.path, POD);
        assert_eq!(i.k8s_pod_uid.as_deref(), Some(UID));
        assert_eq!((i.container_id, i.process), (None, None));
        // No process: nothing, tentative.
        assert!(matches!(name_netns(vec![]), (None, true)));
    }

    #[test]
    fn parses_proc_texts() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
        let hybrid = "12:cpu,cpuacct:/docker/x\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/a.service"));
        assert_eq!(v2_path("1:name=systemd:/\n"), None);
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 10 20";
        assert_eq!(parse_stat(stat), Some(("a (b) c", 987654)));
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn parses_link_messages() {
        let mut m = Vec::new();
        let mut link = vec![0u8; IFINFOMSG_LEN];
        link[4..8].copy_from_slice(&7i32.to_ne_bytes());
        link.extend_from_slice(&9u16.to_ne_bytes());
        link.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        link.extend_from_slice(b"veth\0\0\0\0"); // 5 bytes + padding
        link.extend_from_slice(&8u16.to_ne_bytes());
        link.extend_from_slice(&IFLA_LINK_NETNSID.to_ne_bytes());
        link.extend_from_slice(&3i32.to_ne_bytes());
        let len = (NLMSG_HDRLEN + link.len()) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&link);
        let all: Vec<_> = messages(&m).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, RTM_NEWLINK);
        assert_eq!(parse_link(all[0].1), Some((7, "veth".into(), Some(3))));
        // Truncated input: nothing, no panic.
        assert_eq!(messages(&m[..20]).count(), 0);
        assert_eq!(parse_link(&link[..10]), None);
    }

    /// A process that entered another namespace after the scan listed it under this one
    /// (`nsenter` in a container's start-up) must not give this namespace the other one's id:
    /// it named the host's own namespace after a container (and the container after the host's
    /// processes) before the fd's inode was checked.
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn a_process_that_moved_does_not_lend_its_namespace_id() {
        let ns = flowlens_testkit::Netns::new("nsid").unwrap();
        // An id for the namespace here, as a veth to it would get one.
        let st = std::process::Command::new("ip")
            .args(["netns", "set", ns.name(), "auto"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut child = ns.command("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let its = (0..100)
            .find_map(|_| {
                let i = netns_inode(&pid.to_string()).filter(|i| Some(*i) != netns_inode("self"));
                if i.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                i
            })
            .expect("the child entered the namespace");
        let mut nl = Netlink::open(0).unwrap();
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let id = nl
            .nsid_of(f.as_raw_fd())
            .expect("the namespace has an id here");
        assert_eq!(nl.nsid_of_netns(its, &[pid]), Some(id));
        // The scan saw `pid` in this namespace (which has no id here).
        let here = netns_inode("self").unwrap();
        assert_eq!(nl.nsid_of_netns(here, &[pid]), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// This namespace's links are dumped (loopback has no peer namespace); needs no privilege.
    #[test]
    fn dumps_this_namespace() {
        let mut m = PeerMap::from_system();
        assert!(m.is_enabled());
        assert_eq!(m.stats.refreshes, 1);
        assert!(m.others.contains(&1), "lo is index 1: {:?}", m.others);
        assert!(m.end(1).is_none());
    }
}
