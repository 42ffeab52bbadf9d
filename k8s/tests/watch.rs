//! The watchers against the in-test API server (`flowlens_testkit::kube_api`), through the
//! real `kube` client: chunked initial list, events, bookmarks, 410 Gone → relist, an
//! expired continue token, dropped connections, a slow server, a server down at start.

use std::{
    net::IpAddr,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlens_k8s::Names;
use flowlens_schema::record::{EndIdentity, Ends};
use flowlens_testkit::kube_api::{KubeApi, Res, objects};

fn start(api: &KubeApi) -> Names {
    let dir = flowlens_testkit::temp_dir("k8s-watch").unwrap();
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path);
    let cfg = flowlens_k8s::client_config(Some(&path)).expect("kubeconfig");
    flowlens_k8s::start(cfg, Duration::from_secs(300)).expect("start")
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The pod name of the end at `ip` now (+2 s: past the creation second).
fn pod_at(n: &Names, ip: &str) -> Option<String> {
    end_at(n, ip).k8s_pod_name.map(|s| s.to_string())
}

fn end_at(n: &Names, ip: &str) -> EndIdentity {
    let mut ends = Ends::default();
    let ip: IpAddr = ip.parse().unwrap();
    n.fill(
        &mut ends,
        ip,
        "192.0.2.99".parse().unwrap(),
        now_us() + 2_000_000,
    );
    ends.source
}

fn ip_of(i: usize) -> String {
    format!("10.42.{}.{}", i / 250, i % 250 + 1)
}

fn add_pods(api: &KubeApi, count: usize) {
    for i in 0..count {
        api.apply(
            Res::Pods,
            objects::pod(
                "shop",
                &format!("web-{i}"),
                &format!("uid-{i}"),
                Some(&ip_of(i)),
                "node-a",
                Some(("ReplicaSet", "web-7d4")),
            ),
        );
    }
}

fn pod_lists(api: &KubeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
        .collect()
}

fn pod_watches(api: &KubeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .collect()
}

/// The `resourceVersion` query value of a request line.
fn rv_of(line: &str) -> u64 {
    line.split(['?', '&', ' '])
        .find_map(|kv| kv.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn chunked_list_then_watch_events_name_pods_owners_services_nodes() {
    let api = KubeApi::start();
    add_pods(&api, 1_203);
    api.apply(
        Res::ReplicaSets,
        objects::owned("shop", "web-7d4", Some(("Deployment", "web"))),
    );
    api.apply(
        Res::Nodes,
        objects::node("node-a", "172.31.0.10", Some("zone-1")),
    );
    api.apply(Res::Services, objects::service("shop", "web", "10.96.0.10"));
    let n = start(&api);
    wait("the first lists", 30, || n.synced());
    assert_eq!(n.counts().pods, 1_203);
    // Three chunks of at most 500: one list without a continue token, two with.
    let lists = pod_lists(&api);
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(lists.iter().all(|l| l.contains("limit=500")), "{lists:?}");
    assert_eq!(lists.iter().filter(|l| l.contains("continue=")).count(), 2);
    // The watch resumes from the list's version, with bookmarks.
    let w = pod_watches(&api);
    assert!(!w.is_empty());
    assert!(w[0].contains("allowWatchBookmarks=true"), "{w:?}");
    let e = end_at(&n, &ip_of(1_000));
    assert_eq!(e.k8s_pod_name.as_deref(), Some("web-1000"));
    assert_eq!(e.k8s_namespace.as_deref(), Some("shop"));
    assert_eq!(e.k8s_owner_kind.as_deref(), Some("Deployment"));
    assert_eq!(e.k8s_owner_name.as_deref(), Some("web"));
    assert_eq!(e.k8s_node_name.as_deref(), Some("node-a"));
    assert_eq!(e.zone.as_deref(), Some("zone-1"));
    assert_eq!(
        end_at(&n, "10.96.0.10").k8s_service_name.as_deref(),
        Some("web")
    );
    assert_eq!(
        end_at(&n, "172.31.0.10").k8s_node_name.as_deref(),
        Some("node-a")
    );
    // Watch events: a new pod (ADDED, then MODIFIED with its address), a deletion.
    api.apply(
        Res::Pods,
        objects::pod("shop", "late", "uid-late", None, "node-a", None),
    );
    api.apply(
        Res::Pods,
        objects::pod(
            "shop",
            "late",
            "uid-late",
            Some("10.42.99.1"),
            "node-a",
            None,
        ),
    );
    wait("the new pod", 10, || pod_at(&n, "10.42.99.1").is_some());
    assert_eq!(
        end_at(&n, "10.42.99.1").k8s_owner_kind.as_deref(),
        Some("Pod")
    );
    api.delete(Res::Pods, "shop", "web-0");
    wait("the deletion", 10, || n.counts().deleted_pods == 1);
    // Deleted: still named within the grace period.
    assert_eq!(pod_at(&n, &ip_of(0)).as_deref(), Some("web-0"));
    assert_eq!(pod_lists(&api).len(), 3, "no relist without a reason");
}

/// A dropped connection resumes the watch from the last bookmark (no relist), and changes made
/// meanwhile arrive.
#[test]
fn a_dropped_watch_resumes_from_its_bookmark() {
    let api = KubeApi::start_with(Duration::from_millis(200));
    add_pods(&api, 3);
    let n = start(&api);
    wait("the first lists", 30, || n.synced());
    let list_rv = rv_of(pod_lists(&api).last().unwrap());
    // Changes of other kinds move the cluster's version; the pods watch hears of it only
    // through bookmarks.
    for i in 0..5 {
        api.apply(
            Res::Services,
            objects::service("shop", &format!("s{i}"), &format!("10.96.1.{i}")),
        );
    }
    let moved = api.resource_version();
    std::thread::sleep(Duration::from_millis(800)); // a few bookmarks
    let watches_before = pod_watches(&api).len();
    api.drop_connections();
    api.apply(
        Res::Pods,
        objects::pod(
            "shop",
            "after-drop",
            "uid-ad",
            Some("10.42.50.1"),
            "node-a",
            None,
        ),
    );
    wait("the pod added while the watch was dropped", 15, || {
        pod_at(&n, "10.42.50.1").is_some()
    });
    let w = pod_watches(&api);
    assert!(w.len() > watches_before, "{w:?}");
    let resumed = rv_of(&w[watches_before]);
    assert!(
        resumed >= moved && resumed > list_rv,
        "resumed at {resumed}: the bookmark's version ({moved}) was not used: {w:?}"
    );
    assert_eq!(
        pod_lists(&api).len(),
        1,
        "a resumable watch must not relist"
    );
    assert!(n.counts().pods == 4);
}

/// The history is compacted while flowlens is disconnected: the watch gets 410 Gone, the
/// watcher relists, and a pod deleted meanwhile (its DELETED event lost) is deleted.
#[test]
fn gone_410_relists_and_finds_what_was_missed() {
    let api = KubeApi::start();
    add_pods(&api, 3);
    let n = start(&api);
    wait("the first lists", 30, || n.synced());
    let lists = n.counters.lists.load(Relaxed);
    api.set_down(true);
    api.delete(Res::Pods, "shop", "web-1");
    api.apply(
        Res::Pods,
        objects::pod("shop", "new", "uid-new", Some("10.42.60.1"), "node-a", None),
    );
    api.expire_watches();
    api.set_down(false);
    wait("the relist", 30, || {
        n.counts().deleted_pods == 1 && pod_at(&n, "10.42.60.1").is_some()
    });
    assert!(n.counters.lists.load(Relaxed) > lists);
    assert!(pod_lists(&api).len() >= 2);
    assert!(n.counters.errors.load(Relaxed) >= 1);
    assert_eq!(n.counts().pods, 3);
    // The deleted pod keeps its address for the grace period.
    assert_eq!(pod_at(&n, &ip_of(1)).as_deref(), Some("web-1"));
}

/// An open watch that receives an ERROR 410 event relists.
#[test]
fn an_error_event_410_on_an_open_watch_relists() {
    let api = KubeApi::start();
    add_pods(&api, 2);
    let n = start(&api);
    wait("the first lists", 30, || n.synced());
    wait("the pods watch", 10, || !pod_watches(&api).is_empty());
    api.expire_watches();
    wait("a second list of pods", 30, || pod_lists(&api).len() >= 2);
    api.apply(
        Res::Pods,
        objects::pod("shop", "x", "uid-x", Some("10.42.70.1"), "node-a", None),
    );
    wait("the pod after the relist", 15, || {
        pod_at(&n, "10.42.70.1").is_some()
    });
}

/// A continue token that expires between two pages: the list starts over.
#[test]
fn an_expired_continue_token_restarts_the_list() {
    let api = KubeApi::start();
    add_pods(&api, 1_100);
    api.set_delay(Duration::from_millis(300));
    let n = start(&api);
    wait("the first page request", 30, || !pod_lists(&api).is_empty());
    std::thread::sleep(Duration::from_millis(450)); // its answer (with the token) is out
    api.expire_continue_tokens();
    api.set_delay(Duration::ZERO);
    wait("the lists", 60, || n.synced());
    let lists = pod_lists(&api);
    let fresh = lists.iter().filter(|l| !l.contains("continue=")).count();
    assert!(fresh >= 2, "the list did not start over: {lists:?}");
    assert_eq!(n.counts().pods, 1_100);
    assert!(n.counters.errors.load(Relaxed) >= 1);
}

/// Down at start: nothing is named, lookups do not wait; up: names appear.
#[test]
fn down_at_start_then_up() {
    let api = KubeApi::start();
    add_pods(&api, 2);
    api.set_down(true);
    let n = start(&api);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    assert_eq!(pod_at(&n, &ip_of(0)), None);
    assert!(t.elapsed() < Duration::from_millis(500), "a lookup waited");
    assert!(!n.synced());
    assert!(n.counters.errors.load(Relaxed) >= 1);
    api.set_down(false);
    wait("names after the server came up", 30, || {
        pod_at(&n, &ip_of(0)).is_some()
    });
}

/// A slow server (every answer 1.5 s late): lookups answer at once meanwhile.
#[test]
fn a_slow_server_never_blocks_lookups() {
    let api = KubeApi::start();
    add_pods(&api, 2);
    api.set_delay(Duration::from_millis(1_500));
    let n = start(&api);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    for _ in 0..1000 {
        let _ = end_at(&n, &ip_of(0));
    }
    assert!(t.elapsed() < Duration::from_millis(500), "lookups waited");
    wait("the slow lists", 60, || n.synced());
    assert_eq!(pod_at(&n, &ip_of(1)).as_deref(), Some("web-1"));
}
