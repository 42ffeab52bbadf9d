//! The watchers: `kube` client configuration, one `kube_runtime::watcher` per kind on the
//! `flowlens-k8s` thread, conversion of API objects to the store's `*Meta` structs.

use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        batch::v1::Job,
        core::v1::{Node, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, utils::Backoff, watcher},
};
use serde::de::DeserializeOwned;

use crate::{
    Names,
    store::{Kind, NodeMeta, OwnedMeta, PodMeta, ServiceMeta},
};

/// Watches end after this long and resume from their last version (the API server's own
/// limit is larger; a shorter one notices a silently dead connection sooner).
const WATCH_TIMEOUT_S: u32 = 120;

pub(crate) fn read_kubeconfig(path: &Path) -> Result<Kubeconfig> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {}", path.display(), one_line(&e)))?;
    if kc.clusters.is_empty() {
        anyhow::bail!("--kubeconfig {}: no cluster in the file", path.display());
    }
    Ok(kc)
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}

/// The client configuration: from `kubeconfig` if given, else inferred as `kube` does
/// (`KUBECONFIG` or `~/.kube/config`, else the in-cluster service account:
/// `KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount/`). Errors are one line.
pub fn client_config(kubeconfig: Option<&Path>) -> Result<kube::Config> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = read_kubeconfig(path)?;
            rt.block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {}", path.display(), one_line(&e)))?
        }
        None => rt.block_on(kube::Config::infer()).map_err(|e| {
            anyhow::anyhow!(
                "--kubernetes: no kubeconfig and not in a cluster (KUBERNETES_SERVICE_HOST unset or service account files missing): {}",
                one_line(&e)
            )
        })?,
    };
    Ok(cfg)
}

/// Starts the watcher thread. Fails only if the client cannot be built from `config` (bad
/// TLS material); an unreachable API server is retried in the background.
pub fn start(config: kube::Config, grace: Duration) -> Result<Names> {
    // The process-wide provider, named (aws-lc-rs, the only one built in): a crate that enables
    // another would otherwise make building the client panic. Already installed: fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let names = Names::new(grace);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = {
        let _in = rt.enter();
        Client::try_from(config).map_err(|e| anyhow::anyhow!("--kubernetes: {}", one_line(&e)))?
    };
    let n = names.clone();
    std::thread::Builder::new()
        .name("flowlens-k8s".into())
        .spawn(move || rt.block_on(run(client, n)))
        .context("spawning the Kubernetes watcher thread")?;
    Ok(names)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn time_us(t: &Option<Time>) -> i64 {
    t.as_ref().map_or(0, |t| t.0.as_microsecond())
}

async fn run(client: Client, names: Names) {
    let pods = watch_kind::<Pod>(
        Api::all(client.clone()),
        Kind::Pod,
        names.clone(),
        |s, ev, now| match ev {
            Ev::Apply(p) => {
                if let Some(m) = pod_meta(&p) {
                    s.lock().apply_pod(m, now)
                }
            }
            Ev::Delete(p) => {
                if let Some(uid) = &p.metadata.uid {
                    s.lock().delete_pod(uid, now)
                }
            }
        },
    );
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        Kind::Service,
        names.clone(),
        |s, ev, now| match ev {
            Ev::Apply(o) => {
                let m = service_meta(&o);
                s.lock().apply_service(m, now)
            }
            Ev::Delete(o) => {
                let (ns, n) = ns_name(&o.metadata);
                s.lock().delete_service(&ns, &n, now)
            }
        },
    );
    let nodes = watch_kind::<Node>(
        Api::all(client.clone()),
        Kind::Node,
        names.clone(),
        |s, ev, now| match ev {
            Ev::Apply(o) => {
                let m = node_meta(&o);
                s.lock().apply_node(m, now)
            }
            Ev::Delete(o) => {
                let n = o.metadata.name.clone().unwrap_or_default();
                s.lock().delete_node(&n, now)
            }
        },
    );
    let rs = watch_kind::<ReplicaSet>(
        Api::all(client.clone()),
        Kind::ReplicaSet,
        names.clone(),
        |s, ev, _| owned_event(s, Kind::ReplicaSet, ev.map(|o| o.metadata)),
    );
    let jobs = watch_kind::<Job>(Api::all(client), Kind::Job, names.clone(), |s, ev, _| {
        owned_event(s, Kind::Job, ev.map(|o| o.metadata))
    });
    let housekeeping = async {
        let mut last = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_log = Instant::now() - crate::LOG_EVERY;
        let mut was_synced = false;
        loop {
            tick.tick().await;
            let synced = names.synced();
            if last_log.elapsed() < crate::LOG_EVERY && !(synced && !was_synced) {
                continue;
            }
            was_synced = synced;
            last_log = Instant::now();
            let c = {
                let mut s = names.lock();
                s.gc(now_us());
                s.counts()
            };
            let k = &names.counters;
            let line = format!(
                "pods={} deleted_pods={} services={} nodes={} replicasets={} jobs={} synced={} lists={} errors={} named_ends={} unknown_pod_uids={}",
                c.pods,
                c.deleted_pods,
                c.services,
                c.nodes,
                c.replicasets,
                c.jobs,
                synced,
                k.lists.load(Relaxed),
                k.errors.load(Relaxed),
                k.named_ends.load(Relaxed),
                k.unknown_pod_uids.load(Relaxed),
            );
            if line != last {
                tracing::info!("kubernetes: {line}");
                last = line;
            }
        }
    };
    tokio::join!(pods, services, nodes, rs, jobs, housekeeping);
}

enum Ev<K> {
    Apply(K),
    Delete(K),
}

impl<K> Ev<K> {
    fn map<T>(self, f: impl FnOnce(K) -> T) -> Ev<T> {
        match self {
            Ev::Apply(k) => Ev::Apply(f(k)),
            Ev::Delete(k) => Ev::Delete(f(k)),
        }
    }
}

fn owned_event(s: &Names, kind: Kind, ev: Ev<ObjectMeta>) {
    match ev {
        Ev::Apply(m) => {
            let (namespace, name) = ns_name(&m);
            let owner = controller(&m);
            s.lock().apply_owned(
                kind,
                OwnedMeta {
                    namespace,
                    name,
                    owner,
                },
            )
        }
        Ev::Delete(m) => {
            let (ns, n) = ns_name(&m);
            s.lock().delete_owned(kind, &ns, &n)
        }
    }
}

/// Back-off between failed list/watch calls: 250 ms doubling to 10 s, reset by any success.
struct Retry(Duration);

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        Some(d)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.0 = Duration::from_millis(250);
    }
}

/// One kind's watcher: list (chunks of 500), watch with bookmarks, relist on 410, back off
/// while failing. Errors are counted and logged: the first at once, then at most one line per
/// [`crate::LOG_EVERY`] with the count since.
async fn watch_kind<K>(api: Api<K>, kind: Kind, names: Names, apply: impl Fn(&Names, Ev<K>, i64))
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cfg = watcher::Config::default().timeout(WATCH_TIMEOUT_S);
    let mut stream = watcher(api, cfg)
        .backoff(Retry(Duration::from_millis(250)))
        .boxed();
    let mut unlogged = 0u64;
    let mut last_log: Option<Instant> = None;
    while let Some(ev) = stream.next().await {
        let now = now_us();
        match ev {
            Ok(watcher::Event::Init) => {
                names.counters.lists.fetch_add(1, Relaxed);
                names.lock().begin_relist(kind);
            }
            Ok(watcher::Event::InitDone) => {
                names.lock().end_relist(kind, now);
                let was = names.counters.synced.fetch_or(1 << kind as u64, Relaxed);
                if was & (1 << kind as u64) == 0 {
                    tracing::debug!(kind = kind.name(), "kubernetes: first list complete");
                }
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                names.counters.events.fetch_add(1, Relaxed);
                apply(&names, Ev::Apply(o), now);
            }
            Ok(watcher::Event::Delete(o)) => {
                names.counters.events.fetch_add(1, Relaxed);
                apply(&names, Ev::Delete(o), now);
            }
            Err(e) => {
                names.counters.errors.fetch_add(1, Relaxed);
                unlogged += 1;
                if last_log.is_none_or(|t| t.elapsed() >= crate::LOG_EVERY) {
                    tracing::warn!(
                        kind = kind.name(),
                        errors = unlogged,
                        "kubernetes API: {} (retrying; names of unknown ends stay null meanwhile)",
                        one_line(&e)
                    );
                    unlogged = 0;
                    last_log = Some(Instant::now());
                }
            }
        }
    }
}

fn ns_name(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The controlling owner reference (kind, name), else the first one.
fn controller(m: &ObjectMeta) -> Option<(String, String)> {
    let refs = m.owner_references.as_ref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())
        .map(|r| (r.kind.clone(), r.name.clone()))
}

fn ips<'a>(it: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = it.filter_map(|s| s.parse().ok()).collect();
    v.dedup();
    v
}

pub(crate) fn pod_meta(p: &Pod) -> Option<PodMeta> {
    let uid = p.metadata.uid.clone()?;
    let (namespace, name) = ns_name(&p.metadata);
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut addrs: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|i| i.ip.as_str()).collect())
        .unwrap_or_default();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
        && !addrs.contains(&ip)
    {
        addrs.push(ip);
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    Some(PodMeta {
        uid,
        namespace,
        name,
        owner: controller(&p.metadata),
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips: ips(addrs.into_iter()),
        created_us: time_us(&p.metadata.creation_timestamp),
        finished: phase == "Succeeded" || phase == "Failed",
    })
}

pub(crate) fn service_meta(s: &Service) -> ServiceMeta {
    let (namespace, name) = ns_name(&s.metadata);
    let spec = s.spec.as_ref();
    let mut addrs: Vec<&str> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if let Some(ip) = spec.and_then(|s| s.cluster_ip.as_deref())
        && !addrs.contains(&ip)
    {
        addrs.push(ip);
    }
    ServiceMeta {
        namespace,
        name,
        ips: ips(addrs.into_iter()), // "None" (headless) does not parse
        created_us: time_us(&s.metadata.creation_timestamp),
    }
}

pub(crate) fn node_meta(n: &Node) -> NodeMeta {
    let labels = n.metadata.labels.as_ref();
    let zone = labels.and_then(|l| {
        l.get("topology.kubernetes.io/zone")
            .or_else(|| l.get("failure-domain.beta.kubernetes.io/zone"))
            .cloned()
    });
    let addrs = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.as_str())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    NodeMeta {
        name: n.metadata.name.clone().unwrap_or_default(),
        zone,
        ips: ips(addrs.into_iter()),
        created_us: time_us(&n.metadata.creation_timestamp),
    }
}
