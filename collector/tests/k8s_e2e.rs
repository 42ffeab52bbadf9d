//! Kubernetes names (issue 13) end to end: real traffic, real netfilter hooks, the real `kube`
//! client against the in-test API server (`flowlens_testkit::kube_api`), Parquet read back with
//! pyarrow (`tests/k8s/read_records.py`).
//!
//! A test "node" namespace H (where flowlens runs, `--netfilter local_in,local_out`) and a peer
//! namespace P joined by a veth. The client is a process in H in a containerd-style kubepods
//! cgroup carrying pod UID `U` (so its end is named by UID); P holds the server pod's address,
//! a Service ClusterIP and a node's InternalIP. Rounds of UDP traffic, each from its own client
//! port:
//! 1. API server down at start: records flow, Kubernetes names null (pod UID still there);
//! 2. API server up: client pod (Deployment via ReplicaSet, node-a, zone-a), server pod A (CronJob
//!    via Job, node-b, zone-b), the Service and the node are named; right after this round pod
//!    A is deleted and pod B (StatefulSet) takes its address, *before* round 2's records are
//!    exported: they still name A (the address's holder at their time), never B;
//! 3. round 3 names B;
//! 4. API server down during the run: what is known still names (B).
//!
//! Needs root and the real probe (`kernel-tests`) and the sinks' Kubernetes columns.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use flowlens::identity::cgroup::cgroup2_mount;
use flowlens_testkit::{
    Netns,
    kube_api::{KubeApi, Res, objects, rfc3339},
    temp_dir, veth_pair,
};
use serde_json::Value;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s/read_records.py");

/// A kubepods pod cgroup (containerd, systemd driver) under a unique test parent; removed on
/// drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
    scope: PathBuf,
}

impl PodCgroup {
    fn new(uid: &str) -> PodCgroup {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = cgroup2_mount(&mi).expect("a cgroup2 mount");
        let base = root.join(format!("flowlens-test-{}-k8s", std::process::id()));
        let id = format!("{:064x}", 0xc0ffee_u64 + std::process::id() as u64);
        let rel = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        );
        let scope = base.join(&rel);
        std::fs::create_dir_all(&scope).unwrap();
        let mut dirs = Vec::new();
        let mut p = scope.clone();
        while p != root {
            dirs.push(p.clone());
            p.pop();
        }
        PodCgroup { dirs, scope }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// UDP echo on port argv[1] of each address argv[2:] (one socket each, so a reply leaves
/// from the address the request went to).
const ECHO: &str = r#"
import select, socket, sys, time
socks = []
for a in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, int(sys.argv[1])))
    socks.append(s)
end = time.time() + 120
print("ready", flush=True)
while time.time() < end:
    r, _, _ = select.select(socks, [], [], 1.0)
    for s in r:
        d, a = s.recvfrom(2048)
        s.sendto(d, a)
"#;

const CLIENT: &str = r#"
import socket, sys
src, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for dst in sys.argv[4:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, sport))
    s.settimeout(2.0)
    host, port = dst.rsplit(":", 1)
    for i in range(n):
        s.sendto(b"k" * 100, (host, int(port)))
        s.recvfrom(2048)
    s.close()
    sport += 1
print("done", flush=True)
"#;

/// One round from the client pod's cgroup in H: `n` datagrams echoed by each destination, the
/// first destination from `sport`, the next from `sport + 1`, ...
fn round(cg: &Path, h: &Netns, src: &str, sport: u16, dsts: &[String]) {
    let script = r#"echo $$ > "$0" || exit 1; n="$1"; shift; exec nsenter --net="$n" "$@""#;
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(cg.join("cgroup.procs"))
        .arg(h.path())
        .args(["python3", "-c", CLIENT, src, &sport.to_string(), "5"])
        .args(dsts)
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("done"),
        "client: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r[k].as_str()
}

/// The Kubernetes fields of one end: (namespace, pod, owner kind, owner name, node, zone,
/// service).
type Names<'a> = [Option<&'a str>; 7];

fn names<'a>(r: &'a Value, end: &str) -> Names<'a> {
    [
        "k8s_namespace",
        "k8s_pod_name",
        "k8s_owner_kind",
        "k8s_owner_name",
        "k8s_node_name",
        "zone",
        "k8s_service_name",
    ]
    .map(|f| s(r, &format!("{end}_{f}")))
}

const NONE: Names<'static> = [None; 7];

#[test]
fn pods_owners_nodes_zones_services_through_reuse_and_outages() {
    let h = Netns::new("k8sh").unwrap();
    // On H's loopback, where flowlens runs.
    let api = KubeApi::start_in(&h);
    api.set_down(true);
    let p = Netns::new("k8sp").unwrap();
    let link = veth_pair(&h, &p).unwrap();
    let (a, b) = (link.a_v4, link.b_v4);
    let o = a.octets();
    // In P: a Service ClusterIP and node-b's InternalIP (a host-network address).
    let svc_ip = format!("{}.{}.{}.10", o[0], o[1], o[2]);
    let node_b_ip = format!("{}.{}.{}.21", o[0], o[1], o[2]);
    let node_a_ip = format!("{}.{}.{}.20", o[0], o[1], o[2]);
    let b_mac = link
        .b_mac
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for extra in [&svc_ip, &node_b_ip] {
        p.ip(&["addr", "add", &format!("{extra}/32"), "dev", &link.b_if])
            .unwrap();
        h.ip(&[
            "neigh",
            "replace",
            extra,
            "lladdr",
            &b_mac,
            "dev",
            &link.a_if,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let uid_client = format!("{:08x}-6b38-4c1e-9d2a-0000000000c1", std::process::id());
    let cg = PodCgroup::new(&uid_client);
    let out = temp_dir("k8s-e2e").unwrap();
    let kubeconfig = out.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let lake = out.join("lake");
    let log_path = out.join("flowlens.log");

    let b_ip = b.to_string();
    let mut echo = KillOnDrop(
        p.command("python3")
            .args(["-c", ECHO, "9000", &b_ip, &svc_ip, &node_b_ip])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(echo.0.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        assert_eq!(l.trim(), "ready");
    }

    let log = std::fs::File::create(&log_path).unwrap();
    let mut flowlens = KillOnDrop(
        Command::new("nsenter")
            .arg(format!("--net={}", h.path().display()))
            .arg(FLOWLENS)
            .args([
                "run",
                "--netfilter",
                "local_in,local_out",
                "--drain-interval",
                "200ms",
                "--idle-timeout",
                "1s",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .arg("--sink")
            .arg(format!("parquet:{}", lake.display()))
            .env("FLOWLENS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = flowlens.0.id();
    wait("flowlens attached", 20, || {
        assert!(flowlens.0.try_wait().unwrap().is_none(), "flowlens exited");
        flowlens_testkit::netfilter_links(pid) >= 4
    });

    let dst = |ip: &str| format!("{ip}:9000");
    let all = [dst(&b.to_string()), dst(&svc_ip), dst(&node_b_ip)];
    let src = a.to_string();
    // 1: the API server is down: names null; the records are exported meanwhile.
    round(&cg.scope, &h, &src, 41001, &all);
    std::thread::sleep(Duration::from_secs(3));

    // The cluster: objects that existed for a minute already.
    let old = rfc3339(SystemTime::now() - Duration::from_secs(60));
    let aged = |o: Value| objects::with_created(o, &old);
    api.apply(
        Res::Nodes,
        aged(objects::node("node-a", &node_a_ip, Some("zone-a"))),
    );
    api.apply(
        Res::Nodes,
        aged(objects::node("node-b", &node_b_ip, Some("zone-b"))),
    );
    api.apply(
        Res::ReplicaSets,
        aged(objects::owned(
            "shop",
            "web-5f7c9",
            Some(("Deployment", "web")),
        )),
    );
    api.apply(
        Res::Jobs,
        aged(objects::owned(
            "db",
            "job-backup-2901",
            Some(("CronJob", "backup")),
        )),
    );
    api.apply(
        Res::Services,
        aged(objects::service("shop", "api", &svc_ip)),
    );
    api.apply(
        Res::Pods,
        aged(objects::pod(
            "shop",
            "web-5f7c9-x2k4p",
            &uid_client,
            Some(&src),
            "node-a",
            Some(("ReplicaSet", "web-5f7c9")),
        )),
    );
    api.apply(
        Res::Pods,
        aged(objects::pod(
            "db",
            "backup-2901-q8v",
            "pod-a-uid",
            Some(&b.to_string()),
            "node-b",
            Some(("Job", "job-backup-2901")),
        )),
    );
    api.set_down(false);
    // flowlens has listed every kind once it watches each.
    wait("flowlens' watches", 30, || {
        let r = api.requests();
        [
            "/api/v1/pods?",
            "/api/v1/services?",
            "/api/v1/nodes?",
            "/apis/apps/v1/replicasets?",
            "/apis/batch/v1/jobs?",
        ]
        .iter()
        .all(|p| r.iter().any(|l| l.contains(p) && l.contains("watch=true")))
    });
    std::thread::sleep(Duration::from_millis(500));

    // 2: named; then pod A goes and pod B takes its address before the records are out.
    round(&cg.scope, &h, &src, 41011, &all);
    assert!(api.delete(Res::Pods, "db", "backup-2901-q8v"));
    api.apply(
        Res::Pods,
        objects::pod(
            "db",
            "postgres-0",
            "pod-b-uid",
            Some(&b.to_string()),
            "node-b",
            Some(("StatefulSet", "postgres")),
        ),
    );
    std::thread::sleep(Duration::from_millis(2_500)); // past B's creation second
    // 3: B.
    round(&cg.scope, &h, &src, 41021, &all);
    // 4: the API server goes down: what is known still names.
    api.set_down(true);
    round(&cg.scope, &h, &src, 41031, &all);
    std::thread::sleep(Duration::from_secs(2));
    api.set_down(false);

    // SIGINT: drain, flush, close.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let st = flowlens.0.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(st.success(), "flowlens: {st}\n{log}");
    let o = Command::new("python3")
        .arg(READER)
        .arg(&lake)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "reader: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let _ = std::io::stderr().write_all(b"");

    let client: Names = [
        Some("shop"),
        Some("web-5f7c9-x2k4p"),
        Some("Deployment"),
        Some("web"),
        Some("node-a"),
        Some("zone-a"),
        None,
    ];
    let pod_a: Names = [
        Some("db"),
        Some("backup-2901-q8v"),
        Some("CronJob"),
        Some("backup"),
        Some("node-b"),
        Some("zone-b"),
        None,
    ];
    let pod_b: Names = [
        Some("db"),
        Some("postgres-0"),
        Some("StatefulSet"),
        Some("postgres"),
        Some("node-b"),
        Some("zone-b"),
        None,
    ];
    let service: Names = [Some("shop"), None, None, None, None, None, Some("api")];
    let node_b: Names = [None, None, None, None, Some("node-b"), Some("zone-b"), None];

    let mut checked = 0;
    // (round's first client port, client names, names of the pod address, service, node).
    for (base, cl, pod, svc, node) in [
        (41001u64, NONE, NONE, NONE, NONE),
        (41011, client, pod_a, service, node_b),
        (41021, client, pod_b, service, node_b),
        (41031, client, pod_b, service, node_b),
    ] {
        for (i, want) in [pod, svc, node].into_iter().enumerate() {
            let port = base + i as u64;
            let mine: Vec<&Value> = records
                .iter()
                .filter(|r| {
                    r["source_port"].as_u64() == Some(port)
                        || r["destination_port"].as_u64() == Some(port)
                })
                .collect();
            // Requests at local_out (client → server) and replies at local_in.
            let out_ = mine
                .iter()
                .filter(|r| r["source_port"].as_u64() == Some(port));
            let in_ = mine
                .iter()
                .filter(|r| r["destination_port"].as_u64() == Some(port));
            assert!(
                out_.clone().count() >= 1 && in_.clone().count() >= 1,
                "round {base} destination {i}: records {mine:?}\n{log}"
            );
            for r in out_ {
                assert_eq!(s(r, "source_k8s_pod_uid"), Some(uid_client.as_str()), "{r}");
                assert_eq!(names(r, "source"), cl, "client end of {r}");
                assert_eq!(names(r, "destination"), want, "server end of {r}");
                checked += 1;
            }
            for r in in_ {
                assert_eq!(names(r, "destination"), cl, "client end of {r}");
                assert_eq!(names(r, "source"), want, "server end of {r}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 24, "{checked}");
    drop(echo);
    assert!(
        log.contains("kubernetes API"),
        "the outage was not logged:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
