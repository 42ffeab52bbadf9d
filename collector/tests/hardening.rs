//! Bad configuration and reduced privileges, against the real `flowlens` binary in test
//! namespaces: every configuration error is one line (`flowlens: error: …`) naming what and where,
//! with a non-zero exit, before anything is attached; and flowlens runs, counting exactly, as an
//! unprivileged user holding only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (the set deploy/ grants),
//! while each one missing is named. Needs root to set up (CI runs as root); never skips.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use arrow_array::{Array, Int64Array, StringArray, UInt16Array};
use flowlens_testkit::{Link, Netns, temp_dir, udp_exchange, veth_pair};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
/// `nobody`: the unprivileged user the capability tests run flowlens as.
const NOBODY: &str = "65534";
/// The capabilities flowlens needs (collector/src/privileges.rs, deploy/README.md).
const NEEDED: [&str; 3] = ["bpf", "perfmon", "net_admin"];

fn two_hosts(tag: &str) -> (Netns, Netns, Link) {
    let a = Netns::new(&format!("{tag}a")).unwrap();
    let b = Netns::new(&format!("{tag}b")).unwrap();
    let link = veth_pair(&a, &b).unwrap();
    (a, b, link)
}

/// The one-line error contract: non-zero exit, stderr is exactly one line starting with
/// `flowlens: error: ` and containing every `want`, and nothing was attached.
fn assert_one_line_error(what: &str, o: &Output, code: i32, wants: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit status; stderr:\n{err}"
    );
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{err}");
    assert!(lines[0].starts_with("flowlens: error: "), "{what}: {err}");
    for w in wants {
        assert!(lines[0].contains(w), "{what}: {err:?} lacks {w:?}");
    }
    assert!(o.stdout.is_empty(), "{what}: wrote to stdout");
}

/// A `setpriv` command that runs flowlens in `ns` as `nobody` with exactly `caps`
/// (inheritable, ambient and bounding set; no supplementary groups).
fn as_nobody_with(ns: &Netns, caps: &[&str]) -> Command {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = ns.command("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
        "--",
        FLOWLENS,
    ]);
    cmd
}

/// Every kind of bad input the issue names, plus the neighbours a user hits: each one line,
/// non-zero, nothing attached.
#[test]
fn bad_configuration_is_one_line_and_fails_before_attaching() {
    let (_a, b, link) = two_hosts("badcfg");
    let dir = temp_dir("badcfg").unwrap();
    let iface = link.b_if.as_str();
    let not_a_dir = dir.join("plain-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let under_file = format!("parquet:{}/flows", not_a_dir.display());
    let conf = |name: &str, text: &str| -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let unknown_key = conf(
        "unknown-key.toml",
        &format!("xdp = [\"{iface}\"]\nsinks = [\"stdout\"]\n"),
    );
    let bad_duration = conf(
        "bad-duration.toml",
        &format!("xdp = [\"{iface}\"]\ndrain-interval = \"5 fortnights\"\n"),
    );
    let wrong_type = conf(
        "wrong-type.toml",
        &format!("xdp = [\"{iface}\"]\nmax-flows = \"many\"\n"),
    );
    let syntax = conf("syntax.toml", "xdp = [\n");
    let missing = dir.join("missing.toml").display().to_string();

    // (arguments after `flowlens`, exit status, substrings of the one line)
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // Command line: clap's errors, cut to one line.
        (vec!["run", "--xdp", iface, "--bogus"], 2, vec!["'--bogus'"]),
        (vec!["runn"], 2, vec!["'runn'"]),
        (
            vec!["run", "--xdp", iface, "--drain-interval", "5x"],
            2,
            vec!["'5x'", "--drain-interval", "500ms"],
        ),
        (
            vec!["run", "--xdp", iface, "--idle-timeout", "0s"],
            2,
            vec!["--idle-timeout", "greater than zero"],
        ),
        (
            vec!["run", "--xdp", iface, "--max-flows", "lots"],
            2,
            vec!["--max-flows"],
        ),
        (
            vec!["run", "--xdp", iface, "--xdp-mode", "turbo"],
            2,
            vec!["'turbo'", "--xdp-mode"],
        ),
        // Checks after parsing.
        (
            vec!["run", "--xdp", iface, "--max-flows", "0"],
            1,
            vec!["--max-flows"],
        ),
        (
            vec![
                "run",
                "--xdp",
                iface,
                "--idle-timeout",
                "1s",
                "--drain-interval",
                "2s",
            ],
            1,
            vec!["must not exceed"],
        ),
        (
            vec!["run", "--xdp", "nosuchif0"],
            1,
            vec!["--xdp", "unknown interface \"nosuchif0\""],
        ),
        (
            vec!["run", "--xdp", iface, "--xdp", iface],
            1,
            vec!["given twice"],
        ),
        (
            vec!["run", "--netfilter", "forward,prerouting"],
            1,
            vec!["--netfilter", "\"prerouting\""],
        ),
        (
            vec![
                "run",
                "--netfilter",
                "forward",
                "--netfilter-priority",
                "-2147483648",
            ],
            2,
            vec!["--netfilter-priority", "reserved"],
        ),
        // Sinks: malformed targets and unusable directories.
        (
            vec!["run", "--xdp", iface, "--sink", "bogus:x"],
            1,
            vec!["invalid sink \"bogus:x\"", "unknown sink kind"],
        ),
        (
            vec!["run", "--xdp", iface, "--sink", "kafka:broker:9092"],
            1,
            vec!["invalid sink \"kafka:broker:9092\""],
        ),
        (
            vec!["run", "--xdp", iface, "--sink", "otlp:collector:4317"],
            1,
            vec!["invalid sink \"otlp:collector:4317\""],
        ),
        (
            vec!["run", "--xdp", iface, "--sink", "parquet:gs://bucket/p"],
            1,
            vec!["invalid sink \"parquet:gs://bucket/p\""],
        ),
        (
            vec![
                "run",
                "--xdp",
                iface,
                "--sink",
                "parquet:/proc/flowlens-cannot-exist",
            ],
            1,
            vec!["parquet:/proc/flowlens-cannot-exist"],
        ),
        (
            vec!["run", "--xdp", iface, "--sink", &under_file],
            1,
            vec![&under_file],
        ),
        (
            vec![
                "run", "--xdp", iface, "--sink", "stdout", "--sink", "stdout",
            ],
            1,
            vec!["given twice"],
        ),
        (
            vec![
                "run",
                "--xdp",
                iface,
                "--sink",
                "kafka:127.0.0.1:9/t",
                "--kafka-option",
                "no.such.setting=1",
            ],
            1,
            vec!["no.such.setting"],
        ),
        // Config files: the file, the line and column, the reason.
        (
            vec!["run", "--config", &unknown_key],
            1,
            vec![
                &unknown_key,
                "line 2 column 1",
                "unknown field `sinks`",
                "`sink`",
            ],
        ),
        (
            vec!["run", "--config", &bad_duration],
            1,
            vec![&bad_duration, "line 2", "(drain-interval)", "fortnights"],
        ),
        (
            vec!["run", "--config", &wrong_type],
            1,
            vec![&wrong_type, "line 2", "(max-flows)"],
        ),
        (vec!["run", "--config", &syntax], 1, vec![&syntax, "line "]),
        (
            vec!["run", "--config", &missing],
            1,
            vec![&missing, "No such file"],
        ),
    ];
    for (args, code, wants) in &cases {
        let o = b
            .command(FLOWLENS)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(&format!("{args:?}"), &o, *code, wants);
    }
    assert!(
        !b.xdp_attached(iface).unwrap(),
        "a failed start left XDP attached"
    );

    // No BTF (hidden in a private mount namespace) and only netfilter asked for.
    let o = b
        .command("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"")
        .args([
            FLOWLENS,
            "run",
            "--netfilter",
            "forward",
            "--sink",
            "stdout",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(
        "no BTF",
        &o,
        1,
        &["--netfilter", "BTF", "/sys/kernel/btf/vmlinux"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without one of the three capabilities flowlens says which one and why, in one line, before
/// loading anything; an output directory the service user cannot write is named too.
#[test]
fn each_missing_capability_is_named_before_loading() {
    let (_a, b, link) = two_hosts("nocap");
    let out = temp_dir("nocap").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sink = format!("parquet:{}", out.display());
    for missing in NEEDED {
        let caps: Vec<&str> = NEEDED.iter().copied().filter(|c| *c != missing).collect();
        let o = as_nobody_with(&b, &caps)
            .args(["run", "--xdp", &link.b_if, "--sink", &sink])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_one_line_error(
            &format!("without {name}"),
            &o,
            1,
            &["missing capabilities", &name, "deploy/README.md"],
        );
        // Only the missing one is named.
        let line = String::from_utf8_lossy(&o.stderr);
        for other in &caps {
            let other = format!("CAP_{} (to", other.to_uppercase());
            assert!(!line.contains(&other), "{line}");
        }
    }
    assert!(!b.xdp_attached(&link.b_if).unwrap());

    // All capabilities, but a directory root owns and nobody cannot write.
    let locked = temp_dir("nocap-locked").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked_sink = format!("parquet:{}/flows", locked.display());
    let o = as_nobody_with(&b, &NEEDED)
        .args(["run", "--xdp", &link.b_if, "--sink", &locked_sink])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error("unwritable dir", &o, 1, &[&locked_sink, "ermission denied"]);
    assert!(!b.xdp_attached(&link.b_if).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&locked).unwrap();
}

/// The deployment's privilege set, for real: flowlens as `nobody` with only CAP_BPF, CAP_PERFMON
/// and CAP_NET_ADMIN attaches XDP and a netfilter hook, counts every packet sent at both points,
/// and stops cleanly on SIGTERM. Its effective set is checked while it runs, so the test cannot
/// pass by running with more.
#[test]
fn runs_as_nobody_with_only_bpf_perfmon_net_admin() {
    const PACKETS: u32 = 300;
    let (a, b, link) = two_hosts("lowcap");
    link.disable_gso().unwrap();
    let out = temp_dir("lowcap").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let child = as_nobody_with(&b, &NEEDED)
        .args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb"])
        .args(["--netfilter", "local_in", "--drain-interval", "1s"])
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        // The service's state directory in the unit (StateDirectory=); here one nobody owns.
        .arg("--spool-dir")
        .arg(out.join("spool"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // XDP is attached first, then the netfilter links (IPv4 and IPv6): wait for both.
    let t0 = Instant::now();
    while !(b.xdp_attached(&link.b_if).unwrap()
        && flowlens_testkit::netfilter_links(child.id()) == 2)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "probes never attached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `ip netns exec` and `setpriv` exec in place: the child's pid is flowlens's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| -> u64 {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim();
        u64::from_str_radix(v, 16).unwrap()
    };
    assert!(status.contains("Name:\tflowlens"), "{status}");
    let want = (1u64 << 39) | (1u64 << 38) | (1u64 << 12);
    assert_eq!(field("CapEff:"), want, "effective capabilities");
    assert_eq!(field("CapBnd:"), want, "bounding set");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == NOBODY), "{uid}");

    let (a4, b4) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    let got = udp_exchange(
        &a,
        &b,
        SocketAddr::new(a4, 31001),
        SocketAddr::new(b4, 7001),
        PACKETS,
        400,
    )
    .unwrap();
    assert_eq!(got, PACKETS);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("lost_packets=0"), "{err}");

    // Packets of the sent flow at each observation point, read back from the files nobody wrote.
    let (mut xdp, mut nf) = (0i64, 0i64);
    for f in flowlens::top::parquet_files(&out).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = |n: &str| batch.column_by_name(n).unwrap().clone();
            let obs = col("observation_point");
            let obs = obs.as_any().downcast_ref::<StringArray>().unwrap();
            let sp = col("source_port");
            let sp = sp.as_any().downcast_ref::<UInt16Array>().unwrap();
            let dp = col("destination_port");
            let dp = dp.as_any().downcast_ref::<UInt16Array>().unwrap();
            let pk = col("packets");
            let pk = pk.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..batch.num_rows() {
                if sp.value(i) == 31001 && dp.value(i) == 7001 && !pk.is_null(i) {
                    match obs.value(i) {
                        "xdp" => xdp += pk.value(i),
                        "nf_local_in" => nf += pk.value(i),
                        o => panic!("unexpected observation point {o}"),
                    }
                }
            }
        }
        assert_owned_by_nobody(&f);
    }
    assert_eq!((xdp, nf), (PACKETS as i64, PACKETS as i64));
    std::fs::remove_dir_all(&out).unwrap();
}

fn assert_owned_by_nobody(f: &Path) {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(f).unwrap().uid();
    assert_eq!(
        uid.to_string(),
        NOBODY,
        "{} owned by uid {uid}",
        f.display()
    );
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `KEY=A B C` values of a systemd unit, as capability names in setpriv's spelling (`bpf`).
fn unit_caps(unit: &str, key: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"));
    let mut caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.strip_prefix("CAP_").unwrap().to_lowercase())
        .collect();
    caps.sort();
    caps
}

/// The shipped deployment files grant exactly the capabilities the tests above run with, the
/// systemd unit passes `systemd-analyze verify` without a warning, and the example config runs
/// as an unprivileged user with the unit's capabilities.
#[test]
fn deployment_files_grant_exactly_the_tested_capabilities() {
    let mut needed: Vec<String> = NEEDED.iter().map(|c| c.to_string()).collect();
    needed.sort();

    // systemd
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/flowlens.service")).unwrap();
    assert_eq!(unit_caps(&unit, "AmbientCapabilities"), needed);
    assert_eq!(unit_caps(&unit, "CapabilityBoundingSet"), needed);
    assert!(unit.contains("\nDynamicUser=yes\n") && unit.contains("\nNoNewPrivileges=yes\n"));
    let dir = temp_dir("deploy").unwrap();
    let copy = dir.join("flowlens.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/flowlens", FLOWLENS)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );

    // Kubernetes: capabilities of every container, read with an independent YAML parser.
    let py = "import json,sys,yaml\n\
              docs=[d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
              ds=[d for d in docs if d['kind']=='DaemonSet']\n\
              cm=[d for d in docs if d['kind']=='ConfigMap']\n\
              print(json.dumps({'containers':[c for d in ds for c in d['spec']['template']['spec']['containers']],\n\
              \x20 'host_network':[d['spec']['template']['spec'].get('hostNetwork') for d in ds],\n\
              \x20 'config':cm[0]['data']['flowlens.toml']}))";
    let o = Command::new("python3")
        .args(["-c", py])
        .arg(deploy_dir().join("kubernetes/daemonset.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let k8s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let containers = k8s["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{out}");
    assert_eq!(k8s["host_network"], serde_json::json!([true]));
    let c = &containers[0];
    let ctx = &c["securityContext"];
    let caps = &ctx["capabilities"];
    let mut add: Vec<String> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_lowercase())
        .collect();
    add.sort();
    assert_eq!(add, needed);
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert_eq!(ctx["allowPrivilegeEscalation"], serde_json::json!(false));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The DaemonSet's own config, as the pod runs it: uid 0 but only the three capabilities.
    let (_a, b, _link) = two_hosts("deploy");
    let k8s_out = temp_dir("deploy-out").unwrap();
    let k8s_conf = k8s_out.join("k8s.toml");
    std::fs::write(&k8s_conf, k8s["config"].as_str().unwrap()).unwrap();
    let set = format!("-all,{}", NEEDED.map(|c| format!("+{c}")).join(","));
    let o = b
        .command("setpriv")
        .args([
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            &format!("--bounding-set={set}"),
            "--",
            FLOWLENS,
            "run",
            "--config",
        ])
        .arg(&k8s_conf)
        // The DaemonSet's config names flows with Kubernetes names; there is no cluster here.
        .arg("--kubernetes=false")
        .arg("--sink")
        .arg(format!("parquet:{}", k8s_out.display()))
        .arg("--spool-dir")
        .arg(k8s_out.join("k8s-spool"))
        .args(["--duration", "1s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("netfilter hooks attached") && err.contains("0.0.0.0:9464"),
        "{err}"
    );

    // The example config, as the unit runs it (output redirected to a writable directory).
    // The example config as the systemd unit runs it: nobody, the unit's capabilities.
    let out_dir = temp_dir("deploy-out-unit").unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let caps: Vec<&str> = needed.iter().map(String::as_str).collect();
    let o = as_nobody_with(&b, &caps)
        .arg("run")
        .arg("--config")
        .arg(deploy_dir().join("flowlens.toml"))
        .arg("--sink")
        .arg(format!("parquet:{}", out_dir.display()))
        .arg("--spool-dir")
        .arg(out_dir.join("spool"))
        .args(["--duration", "1s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("netfilter hooks attached") && err.contains("127.0.0.1:9464"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&out_dir).unwrap();
    std::fs::remove_dir_all(&k8s_out).unwrap();
}
