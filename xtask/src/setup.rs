//! Installs the build prerequisites that a fresh machine lacks. Idempotent and quick when
//! everything is present.
//!
//! Why bpf-linker is built here: it must link against the same LLVM major as the nightly that
//! compiles the probe. The nightly ships its own `libLLVM.so.<ver>-rust-…`; we point
//! `LLVM_PREFIX` at a directory of symlinks to it and build bpf-linker with the matching
//! `llvm-NN` feature into a per-nightly root under `~/.cache/flowlens`, then put that root first
//! on `PATH` for every cargo invocation.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Env {
    /// PATH with the project's bpf-linker first.
    pub path: OsString,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn nightly() -> Result<String> {
    let p = workspace_root().join("probe-ebpf/NIGHTLY");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

fn ensure_nightly(nightly: &str) -> Result<PathBuf> {
    let sysroot = |n: &str| {
        output(
            Command::new("rustc")
                .arg(format!("+{n}"))
                .args(["--print", "sysroot"]),
        )
    };
    let has_src = |root: &str| {
        Path::new(root.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    };
    match sysroot(nightly) {
        Ok(root) if has_src(&root) => return Ok(PathBuf::from(root.trim())),
        _ => {}
    }
    eprintln!("xtask: installing toolchain {nightly} with rust-src");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        nightly,
        "--profile",
        "minimal",
        "--no-self-update",
        "--component",
        "rust-src",
    ]))?;
    let root = sysroot(nightly)?;
    if !has_src(&root) {
        bail!("toolchain {nightly} has no rust-src after installing it");
    }
    Ok(PathBuf::from(root.trim()))
}

fn llvm_major(nightly: &str) -> Result<String> {
    let v = output(Command::new("rustc").arg(format!("+{nightly}")).arg("-vV"))?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in rustc -vV")?;
    Ok(line.split('.').next().unwrap_or_default().to_string())
}

fn ensure_bpf_linker(nightly: &str, sysroot: &Path) -> Result<PathBuf> {
    let cache = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/flowlens");
    let root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{nightly}"));
    let bin = root.join("bin/bpf-linker");
    if bin.exists()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        return Ok(root.join("bin"));
    }
    let major = llvm_major(nightly)?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The real shared object (libLLVM-NN-rust-….so is a linker script pointing at it).
            n.starts_with(&format!("libLLVM.so.{major}")) && !p.is_symlink()
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;
    let prefix = cache.join(format!("llvm-{nightly}"));
    let plib = prefix.join("lib");
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(&plib)?;
    let fname = llvm.file_name().context("libLLVM file name")?;
    std::os::unix::fs::symlink(&llvm, plib.join("libLLVM.so"))?;
    std::os::unix::fs::symlink(&llvm, plib.join(fname))?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major})",
        llvm.display()
    );
    // Run from the workspace so its rust-toolchain.toml picks the (pinned, new enough) rustc.
    // bpf-linker's release profile has full debug info (`debug = 2`): skipping it makes the
    // build faster (measured in the demo helper's report) and the binary smaller.
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .env("LLVM_PREFIX", &prefix)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&root))?;
    Ok(root.join("bin"))
}

fn ensure_apt(bins: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = bins
        .iter()
        .filter(|(bin, _)| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {bin}"))
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing apt packages {missing:?}");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Python modules the tests use as independent peers and readers: `moto` (S3-compatible server,
/// `python3 -m moto.server`), `boto3` and `pyarrow` (read the uploaded Parquet objects back).
/// (module to import, pip requirement). Installed only when the import fails.
const PYTHON_MODULES: &[(&str, &str)] = &[
    ("moto.server", "moto[server]"),
    ("boto3", "boto3"),
    ("pyarrow", "pyarrow"),
    // issue 16: report_lake.rs rewrites a flowlens lake with DuckDB.
    ("duckdb", "duckdb"),
    // issue 16: the report's ClickHouse SQL runs in chdb (embedded ClickHouse) in report_lake.rs.
    ("chdb", "chdb"),
    // issue 16: ... and its Spark SQL in pyspark (needs java: openjdk-17-jre-headless above).
    ("pyspark", "pyspark"),
    // deploy/kubernetes/daemonset.yaml is parsed to check the capabilities it grants.
    ("yaml", "pyyaml"),
];

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_python_modules() -> Result<()> {
    ensure_apt(&[("python3", "python3")])?;
    let missing: Vec<&str> = PYTHON_MODULES
        .iter()
        .filter(|(m, _)| !python_has(m))
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !python_has("pip") {
        ensure_apt(&[("pip3", "python3-pip")])?;
    }
    eprintln!("xtask: installing python packages {missing:?}");
    // Debian marks its python as externally managed (PEP 668); these are test tools for root.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing)
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore"))?;
    if let Some((m, _)) = PYTHON_MODULES.iter().find(|(m, _)| !python_has(m)) {
        bail!("python module {m} still missing after pip install");
    }
    Ok(())
}

/// tansu, the Kafka-compatible broker the Kafka sink tests run against (a real peer; Debian has
/// no Kafka broker). `dynostore` gives it the in-memory storage the tests use. Building it takes
/// minutes, so it is installed only when `~/.cargo/bin/tansu` is missing.
pub const TANSU_VERSION: &str = "0.6.0";

fn ensure_tansu() -> Result<()> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let bin = home.join(".cargo/bin/tansu");
    if bin.exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing tansu {TANSU_VERSION} (Kafka broker for the tests; several minutes)"
    );
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "install",
            "tansu",
            "--locked",
            "--features",
            "dynostore",
            "--version",
        ])
        .arg(TANSU_VERSION)
        .arg("--root")
        .arg(home.join(".cargo")))
}

/// Issue 14: librdkafka is built with TLS and SASL (rdkafka feature `ssl`) against the system
/// OpenSSL, so compiling flowlens needs its headers and pkg-config. Checked with pkg-config
/// itself (no binary to look for), installed before the first cargo build of flowlens.
fn ensure_build_libs() -> Result<()> {
    let have = Command::new("pkg-config")
        .args(["--exists", "openssl"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!(
        "xtask: installing apt packages [\"pkg-config\", \"libssl-dev\"] (OpenSSL for librdkafka)"
    );
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "pkg-config",
            "libssl-dev",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What building flowlens needs: the pinned eBPF nightly and bpf-linker (no test peers), and
/// the OpenSSL headers librdkafka compiles against.
pub fn toolchain() -> Result<Env> {
    ensure_build_libs()?;
    let nightly = nightly()?;
    let sysroot = ensure_nightly(&nightly)?;
    let bin = ensure_bpf_linker(&nightly, &sysroot)?;
    let mut path = OsString::from(bin.as_os_str());
    if let Some(p) = std::env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    Ok(Env { path })
}

/// What the demo needs: the toolchain and `ip` (iproute2, for the namespaces). No test peers.
pub fn for_demo() -> Result<Env> {
    ensure_apt(&[("ip", "iproute2")])?;
    toolchain()
}

/// The toolchain plus everything the tests use as real peers and readers.
pub fn setup() -> Result<Env> {
    let env = toolchain()?;
    // util-linux (`unshare`, `mount`) is essential in Debian; listed because the netfilter
    // fallback test hides the kernel's BTF in a private mount namespace with it.
    // chromium: the HTML report test (collector/tests/report.rs) opens the report headless.
    ensure_apt(&[
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("mount", "mount"),
        ("chromium", "chromium"),
        // collector/tests/hardening.rs: flowlens as `nobody` with only the deployment's
        // capabilities (setpriv), and the shipped unit checked by `systemd-analyze verify`.
        ("setpriv", "util-linux"),
        ("systemd-analyze", "systemd"),
        // issue 15: collector/tests/ipfix_e2e.rs reads flowlens' IPFIX with real collectors.
        ("nfcapd", "nfdump"),
        ("nfacctd", "pmacct"),
        ("tshark", "tshark"),
        // Issue 14: sinks/tests/otlp_tls.rs and kafka_tls.rs generate certificates with the
        // openssl CLI; kafka_tls.rs puts stunnel4 (TLS) in front of tansu.
        ("openssl", "openssl"),
        ("stunnel4", "stunnel4"),
        // issue 16: report_lake.rs runs the report's Spark SQL in pyspark (local mode).
        ("java", "openjdk-17-jre-headless"),
        // Issue 12, collector/tests/identity_e2e.rs: workloads and flowlens enter the test's
        // network namespace with nsenter (keeping the cgroup2 mount that `ip netns exec` hides).
        ("nsenter", "util-linux"),
    ])?;
    ensure_python_modules()?;
    ensure_tansu()?;
    Ok(env)
}
