//! The Kubernetes metadata store: what the watchers learned, in the shape the identity stage
//! asks for. No `kube` type crosses this module: the watchers convert objects to the `*Meta`
//! structs below first, outside the lock.
//!
//! * Pods by UID (local ends: the pod UID of their cgroup), kept for [`Store::grace_us`]
//!   after their deletion.
//! * Address → history of holders (pods, Service ClusterIPs, node InternalIPs), each with the
//!   interval it held the address: an end is named by the holder *at the record's time* (its
//!   last packet), never by a holder that started later; a holder that let the address go
//!   (deleted, or a pod that finished) still names it for [`Store::grace_us`] unless another
//!   took it since. So an address reused by a new pod names the old pod for the old pod's
//!   records and the new one for the new one's (no last-writer-wins).
//! * ReplicaSet and Job owners (namespace, name → controlling owner), read at lookup time, so a
//!   pod listed before its ReplicaSet still gets its Deployment once the ReplicaSet is known.
//! * Nodes: zone label, InternalIPs (host-network pods resolve to their node).

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use flowlens_schema::record::EndIdentity;

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
/// (namespace, name), or (kind, name) of an owner.
type NsName = (Arc<str>, Arc<str>);

/// Default for how long a deleted pod (or a released address) still names records: records are
/// exported up to the active timeout after their last packet, and spooled ones later.
pub const DEFAULT_GRACE_US: i64 = 5 * 60 * 1_000_000;

/// A pod as the store keeps it (converted from the API object by the watcher).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Controlling owner reference (kind, name).
    pub owner: Option<(String, String)>,
    pub node: Option<String>,
    pub host_network: bool,
    /// `status.podIPs` (or `podIP`).
    pub ips: Vec<IpAddr>,
    /// `metadata.creationTimestamp`, µs since the epoch (second resolution).
    pub created_us: i64,
    /// Phase `Succeeded` or `Failed`: its address is released.
    pub finished: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceMeta {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (headless `None` left out).
    pub ips: Vec<IpAddr>,
    pub created_us: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMeta {
    pub name: String,
    /// `topology.kubernetes.io/zone` (or the deprecated `failure-domain.beta.kubernetes.io/zone`).
    pub zone: Option<String>,
    /// `InternalIP` addresses.
    pub ips: Vec<IpAddr>,
    pub created_us: i64,
}

/// A ReplicaSet or Job: its controlling owner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedMeta {
    pub namespace: String,
    pub name: String,
    pub owner: Option<(String, String)>,
}

/// The kinds of object watched (for relists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Service,
    Node,
    ReplicaSet,
    Job,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Service,
        Kind::Node,
        Kind::ReplicaSet,
        Kind::Job,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Node => "nodes",
            Kind::ReplicaSet => "replicasets",
            Kind::Job => "jobs",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

struct Pod {
    namespace: Arc<str>,
    name: Arc<str>,
    owner: Option<(Arc<str>, Arc<str>)>,
    node: Option<Arc<str>>,
    host_network: bool,
    ips: Box<[IpAddr]>,
    /// Deleted at (µs, local clock).
    deleted_us: Option<i64>,
    finished: bool,
}

struct Service {
    namespace: Arc<str>,
    name: Arc<str>,
    ips: Box<[IpAddr]>,
}

struct Node {
    zone: Option<Arc<str>>,
    ips: Box<[IpAddr]>,
}

#[derive(Clone, Debug, PartialEq)]
enum Who {
    Pod(Arc<str>),
    /// (namespace, name)
    Service(Arc<str>, Arc<str>),
    Node(Arc<str>),
}

#[derive(Clone, Debug)]
struct Holder {
    who: Who,
    /// Held the address from (µs since the epoch).
    start_us: i64,
    /// Let it go at (µs; `None`: holds it still).
    end_us: Option<i64>,
}

/// Counts for logs and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub pods: usize,
    pub deleted_pods: usize,
    pub services: usize,
    pub nodes: usize,
    pub replicasets: usize,
    pub jobs: usize,
    pub addresses: usize,
}

pub struct Store {
    pods: Map<Arc<str>, Pod>,
    by_addr: Map<IpAddr, Vec<Holder>>,
    services: Map<(Arc<str>, Arc<str>), Service>,
    nodes: Map<Arc<str>, Node>,
    replicasets: Map<NsName, NsName>,
    jobs: Map<NsName, NsName>,
    /// Namespaces, node names, owner kinds and names: shared by many pods.
    strings: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// Keys seen since a relist began, per kind (`None`: no relist running).
    relist: [Option<Set<Arc<str>>>; 5],
    /// How long a deleted pod or a released address still names records (µs).
    pub grace_us: i64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_GRACE_US)
    }
}

/// A creation timestamp has second resolution: the object may have been created up to a
/// second after it. An address is taken as held only from the second after, so a record whose
/// last packet came before the pod existed never names it.
const CREATION_SLACK_US: i64 = 1_000_000;

fn relist_key(ns: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{ns}/{name}"))
}

impl Store {
    pub fn new(grace_us: i64) -> Store {
        Store {
            pods: Map::default(),
            by_addr: Map::default(),
            services: Map::default(),
            nodes: Map::default(),
            replicasets: Map::default(),
            jobs: Map::default(),
            strings: HashSet::default(),
            relist: Default::default(),
            grace_us,
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    fn seen(&mut self, kind: Kind, key: &str) {
        if let Some(s) = &mut self.relist[kind.index()] {
            s.insert(Arc::from(key));
        }
    }

    /// Opens `who`'s hold on each of `ips` from `start_us` (no-op where it holds it already).
    fn hold(&mut self, who: &Who, ips: &[IpAddr], start_us: i64) {
        for ip in ips {
            let h = self.by_addr.entry(*ip).or_default();
            if !h.iter().any(|x| x.who == *who && x.end_us.is_none()) {
                h.push(Holder {
                    who: who.clone(),
                    start_us,
                    end_us: None,
                });
            }
        }
    }

    /// Ends `who`'s hold on each of `ips` at `now_us`.
    fn release(&mut self, who: &Who, ips: &[IpAddr], now_us: i64) {
        for ip in ips {
            if let Some(h) = self.by_addr.get_mut(ip) {
                for x in h.iter_mut().filter(|x| x.who == *who && x.end_us.is_none()) {
                    x.end_us = Some(now_us.max(x.start_us));
                }
            }
        }
    }

    pub fn apply_pod(&mut self, p: PodMeta, now_us: i64) {
        let uid: Arc<str> = match self.pods.get_key_value(p.uid.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(p.uid.as_str()),
        };
        self.seen(Kind::Pod, &p.uid);
        let who = Who::Pod(uid.clone());
        let namespace = self.intern(&p.namespace);
        let owner = p
            .owner
            .as_ref()
            .map(|(k, n)| (self.intern(k), self.intern(n)));
        let node = p.node.as_deref().map(|n| self.intern(n));
        // The addresses it holds now: none if host-network (the node's address names the
        // node) or finished (released).
        let held: Vec<IpAddr> = if p.host_network || p.finished {
            Vec::new()
        } else {
            p.ips.clone()
        };
        let (old_held, had_any) = match self.pods.get(&uid) {
            Some(old) if old.deleted_us.is_none() => (
                if old.host_network || old.finished {
                    Vec::new()
                } else {
                    old.ips.to_vec()
                },
                !old.ips.is_empty(),
            ),
            _ => (Vec::new(), false),
        };
        let gone: Vec<IpAddr> = old_held
            .iter()
            .filter(|ip| !held.contains(ip))
            .copied()
            .collect();
        self.release(&who, &gone, now_us);
        // A first address: held since the pod's creation (the watcher may learn it late). A
        // changed address: since now.
        let start = if had_any {
            now_us
        } else {
            p.created_us + CREATION_SLACK_US
        };
        let new: Vec<IpAddr> = held
            .iter()
            .filter(|ip| !old_held.contains(ip))
            .copied()
            .collect();
        self.hold(&who, &new, start);
        self.pods.insert(
            uid,
            Pod {
                namespace,
                name: Arc::from(p.name.as_str()),
                owner,
                node,
                host_network: p.host_network,
                ips: p.ips.into_boxed_slice(),
                deleted_us: None,
                finished: p.finished,
            },
        );
    }

    pub fn delete_pod(&mut self, uid: &str, now_us: i64) {
        let Some((k, p)) = self.pods.get_key_value(uid) else {
            return;
        };
        if p.deleted_us.is_some() {
            return;
        }
        let (who, ips) = (Who::Pod(k.clone()), p.ips.to_vec());
        self.release(&who, &ips, now_us);
        if let Some(p) = self.pods.get_mut(uid) {
            p.deleted_us = Some(now_us);
        }
    }

    pub fn apply_service(&mut self, s: ServiceMeta, now_us: i64) {
        let key = (self.intern(&s.namespace), Arc::<str>::from(s.name.as_str()));
        self.seen(Kind::Service, &format!("{}/{}", s.namespace, s.name));
        let who = Who::Service(key.0.clone(), key.1.clone());
        let old: Vec<IpAddr> = self
            .services
            .get(&key)
            .map(|o| o.ips.to_vec())
            .unwrap_or_default();
        let gone: Vec<IpAddr> = old.iter().filter(|i| !s.ips.contains(i)).copied().collect();
        self.release(&who, &gone, now_us);
        let start = if old.is_empty() {
            s.created_us + CREATION_SLACK_US
        } else {
            now_us
        };
        self.hold(&who, &s.ips, start);
        self.services.insert(
            key.clone(),
            Service {
                namespace: key.0,
                name: key.1,
                ips: s.ips.into_boxed_slice(),
            },
        );
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str, now_us: i64) {
        let key: (Arc<str>, Arc<str>) = (Arc::from(namespace), Arc::from(name));
        if let Some(s) = self.services.remove(&key) {
            self.release(&Who::Service(s.namespace, s.name), &s.ips, now_us);
        }
    }

    pub fn apply_node(&mut self, n: NodeMeta, now_us: i64) {
        let name = self.intern(&n.name);
        self.seen(Kind::Node, &n.name);
        let zone = n.zone.as_deref().map(|z| self.intern(z));
        let who = Who::Node(name.clone());
        let old: Vec<IpAddr> = self
            .nodes
            .get(&name)
            .map(|o| o.ips.to_vec())
            .unwrap_or_default();
        let gone: Vec<IpAddr> = old.iter().filter(|i| !n.ips.contains(i)).copied().collect();
        self.release(&who, &gone, now_us);
        let start = if old.is_empty() {
            n.created_us + CREATION_SLACK_US
        } else {
            now_us
        };
        self.hold(&who, &n.ips, start);
        self.nodes.insert(
            name,
            Node {
                zone,
                ips: n.ips.into_boxed_slice(),
            },
        );
    }

    pub fn delete_node(&mut self, name: &str, now_us: i64) {
        if let Some((k, n)) = self.nodes.remove_entry(name) {
            self.release(&Who::Node(k), &n.ips, now_us);
        }
    }

    pub fn apply_owned(&mut self, kind: Kind, o: OwnedMeta) {
        self.seen(kind, &format!("{}/{}", o.namespace, o.name));
        let key = (self.intern(&o.namespace), self.intern(&o.name));
        let map = match kind {
            Kind::ReplicaSet => &mut self.replicasets,
            Kind::Job => &mut self.jobs,
            _ => return,
        };
        match o.owner {
            Some((k, n)) => {
                let v = (Arc::from(k.as_str()), Arc::from(n.as_str()));
                map.insert(key, v);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    pub fn delete_owned(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key: (Arc<str>, Arc<str>) = (Arc::from(namespace), Arc::from(name));
        match kind {
            Kind::ReplicaSet => self.replicasets.remove(&key),
            Kind::Job => self.jobs.remove(&key),
            _ => None,
        };
    }

    /// A (re)list of `kind` begins (the watcher's `Init`).
    pub fn begin_relist(&mut self, kind: Kind) {
        self.relist[kind.index()] = Some(Set::default());
    }

    /// A (re)list of `kind` ended (`InitDone`): what it did not contain was deleted while the
    /// watch was not looking.
    pub fn end_relist(&mut self, kind: Kind, now_us: i64) {
        let Some(seen) = self.relist[kind.index()].take() else {
            return;
        };
        match kind {
            Kind::Pod => {
                let gone: Vec<Arc<str>> = self
                    .pods
                    .iter()
                    .filter(|(u, p)| p.deleted_us.is_none() && !seen.contains(*u))
                    .map(|(u, _)| u.clone())
                    .collect();
                for u in gone {
                    self.delete_pod(&u, now_us);
                }
            }
            Kind::Service => {
                let gone: Vec<(Arc<str>, Arc<str>)> = self
                    .services
                    .keys()
                    .filter(|(ns, n)| !seen.contains(relist_key(ns, n).as_ref()))
                    .cloned()
                    .collect();
                for (ns, n) in gone {
                    self.delete_service(&ns, &n, now_us);
                }
            }
            Kind::Node => {
                let gone: Vec<Arc<str>> = self
                    .nodes
                    .keys()
                    .filter(|n| !seen.contains(*n))
                    .cloned()
                    .collect();
                for n in gone {
                    self.delete_node(&n, now_us);
                }
            }
            Kind::ReplicaSet | Kind::Job => {
                let map = if kind == Kind::Job {
                    &mut self.jobs
                } else {
                    &mut self.replicasets
                };
                map.retain(|(ns, n), _| seen.contains(relist_key(ns, n).as_ref()));
            }
        }
    }

    /// Forgets pods deleted, and address holds released, more than the grace period before
    /// `now_us`; and strings no object uses any more.
    pub fn gc(&mut self, now_us: i64) {
        let limit = now_us - self.grace_us;
        self.pods
            .retain(|_, p| p.deleted_us.is_none_or(|d| d >= limit));
        self.by_addr.retain(|_, h| {
            h.retain(|x| x.end_us.is_none_or(|e| e >= limit));
            !h.is_empty()
        });
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            pods: self
                .pods
                .values()
                .filter(|p| p.deleted_us.is_none())
                .count(),
            deleted_pods: self
                .pods
                .values()
                .filter(|p| p.deleted_us.is_some())
                .count(),
            services: self.services.len(),
            nodes: self.nodes.len(),
            replicasets: self.replicasets.len(),
            jobs: self.jobs.len(),
            addresses: self.by_addr.len(),
        }
    }

    /// The holder of `ip` at `t_us`: among those that held it then, the one that took it last;
    /// else, among those that let it go at most the grace period before, the last to let go.
    /// A holder that took it after `t_us` is never chosen.
    fn holder(&self, ip: &IpAddr, t_us: i64) -> Option<&Who> {
        let h = self.by_addr.get(ip)?;
        let live = h
            .iter()
            .filter(|x| x.start_us <= t_us && x.end_us.is_none_or(|e| t_us <= e))
            .max_by_key(|x| x.start_us);
        if let Some(x) = live {
            return Some(&x.who);
        }
        h.iter()
            .filter(|x| x.start_us <= t_us && x.end_us.is_some_and(|e| t_us <= e + self.grace_us))
            .max_by_key(|x| x.end_us)
            .map(|x| &x.who)
    }

    /// The top owner of a pod: ReplicaSet → its Deployment, Job → its CronJob, else the direct
    /// controller, else the pod itself.
    fn top_owner(&self, p: &Pod) -> (Arc<str>, Arc<str>) {
        let Some((kind, name)) = &p.owner else {
            return (Arc::from("Pod"), p.name.clone());
        };
        let up = match kind.as_ref() {
            "ReplicaSet" => self
                .replicasets
                .get(&(p.namespace.clone(), name.clone()))
                .filter(|(k, _)| k.as_ref() == "Deployment"),
            "Job" => self
                .jobs
                .get(&(p.namespace.clone(), name.clone()))
                .filter(|(k, _)| k.as_ref() == "CronJob"),
            _ => None,
        };
        up.cloned().unwrap_or_else(|| (kind.clone(), name.clone()))
    }

    fn fill_pod(&self, e: &mut EndIdentity, p: &Pod) {
        e.k8s_namespace = Some(p.namespace.clone());
        e.k8s_pod_name = Some(p.name.clone());
        let (k, n) = self.top_owner(p);
        e.k8s_owner_kind = Some(k);
        e.k8s_owner_name = Some(n);
        self.fill_node(e, p.node.as_ref());
    }

    fn fill_node(&self, e: &mut EndIdentity, node: Option<&Arc<str>>) {
        if let Some(n) = node {
            e.k8s_node_name = Some(n.clone());
            e.zone = self.nodes.get(n).and_then(|n| n.zone.clone());
        }
    }

    /// Fills the Kubernetes fields of an end: by its pod UID if it has one the store knows,
    /// else by the holder of `ip` at `t_us` (µs since the epoch: the record's last packet).
    /// Returns whether anything was named.
    pub fn fill(&self, e: &mut EndIdentity, ip: IpAddr, t_us: i64) -> bool {
        if let Some(uid) = &e.k8s_pod_uid
            && let Some(p) = self.pods.get(uid.as_ref())
        {
            self.fill_pod(e, p);
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match self.holder(&ip, t_us) {
            Some(Who::Pod(uid)) => match self.pods.get(uid) {
                Some(p) => {
                    self.fill_pod(e, p);
                    true
                }
                None => false,
            },
            Some(Who::Service(ns, name)) => {
                e.k8s_namespace = Some(ns.clone());
                e.k8s_service_name = Some(name.clone());
                true
            }
            Some(Who::Node(n)) => {
                let n = n.clone();
                self.fill_node(e, Some(&n));
                true
            }
            None => false,
        }
    }

    /// Whether the store knows the pod (for the count of ends whose pod UID is not known yet).
    pub fn knows_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(uid: &str, name: &str, addr: &str, created_s: i64) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            owner: None,
            node: Some("n1".into()),
            host_network: false,
            ips: vec![ip(addr)],
            created_us: created_s * S,
            finished: false,
        }
    }

    fn named(s: &Store, addr: &str, t_s: i64) -> Option<String> {
        let mut e = EndIdentity::default();
        s.fill(&mut e, ip(addr), t_s * S);
        e.k8s_pod_name.map(|n| n.to_string())
    }

    /// Pod A deleted, pod B takes its address: each record by its time names the right pod;
    /// a flow whose last packet predates B's creation never names B; after A's grace nothing
    /// names A.
    #[test]
    fn a_reused_address_names_the_pod_that_held_it_then() {
        let mut s = Store::new(60 * S);
        s.apply_pod(pod("a", "pod-a", "10.1.0.5", 100), 101 * S);
        assert_eq!(named(&s, "10.1.0.5", 150).as_deref(), Some("pod-a"));
        assert_eq!(named(&s, "10.1.0.5", 100), None, "before A existed");
        s.delete_pod("a", 200 * S);
        // B created at 210, seen (its address) at 215.
        s.apply_pod(pod("b", "pod-b", "10.1.0.5", 210), 215 * S);
        assert_eq!(named(&s, "10.1.0.5", 150).as_deref(), Some("pod-a"));
        assert_eq!(named(&s, "10.1.0.5", 199).as_deref(), Some("pod-a"));
        // After A's deletion, before B existed: A still (grace), never B.
        assert_eq!(named(&s, "10.1.0.5", 205).as_deref(), Some("pod-a"));
        assert_eq!(named(&s, "10.1.0.5", 210).as_deref(), Some("pod-a"));
        // B from the second after its creation, even before the watcher saw it.
        assert_eq!(named(&s, "10.1.0.5", 212).as_deref(), Some("pod-b"));
        assert_eq!(named(&s, "10.1.0.5", 400).as_deref(), Some("pod-b"));
        // The order the events arrive in does not matter: B seen before A's delete.
        let mut s2 = Store::new(60 * S);
        s2.apply_pod(pod("a", "pod-a", "10.1.0.5", 100), 101 * S);
        s2.apply_pod(pod("b", "pod-b", "10.1.0.5", 210), 215 * S);
        s2.delete_pod("a", 220 * S);
        assert_eq!(named(&s2, "10.1.0.5", 150).as_deref(), Some("pod-a"));
        assert_eq!(named(&s2, "10.1.0.5", 205).as_deref(), Some("pod-a"));
        assert_eq!(named(&s2, "10.1.0.5", 212).as_deref(), Some("pod-b"));
        assert_eq!(named(&s2, "10.1.0.5", 218).as_deref(), Some("pod-b"));
    }

    #[test]
    fn a_deleted_pod_names_its_address_for_the_grace_period_only() {
        let mut s = Store::new(60 * S);
        s.apply_pod(pod("a", "pod-a", "10.1.0.5", 100), 101 * S);
        s.delete_pod("a", 200 * S);
        assert_eq!(named(&s, "10.1.0.5", 259).as_deref(), Some("pod-a"));
        assert_eq!(named(&s, "10.1.0.5", 261), None);
        // By UID (a local end) while it is kept; gc forgets it after the grace period.
        let mut e = EndIdentity {
            k8s_pod_uid: Some("a".into()),
            ..Default::default()
        };
        assert!(s.fill(&mut e, ip("192.0.2.1"), 0));
        assert_eq!(e.k8s_pod_name.as_deref(), Some("pod-a"));
        s.gc(259 * S);
        assert_eq!(s.counts().deleted_pods, 1);
        s.gc(261 * S);
        assert_eq!(s.counts().deleted_pods, 0);
        assert_eq!(s.counts().addresses, 0);
        let mut e = EndIdentity {
            k8s_pod_uid: Some("a".into()),
            ..Default::default()
        };
        assert!(!s.fill(&mut e, ip("192.0.2.1"), 0));
    }

    /// A finished Job pod releases its address while its object still exists.
    #[test]
    fn a_finished_pod_releases_its_address() {
        let mut s = Store::new(60 * S);
        s.apply_pod(pod("j", "job-pod", "10.1.0.7", 100), 101 * S);
        let mut done = pod("j", "job-pod", "10.1.0.7", 100);
        done.finished = true;
        s.apply_pod(done, 150 * S);
        s.apply_pod(pod("b", "pod-b", "10.1.0.7", 160), 170 * S);
        assert_eq!(named(&s, "10.1.0.7", 140).as_deref(), Some("job-pod"));
        assert_eq!(named(&s, "10.1.0.7", 165).as_deref(), Some("pod-b"));
    }

    #[test]
    fn owners_are_the_top_controller() {
        let mut s = Store::default();
        let mut web = pod("w", "web-7d4-x", "10.1.0.1", 1);
        web.owner = Some(("ReplicaSet".into(), "web-7d4".into()));
        let mut cron = pod("c", "backup-28-y", "10.1.0.2", 1);
        cron.owner = Some(("Job".into(), "backup-28".into()));
        let mut ds = pod("d", "agent-z", "10.1.0.3", 1);
        ds.owner = Some(("DaemonSet".into(), "agent".into()));
        let bare = pod("p", "debug", "10.1.0.4", 1);
        let mut lone_rs = pod("r", "rs-only-q", "10.1.0.6", 1);
        lone_rs.owner = Some(("ReplicaSet".into(), "rs-only".into()));
        for p in [web, cron, ds, bare, lone_rs] {
            s.apply_pod(p, 2 * S);
        }
        let owner = |s: &Store, a: &str| {
            let mut e = EndIdentity::default();
            s.fill(&mut e, ip(a), 10 * S);
            (
                e.k8s_owner_kind.unwrap().to_string(),
                e.k8s_owner_name.unwrap().to_string(),
            )
        };
        // The ReplicaSet is not known yet: the direct owner.
        assert_eq!(
            owner(&s, "10.1.0.1"),
            ("ReplicaSet".into(), "web-7d4".into())
        );
        s.apply_owned(
            Kind::ReplicaSet,
            OwnedMeta {
                namespace: "shop".into(),
                name: "web-7d4".into(),
                owner: Some(("Deployment".into(), "web".into())),
            },
        );
        s.apply_owned(
            Kind::ReplicaSet,
            OwnedMeta {
                namespace: "shop".into(),
                name: "rs-only".into(),
                owner: None,
            },
        );
        s.apply_owned(
            Kind::Job,
            OwnedMeta {
                namespace: "shop".into(),
                name: "backup-28".into(),
                owner: Some(("CronJob".into(), "backup".into())),
            },
        );
        assert_eq!(owner(&s, "10.1.0.1"), ("Deployment".into(), "web".into()));
        assert_eq!(owner(&s, "10.1.0.2"), ("CronJob".into(), "backup".into()));
        assert_eq!(owner(&s, "10.1.0.3"), ("DaemonSet".into(), "agent".into()));
        assert_eq!(owner(&s, "10.1.0.4"), ("Pod".into(), "debug".into()));
        assert_eq!(
            owner(&s, "10.1.0.6"),
            ("ReplicaSet".into(), "rs-only".into())
        );
        // A ReplicaSet in another namespace with the same name is another ReplicaSet.
        let mut other = pod("o", "web-7d4-o", "10.1.0.8", 1);
        other.namespace = "dev".into();
        other.owner = Some(("ReplicaSet".into(), "web-7d4".into()));
        s.apply_pod(other, 2 * S);
        assert_eq!(
            owner(&s, "10.1.0.8"),
            ("ReplicaSet".into(), "web-7d4".into())
        );
    }

    #[test]
    fn services_nodes_zones_and_host_network() {
        let mut s = Store::default();
        s.apply_node(
            NodeMeta {
                name: "n1".into(),
                zone: Some("eu-west-1b".into()),
                ips: vec![ip("192.168.1.10")],
                created_us: 0,
            },
            S,
        );
        s.apply_service(
            ServiceMeta {
                namespace: "db".into(),
                name: "postgres".into(),
                ips: vec![ip("10.96.0.20"), ip("fd00::20")],
                created_us: 0,
            },
            S,
        );
        let mut hn = pod("h", "kube-proxy-a", "192.168.1.10", 1);
        hn.host_network = true;
        s.apply_pod(hn, 2 * S);
        s.apply_pod(pod("p", "web", "10.1.0.1", 1), 2 * S);
        let mut e = EndIdentity::default();
        assert!(s.fill(&mut e, ip("10.96.0.20"), 10 * S));
        assert_eq!(e.k8s_service_name.as_deref(), Some("postgres"));
        assert_eq!(e.k8s_namespace.as_deref(), Some("db"));
        assert_eq!(e.k8s_pod_name, None);
        let mut e = EndIdentity::default();
        assert!(s.fill(&mut e, ip("fd00::20"), 10 * S));
        assert_eq!(e.k8s_service_name.as_deref(), Some("postgres"));
        // The node's address names the node (a host-network pod's address is its node's).
        let mut e = EndIdentity::default();
        assert!(s.fill(&mut e, ip("192.168.1.10"), 10 * S));
        assert_eq!(e.k8s_node_name.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(e.k8s_pod_name, None);
        // A pod names its node and zone; a v4-mapped v6 address is the v4 one.
        let mut e = EndIdentity::default();
        assert!(s.fill(&mut e, ip("::ffff:10.1.0.1"), 10 * S));
        assert_eq!(e.k8s_pod_name.as_deref(), Some("web"));
        assert_eq!(e.k8s_node_name.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("eu-west-1b"));
        // The host-network pod by its UID (a local end) is itself.
        let mut e = EndIdentity {
            k8s_pod_uid: Some("h".into()),
            ..Default::default()
        };
        assert!(s.fill(&mut e, ip("192.168.1.10"), 10 * S));
        assert_eq!(e.k8s_pod_name.as_deref(), Some("kube-proxy-a"));
        // Unknown address: nothing.
        let mut e = EndIdentity::default();
        assert!(!s.fill(&mut e, ip("10.9.9.9"), 10 * S));
        assert!(e.is_empty());
    }

    /// A relist that misses objects deleted while the watch was down deletes them.
    #[test]
    fn a_relist_deletes_what_it_no_longer_contains() {
        let mut s = Store::new(60 * S);
        s.apply_pod(pod("a", "pod-a", "10.1.0.5", 100), 101 * S);
        s.apply_pod(pod("b", "pod-b", "10.1.0.6", 100), 101 * S);
        s.begin_relist(Kind::Pod);
        s.apply_pod(pod("b", "pod-b", "10.1.0.6", 100), 300 * S);
        s.end_relist(Kind::Pod, 300 * S);
        assert_eq!(s.counts().pods, 1);
        assert_eq!(s.counts().deleted_pods, 1);
        assert_eq!(named(&s, "10.1.0.5", 200).as_deref(), Some("pod-a"));
        assert_eq!(named(&s, "10.1.0.6", 200).as_deref(), Some("pod-b"));
    }
}
