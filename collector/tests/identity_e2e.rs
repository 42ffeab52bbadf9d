//! "Who is talking" (issue 12) end to end, with real cgroups, sockets and netfilter hooks.
//!
//! The test builds "containers" the way runtimes name them: cgroup v2 directories
//! `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`
//! (containerd/CRI, systemd driver), `system.slice/docker-<id>.scope` (Docker, systemd driver)
//! and `system.slice/<name>.service` (a host service), all under one unique test parent in the
//! cgroup2 hierarchy. Each workload process (python3, `tests/identity/workload.py`) is moved into
//! its cgroup before it execs, then into the test's "host" network namespace H, which a veth joins
//! to a peer namespace P. It is a TCP and UDP client of P's echo servers and serves TCP and UDP
//! to a client in P. `flowlens run --netfilter pre_routing,local_in,local_out,post_routing` runs in
//! H (entered with nsenter, so the cgroup2 mount stays visible). The Parquet output is read back
//! with pyarrow (`tests/identity/read_records.py`), and every record of every workload's ports is
//! checked: the exact cgroup path, container id, pod UID and process at the local end (source at
//! local_out/post_routing, destination at local_in/pre_routing), P's processes (a service cgroup
//! of their own, behind H's veth) at the remote end, and every (protocol, hook) pair seen.
//!
//! Also: a container whose cgroup is removed while its TCP connection is open keeps its identity;
//! a UDP address and port reused by a second container right after the first exited gives records
//! that each carry exactly one container's packets. Needs root (CI runs as root); never skips.
//!
//! The second test: containers in their own namespaces behind veths, seen at XDP and all five
//! netfilter hooks; a container removed (process, veth, namespace, cgroup) while its flow is
//! open; a veth name, interface index and address pair reused by a second container.
//!
//! The first test's workloads share the host's network namespace with their cgroup (as
//! host-network pods do). The second test (`containers_behind_veths_are_named_by_their_interface`)
//! gives each "container" its own network namespace behind a veth to the test host namespace,
//! as runtimes and CNIs do, and checks that the host-side interface names it.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use flowlens::identity::cgroup::cgroup2_mount;
use flowlens_testkit::{Netns, temp_dir, veth_pair};
use serde_json::Value;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/identity/workload.py");
const READER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/identity/read_records.py"
);

/// The test's cgroups: one parent directory in the cgroup2 hierarchy, removed on drop.
struct Cgroups {
    root: PathBuf,
    base: String,
    made: Vec<PathBuf>,
}

impl Cgroups {
    /// `tag` keeps the parents of this file's tests (which run in parallel) apart.
    fn new(tag: &str) -> Cgroups {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = cgroup2_mount(&mi).expect("a cgroup2 mount (pure v2 or hybrid)");
        let base = format!("flowlens-test-{}-{tag}", std::process::id());
        Cgroups {
            root,
            base,
            made: Vec::new(),
        }
    }

    /// Creates `base/rel`; returns (absolute dir, path relative to the cgroup root).
    fn make(&mut self, rel: &str) -> (PathBuf, String) {
        let rel = format!("/{}/{rel}", self.base);
        let abs = self.root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&abs).unwrap();
        let mut p = abs.clone();
        while p != self.root {
            if !self.made.contains(&p) {
                self.made.push(p.clone());
            }
            p.pop();
        }
        (abs, rel)
    }

    fn base_dir(&self) -> PathBuf {
        self.root.join(&self.base)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Deepest first; processes have exited (or were moved to the base, then exited).
        self.made
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &self.made {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// A cgroup the test made: its directory, and its path relative to the cgroup root.
struct Cg {
    dir: PathBuf,
    rel: String,
}

/// The cgroups a test's workloads run in, named the way runtimes name them: containers 1, 4 and
/// 5 by containerd under a kubepods pod slice each, 2 and 3 by Docker's systemd driver, and a
/// host service `system.slice/<service>.service`. Returns the container ids of containers 1-5
/// (from tags `first`..`first + 4`), the pod UIDs of containers 1, 4 and 5, their cgroups, and
/// the service's cgroup.
fn layout(cgs: &mut Cgroups, first: u64, service: &str) -> ([String; 5], [String; 3], [Cg; 5], Cg) {
    let tags: [u64; 5] = std::array::from_fn(|i| first + i as u64);
    let ids = tags.map(hex64);
    let pod_uids = [tags[0], tags[3], tags[4]].map(uid);
    let mut make = |rel: String| {
        let (dir, rel) = cgs.make(&rel);
        Cg { dir, rel }
    };
    let pod_scope = |u: &str, id: &str| {
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            u.replace('-', "_")
        )
    };
    let docker = |id: &str| format!("system.slice/docker-{id}.scope");
    let containers = [
        make(pod_scope(&pod_uids[0], &ids[0])),
        make(docker(&ids[1])),
        make(docker(&ids[2])),
        make(pod_scope(&pod_uids[1], &ids[3])),
        make(pod_scope(&pod_uids[2], &ids[4])),
    ];
    let service = make(format!("system.slice/{service}.service"));
    (ids, pod_uids, containers, service)
}

/// The Python interpreter itself: a `python3` on PATH may be a wrapper script (pyenv's shim
/// runs bash first), and the process name the test expects is the interpreter's.
fn python() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let o = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    })
}

/// A workload process with line-based stdout.
struct Work {
    child: Child,
    out: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl Work {
    /// python3 workload.py ARGS, in cgroup `cg` (None: stays where the test is) and netns `ns`.
    fn spawn(cg: Option<&Path>, ns: &Netns, args: &[&str]) -> Work {
        let cgroup_procs = cg.map(|c| c.join("cgroup.procs"));
        let script = r#"if [ -n "$0" ]; then echo $$ > "$0" || exit 1; fi; n="$1"; shift; exec nsenter --net="$n" "$@""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(cgroup_procs.map_or(String::new(), |p| p.display().to_string()))
            .arg(ns.path())
            .arg(python())
            .arg(WORKLOAD)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let out = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Work { child, out, stdin }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "workload {:?} ended early", self.child.id());
        l.trim_end().to_string()
    }

    fn expect(&mut self, want: &str) {
        let l = self.line();
        assert_eq!(l, want, "workload said {l:?}");
    }

    fn json(&mut self) -> Value {
        serde_json::from_str(&self.line()).unwrap()
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "workload exited with {st}");
    }
}

/// flowlens, killed if the test fails before stopping it.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
    fn get(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    /// Waits (at most 20 s) until flowlens holds `links` netfilter links; fails if it exits
    /// first.
    fn wait_netfilter_links(&mut self, links: usize) {
        let t0 = Instant::now();
        while flowlens_testkit::netfilter_links(self.id()) < links {
            assert!(
                self.get().try_wait().unwrap().is_none(),
                "flowlens exited early"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "flowlens not attached"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Who a workload is: its cgroup path (relative), container id, pod UID, pid, local ports.
#[derive(Debug, Clone)]
struct Who {
    name: &'static str,
    cgroup: String,
    container_id: Option<String>,
    pod_uid: Option<String>,
    pid: u32,
    ports: Vec<u64>,
}

fn hex64(tag: u64) -> String {
    let pid = std::process::id() as u64;
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        pid,
        tag,
        0xc0ffee_u64 * tag,
        0xfeed_u64 + tag
    )
}

fn uid(tag: u64) -> String {
    format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", std::process::id(), tag)
}

fn s<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r[k].as_str()
}

/// Checks one end of a record against `who` (or all null).
fn check_end(r: &Value, end: &str, who: Option<&Who>) {
    let ctx = || format!("{end} end of {r}");
    match who {
        Some(w) => {
            assert_eq!(
                s(r, &format!("{end}_cgroup")),
                Some(w.cgroup.as_str()),
                "{}",
                ctx()
            );
            assert_eq!(
                s(r, &format!("{end}_container_id")),
                w.container_id.as_deref(),
                "{}",
                ctx()
            );
            assert_eq!(
                s(r, &format!("{end}_k8s_pod_uid")),
                w.pod_uid.as_deref(),
                "{}",
                ctx()
            );
            assert_eq!(
                s(r, &format!("{end}_process_name")),
                Some("python3"),
                "{}",
                ctx()
            );
            assert_eq!(
                r[format!("{end}_process_pid")].as_u64(),
                Some(u64::from(w.pid)),
                "{}",
                ctx()
            );
        }
        None => {
            for f in [
                "cgroup",
                "container_id",
                "k8s_pod_uid",
                "process_name",
                "process_pid",
            ] {
                assert!(r[format!("{end}_{f}")].is_null(), "{}: {f} not null", ctx());
            }
        }
    }
}

#[test]
fn containers_and_services_are_named_at_every_hook() {
    let mut cgs = Cgroups::new("sock");
    let h = Netns::new("idh").unwrap();
    let p = Netns::new("idp").unwrap();
    let link = veth_pair(&h, &p).unwrap();
    let (h_ip, p_ip) = (link.a_v4.to_string(), link.b_v4.to_string());
    let out = temp_dir("identity-e2e").unwrap();

    let ([id1, id2, id3, id4, id5], [uid1, uid4, uid5], [cg1, cg2, cg3, cg4, cg5], svc) =
        layout(&mut cgs, 1, "flowlens-test");

    // The peer namespace P is behind a veth of H, so its processes (in a service cgroup of
    // their own) name P's end of every flow too, by interface.
    let (peer_dir, peer_rel) = cgs.make("system.slice/flowlens-test-peer.service");
    let mut peer = Work::spawn(Some(&peer_dir), &p, &["peer", "-", &p_ip]);
    peer.expect("ready");
    let remote = Who {
        name: "peer namespace",
        cgroup: peer_rel.clone(),
        container_id: None,
        pod_uid: None,
        pid: peer.child.id(),
        ports: Vec::new(),
    };

    let flowlens = Command::new("nsenter")
        .arg(format!("--net={}", h.path().display()))
        .arg(FLOWLENS)
        .args([
            "run",
            "--netfilter",
            "pre_routing,local_in,local_out,post_routing",
            "--drain-interval",
            "200ms",
            "--idle-timeout",
            "3s",
            "--sink",
        ])
        .arg(format!("parquet:{}", out.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut flowlens = KillOnDrop(Some(flowlens));
    flowlens.wait_netfilter_links(8);

    // Containers and a service: client and server, TCP and UDP.
    let mut named = Vec::new();
    for (name, dir, rel, cid, pod, tport, uport) in [
        (
            "containerd",
            &cg1.dir,
            &cg1.rel,
            Some(&id1),
            Some(&uid1),
            7101,
            7102,
        ),
        ("docker", &cg2.dir, &cg2.rel, Some(&id2), None, 7201, 7202),
        ("service", &svc.dir, &svc.rel, None, None, 7301, 7302),
    ] {
        let (ts, us) = (tport.to_string(), uport.to_string());
        let mut w = Work::spawn(Some(dir), &h, &["full", &p_ip, &h_ip, &ts, &us]);
        w.expect("ready");
        let client = Work::spawn(Some(&peer_dir), &p, &["connect", &h_ip, &p_ip, &ts, &us]);
        let ports = w.json();
        w.expect("done");
        let mut client = client;
        client.expect("done");
        client.finish();
        named.push(Who {
            name,
            cgroup: rel.clone(),
            container_id: cid.cloned(),
            pod_uid: pod.cloned(),
            pid: w.child.id(),
            ports: vec![
                tport,
                uport,
                ports["tcp_client"].as_u64().unwrap(),
                ports["udp_client"].as_u64().unwrap(),
            ],
        });
        w.finish();
    }

    // A container removed while its connection is open.
    let mut hold = Work::spawn(Some(&cg3.dir), &h, &["hold", &p_ip, &h_ip]);
    let hold_port = hold.json()["tcp_client"].as_u64().unwrap();
    let hold_pid = hold.child.id();
    std::thread::sleep(Duration::from_millis(800)); // a few drains see the connection
    std::fs::write(cgs.base_dir().join("cgroup.procs"), hold_pid.to_string()).unwrap();
    std::fs::remove_dir(&cg3.dir).unwrap();
    assert!(!cg3.dir.exists());
    writeln!(hold.stdin.as_mut().unwrap(), "go").unwrap();
    hold.expect("done");
    hold.finish();

    // One UDP address and port, two containers in a row.
    let mut first = Work::spawn(Some(&cg4.dir), &h, &["udp", &p_ip, &h_ip, "7400", "3"]);
    let first_pid = first.child.id();
    first.expect("done");
    first.finish();
    std::fs::remove_dir(&cg4.dir).unwrap();
    // Well within --idle-timeout: the first container's records are still open.
    let mut second = Work::spawn(Some(&cg5.dir), &h, &["udp", &p_ip, &h_ip, "7400", "5"]);
    let second_pid = second.child.id();
    eprintln!("first {first_pid} second {second_pid}");
    second.expect("done");
    second.finish();

    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(flowlens.id() as i32, libc::SIGINT) };
    let fl = flowlens.0.take().unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&fl.stderr);
    eprint!("{err}");
    assert!(fl.status.success(), "flowlens exited with {}", fl.status);
    peer.finish();

    // Independent read-back.
    let rd = Command::new("python3")
        .arg(READER)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rd.status.success(),
        "reader: {}",
        String::from_utf8_lossy(&rd.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(rd.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    eprintln!("{} records", rows.len());

    let outbound = ["nf_local_out", "nf_post_routing"];
    let inbound = ["nf_local_in", "nf_pre_routing"];
    for w in &named {
        let mut seen = BTreeMap::new();
        for r in &rows {
            let obs = s(r, "observation_point").unwrap();
            let proto = s(r, "network_transport").unwrap().to_string();
            let local_src = s(r, "source_address") == Some(h_ip.as_str())
                && w.ports.contains(&r["source_port"].as_u64().unwrap());
            let local_dst = s(r, "destination_address") == Some(h_ip.as_str())
                && w.ports.contains(&r["destination_port"].as_u64().unwrap());
            if local_src && outbound.contains(&obs) {
                check_end(r, "source", Some(w));
                check_end(r, "destination", Some(&remote));
            } else if local_dst && inbound.contains(&obs) {
                check_end(r, "destination", Some(w));
                check_end(r, "source", Some(&remote));
            } else {
                continue;
            }
            *seen.entry((proto, obs.to_string())).or_insert(0u64) += 1;
        }
        for proto in ["tcp", "udp"] {
            for obs in outbound.iter().chain(&inbound) {
                assert!(
                    seen.contains_key(&(proto.to_string(), obs.to_string())),
                    "{}: no {proto} record at {obs}; seen {seen:?}",
                    w.name
                );
            }
        }
    }

    // The removed container: every record of its connection names it.
    let gone = Who {
        name: "removed",
        cgroup: cg3.rel.clone(),
        container_id: Some(id3.clone()),
        pod_uid: None,
        pid: hold_pid,
        ports: vec![hold_port],
    };
    let mut out_packets = 0;
    for r in &rows {
        let obs = s(r, "observation_point").unwrap();
        if s(r, "source_address") == Some(h_ip.as_str())
            && r["source_port"].as_u64() == Some(hold_port)
            && outbound.contains(&obs)
        {
            check_end(r, "source", Some(&gone));
            if obs == "nf_local_out" {
                out_packets += r["packets"].as_u64().unwrap();
            }
        }
        if s(r, "destination_address") == Some(h_ip.as_str())
            && r["destination_port"].as_u64() == Some(hold_port)
            && inbound.contains(&obs)
        {
            check_end(r, "destination", Some(&gone));
        }
    }
    // SYN, 2 data segments, ACKs, FIN: the packets after the removal are in it.
    assert!(
        out_packets >= 5,
        "removed container: {out_packets} packets sent"
    );

    // The reused address and port: per container, exactly its own packets, at each hook.
    for obs in outbound.iter().chain(&inbound) {
        let (port_col, end) = if outbound.contains(obs) {
            ("source_port", "source")
        } else {
            ("destination_port", "destination")
        };
        let mut per: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for r in &rows {
            if s(r, "observation_point") == Some(obs)
                && r[port_col].as_u64() == Some(7400)
                && s(r, "network_transport") == Some("udp")
            {
                let cid = s(r, &format!("{end}_container_id")).map(str::to_string);
                let pid = r[format!("{end}_process_pid")].as_u64();
                match cid.as_deref() {
                    Some(c) if c == id4 => {
                        assert_eq!(s(r, &format!("{end}_cgroup")), Some(cg4.rel.as_str()));
                        assert_eq!(s(r, &format!("{end}_k8s_pod_uid")), Some(uid4.as_str()));
                        assert_eq!(pid, Some(u64::from(first_pid)));
                    }
                    Some(c) if c == id5 => {
                        assert_eq!(s(r, &format!("{end}_cgroup")), Some(cg5.rel.as_str()));
                        assert_eq!(s(r, &format!("{end}_k8s_pod_uid")), Some(uid5.as_str()));
                        assert_eq!(pid, Some(u64::from(second_pid)));
                    }
                    other => panic!("port 7400 at {obs} named {other:?}: {r}"),
                }
                *per.entry(cid).or_insert(0) += r["packets"].as_u64().unwrap();
            }
        }
        assert_eq!(
            per,
            BTreeMap::from([(Some(id4.clone()), 3), (Some(id5.clone()), 5)]),
            "reused port 7400 at {obs}"
        );
    }
    drop(link);
    let _ = std::fs::remove_dir_all(&out);
}

/// A "container" network namespace joined to `h` by a veth: host side `host_if` with
/// 172.30.`net`.1/24, container side `eth0` with .2, both up, permanent neighbour entries both
/// ways (no ARP on the link). `index`: the host side's interface index (`ip link add … index`).
struct Veth {
    host_if: String,
    host_ip: String,
    ip: String,
}

fn veth(h: &Netns, c: &Netns, host_if: &str, net: u8, index: Option<u32>) -> Veth {
    let (host_ip, ip) = (format!("172.30.{net}.1"), format!("172.30.{net}.2"));
    let (hmac, cmac) = (
        format!("02:66:6c:1e:{net:02x}:01"),
        format!("02:66:6c:1e:{net:02x}:02"),
    );
    let mut add = vec!["link", "add", host_if];
    let idx = index.map(|i| i.to_string());
    if let Some(i) = &idx {
        add.extend(["index", i]);
    }
    add.extend([
        "address",
        &hmac,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &cmac,
        "netns",
        c.name(),
    ]);
    h.ip(&add).unwrap();
    for (ns, dev, me, peer, mac) in [
        (h, host_if, &host_ip, &ip, &cmac),
        (c, "eth0", &ip, &host_ip, &hmac),
    ] {
        ns.ip(&["addr", "add", &format!("{me}/24"), "dev", dev])
            .unwrap();
        ns.ip(&["link", "set", "dev", dev, "up"]).unwrap();
        ns.ip(&[
            "neigh",
            "replace",
            peer,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    Veth {
        host_if: host_if.to_string(),
        host_ip,
        ip,
    }
}

/// Who is behind an address: cgroup path, container id, pod UID, and every pid the test put
/// in that cgroup (the name's process is the lowest-pid one of the namespace or cgroup when
/// flowlens first looked: one of them).
#[derive(Debug, Clone)]
struct End {
    name: &'static str,
    cgroup: String,
    container_id: Option<String>,
    pod_uid: Option<String>,
    pids: Vec<u32>,
}

fn check(r: &Value, end: &str, who: Option<&End>) {
    let ctx = || format!("{end} end of {r}");
    let f = |k: &str| r[format!("{end}_{k}")].clone();
    match who {
        Some(w) => {
            assert_eq!(f("cgroup").as_str(), Some(w.cgroup.as_str()), "{}", ctx());
            assert_eq!(
                f("container_id").as_str(),
                w.container_id.as_deref(),
                "{}",
                ctx()
            );
            assert_eq!(f("k8s_pod_uid").as_str(), w.pod_uid.as_deref(), "{}", ctx());
            assert_eq!(f("process_name").as_str(), Some("python3"), "{}", ctx());
            let pid = f("process_pid").as_u64().map(|p| p as u32);
            assert!(
                pid.is_some_and(|p| w.pids.contains(&p)),
                "{}: pid not one of {:?}",
                ctx(),
                w.pids
            );
        }
        None => {
            for k in [
                "cgroup",
                "container_id",
                "k8s_pod_uid",
                "process_name",
                "process_pid",
            ] {
                assert!(f(k).is_null(), "{}: {k} not null", ctx());
            }
        }
    }
}

/// Whether the end at `address` (a container behind its veth: `container`, else a host socket)
/// is named at observation point `obs` (docs/IDENTITY.md, "Which end, at which observation
/// point"): a container by the interface the packet came in on (source) or leaves by
/// (destination); a host socket by the packet's socket (source when sent, destination when
/// received; at pre_routing by the reply direction).
fn named_at(obs: &str, source: bool, container: bool) -> bool {
    match (container, source) {
        (true, true) => ["xdp", "nf_pre_routing", "nf_local_in", "nf_forward"].contains(&obs),
        (true, false) => ["nf_local_out", "nf_post_routing"].contains(&obs),
        (false, true) => ["nf_local_out", "nf_post_routing"].contains(&obs),
        (false, false) => ["nf_local_in", "nf_pre_routing"].contains(&obs),
    }
}

#[test]
fn containers_behind_veths_are_named_by_their_interface() {
    let mut cgs = Cgroups::new("veth");
    let pid = std::process::id();
    let h = Netns::new("vh").unwrap();
    let c1 = Netns::new("vc1").unwrap();
    let c2 = Netns::new("vc2").unwrap();
    let v1 = veth(&h, &c1, &format!("fl{pid:x}c1"), 1, None);
    let v2 = veth(&h, &c2, &format!("fl{pid:x}c2"), 2, None);
    // The host forwards between the two containers.
    c1.ip(&["route", "add", "172.30.2.0/24", "via", &v1.host_ip])
        .unwrap();
    c2.ip(&["route", "add", "172.30.1.0/24", "via", &v2.host_ip])
        .unwrap();
    let st = h
        .command("sh")
        .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = temp_dir("identity-veth").unwrap();

    let ([id1, id2, id3, id4, id5], [uid1, uid4, uid5], [cg1, cg2, cg3, cg4, cg5], svc) =
        layout(&mut cgs, 11, "flowlens-veth-host");

    // Long-lived echo servers (TCP 9000, UDP 9001) in the host (a service) and each container.
    let mut host_peer = Work::spawn(Some(&svc.dir), &h, &["peer", "-", "0.0.0.0"]);
    host_peer.expect("ready");
    let mut c1_peer = Work::spawn(Some(&cg1.dir), &c1, &["peer", "-", "0.0.0.0"]);
    c1_peer.expect("ready");
    let mut c2_peer = Work::spawn(Some(&cg2.dir), &c2, &["peer", "-", "0.0.0.0"]);
    c2_peer.expect("ready");
    let mut host = End {
        name: "host service",
        cgroup: svc.rel.clone(),
        container_id: None,
        pod_uid: None,
        pids: vec![host_peer.child.id()],
    };
    let mut e1 = End {
        name: "containerd",
        cgroup: cg1.rel.clone(),
        container_id: Some(id1.clone()),
        pod_uid: Some(uid1.clone()),
        pids: vec![c1_peer.child.id()],
    };
    let mut e2 = End {
        name: "docker",
        cgroup: cg2.rel.clone(),
        container_id: Some(id2.clone()),
        pod_uid: None,
        pids: vec![c2_peer.child.id()],
    };

    let flowlens = Command::new("nsenter")
        .arg(format!("--net={}", h.path().display()))
        .arg(FLOWLENS)
        .args(["run", "--xdp", &v1.host_if, "--xdp", &v2.host_if])
        .args([
            "--netfilter",
            "pre_routing,local_in,forward,local_out,post_routing",
            "--drain-interval",
            "200ms",
            "--idle-timeout",
            "3s",
            "--sink",
        ])
        .arg(format!("parquet:{}", out.display()))
        .env("FLOWLENS_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut flowlens = KillOnDrop(Some(flowlens));
    flowlens.wait_netfilter_links(10);
    h.wait_xdp(&v1.host_if, true).unwrap();
    h.wait_xdp(&v2.host_if, true).unwrap();

    // TCP and UDP: each container with the host both ways, and container to container
    // (forwarded by the host).
    for (cg, ns, target, me, who) in [
        (&cg1.dir, &c1, &v1.host_ip, &v1.ip, 1),
        (&svc.dir, &h, &v1.ip, &v1.host_ip, 0),
        (&cg2.dir, &c2, &v2.host_ip, &v2.ip, 2),
        (&svc.dir, &h, &v2.ip, &v2.host_ip, 0),
        (&cg1.dir, &c1, &v2.ip, &v1.ip, 1),
        (&cg2.dir, &c2, &v1.ip, &v2.ip, 2),
    ] {
        let mut w = Work::spawn(Some(cg), ns, &["connect", target, me, "9000", "9001"]);
        [&mut host, &mut e1, &mut e2][who].pids.push(w.child.id());
        w.expect("done");
        w.finish();
    }

    // A container that goes away (process, veth, namespace, cgroup) while the host's end of
    // its TCP connection is still open.
    let c3 = Netns::new("vc3").unwrap();
    let v3 = veth(&h, &c3, &format!("fl{pid:x}c3"), 3, None);
    std::thread::sleep(Duration::from_millis(400)); // let a drain see the new link's traffic
    let mut hold = Work::spawn(Some(&cg3.dir), &c3, &["hold", &v3.host_ip, &v3.ip]);
    hold.json(); // connected, 1000 bytes echoed
    let e3 = End {
        name: "removed",
        cgroup: cg3.rel.clone(),
        container_id: Some(id3.clone()),
        pod_uid: None,
        pids: vec![hold.child.id()],
    };
    std::thread::sleep(Duration::from_millis(800)); // a few drains see the connection
    hold.child.kill().unwrap(); // the kernel closes its socket: FIN
    hold.child.wait().unwrap();
    h.ip(&["link", "del", "dev", &v3.host_if]).unwrap();
    drop(c3);
    std::fs::remove_dir(&cg3.dir).unwrap();

    // One interface name, index and address pair, two containers in a row: C4 sends 3 UDP
    // datagrams from port 7400 and goes away; C5 takes the same veth name and index and
    // sends 5 from the same address and port (the same flow keys) while C4's records are open.
    let c4 = Netns::new("vc4").unwrap();
    let reused_if = format!("fl{pid:x}c4");
    let v4 = veth(&h, &c4, &reused_if, 4, None);
    let index = flowlens_testkit::ifindex(&h, &reused_if).unwrap();
    let mut first = Work::spawn(
        Some(&cg4.dir),
        &c4,
        &["udp", &v4.host_ip, &v4.ip, "7400", "3"],
    );
    let first_pid = first.child.id();
    first.expect("done");
    first.finish();
    h.ip(&["link", "del", "dev", &reused_if]).unwrap();
    drop(c4);
    std::fs::remove_dir(&cg4.dir).unwrap();
    let c5 = Netns::new("vc5").unwrap();
    let v5 = veth(&h, &c5, &reused_if, 4, Some(index));
    assert_eq!(flowlens_testkit::ifindex(&h, &reused_if).unwrap(), index);
    let mut second = Work::spawn(
        Some(&cg5.dir),
        &c5,
        &["udp", &v5.host_ip, &v5.ip, "7400", "5"],
    );
    let second_pid = second.child.id();
    eprintln!("first {first_pid} second {second_pid}");
    second.expect("done");
    second.finish();

    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(flowlens.id() as i32, libc::SIGINT) };
    let fl = flowlens.0.take().unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&fl.stderr);
    eprint!("{err}");
    assert!(fl.status.success(), "flowlens exited with {}", fl.status);
    for p in [host_peer, c1_peer, c2_peer] {
        p.finish();
    }

    let rd = Command::new("python3")
        .arg(READER)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rd.status.success(),
        "reader: {}",
        String::from_utf8_lossy(&rd.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(rd.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    eprintln!("{} records", rows.len());

    // Every record of the test's addresses (C4/C5's shared address is checked below): the
    // named ends exactly, null where docs/IDENTITY.md says null.
    let who = |addr: &str| -> Option<(&'static str, bool, &End)> {
        if addr == v1.ip {
            Some(("c1", true, &e1))
        } else if addr == v2.ip {
            Some(("c2", true, &e2))
        } else if addr == v3.ip {
            Some(("c3", true, &e3))
        } else if [&v1.host_ip, &v2.host_ip, &v3.host_ip].contains(&&addr.to_string()) {
            Some(("host", false, &host))
        } else {
            None
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut c3_packets = 0;
    for r in &rows {
        let (Some(src), Some(dst)) = (s(r, "source_address"), s(r, "destination_address")) else {
            continue;
        };
        let (Some(a), Some(b)) = (who(src), who(dst)) else {
            continue;
        };
        let obs = s(r, "observation_point").unwrap();
        let proto = s(r, "network_transport").unwrap();
        for (end, (_, container, w), source) in [("source", a, true), ("destination", b, false)] {
            check(r, end, named_at(obs, source, container).then_some(w));
        }
        if a.0 == "c3" || b.0 == "c3" {
            c3_packets += r["packets"].as_u64().unwrap();
        } else {
            seen.insert((a.0, b.0, proto.to_string(), obs.to_string()));
        }
    }
    let mut want = Vec::new();
    for proto in ["tcp", "udp"] {
        for c in ["c1", "c2"] {
            for obs in ["xdp", "nf_pre_routing", "nf_local_in"] {
                want.push((c, "host", proto, obs));
            }
            for obs in ["nf_local_out", "nf_post_routing"] {
                want.push(("host", c, proto, obs));
            }
        }
        for (a, b) in [("c1", "c2"), ("c2", "c1")] {
            for obs in ["xdp", "nf_pre_routing", "nf_forward", "nf_post_routing"] {
                want.push((a, b, proto, obs));
            }
        }
    }
    for (a, b, proto, obs) in want {
        assert!(
            seen.contains(&(a, b, proto.to_string(), obs.to_string())),
            "no {proto} record {a} -> {b} at {obs}; seen {seen:?}"
        );
    }
    // The removed container's connection (SYN, data, ACKs, FIN both ways at four hooks):
    // every record named it (checked above), exported after it was gone.
    assert!(c3_packets >= 12, "removed container: {c3_packets} packets");

    // The reused interface, index and address: per container, exactly its packets.
    let first_end = End {
        name: "first",
        cgroup: cg4.rel.clone(),
        container_id: Some(id4.clone()),
        pod_uid: Some(uid4.clone()),
        pids: vec![first_pid],
    };
    let second_end = End {
        name: "second",
        cgroup: cg5.rel.clone(),
        container_id: Some(id5.clone()),
        pod_uid: Some(uid5.clone()),
        pids: vec![second_pid],
    };
    for obs in [
        "nf_pre_routing",
        "nf_local_in",
        "nf_local_out",
        "nf_post_routing",
    ] {
        let (port_col, end, other) = if named_at(obs, true, true) {
            ("source_port", "source", "destination")
        } else {
            ("destination_port", "destination", "source")
        };
        let mut per: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &rows {
            if s(r, "observation_point") == Some(obs)
                && r[port_col].as_u64() == Some(7400)
                && s(r, "network_transport") == Some("udp")
            {
                let cid = s(r, &format!("{end}_container_id"));
                let w = if cid == Some(id4.as_str()) {
                    &first_end
                } else if cid == Some(id5.as_str()) {
                    &second_end
                } else {
                    panic!("port 7400 at {obs} named {cid:?}: {r}")
                };
                check(r, end, Some(w));
                check(r, other, Some(&host));
                *per.entry(w.name).or_insert(0) += r["packets"].as_u64().unwrap();
            }
        }
        assert_eq!(
            per,
            BTreeMap::from([("first", 3), ("second", 5)]),
            "reused interface at {obs}"
        );
    }
    drop((c1, c2, c5));
    let _ = std::fs::remove_dir_all(&out);
}
