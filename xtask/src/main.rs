//! `cargo xtask <command>` (or `./x <command>`, which first installs the pinned Rust toolchain):
//! everything needed to go from a clean clone to a tested build.
//!
//! * `setup`: installs what is missing: the pinned eBPF nightly (with rust-src), bpf-linker built
//!   against that nightly's own LLVM, Debian packages the tests use (iproute2, chromium), the
//!   Python test peers (moto, boto3, pyarrow from PyPI), and tansu (the Kafka broker the Kafka sink
//!   tests run against).
//! * `build`: nightly + bpf-linker, then the release build of `flowlens`.
//! * `test`: setup + every test, kernel tests included (needs root), then the kernel suites again
//!   in QEMU guests of Debian 12's 6.1 and 6.12 kernels (`qemu.rs`).
//! * `qemu`: run a command, or the guest suites, in such a guest.
//! * `bench`: setup + the benchmarks (docs/BENCHMARKS.md).
//! * `demo`: only what the demo needs (nightly + bpf-linker, iproute2; no test peers), a build in
//!   the `demo` profile, then two hosts in network namespaces, real traffic both ways, the top
//!   flows, an exact check, and the HTML capacity report.

mod demo;
mod qemu;
mod setup;

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

const HELP: &str =
    "usage: cargo xtask <setup|build|test|bench|demo|qemu|help> [-- extra cargo test args]
  setup   install the pinned eBPF nightly, bpf-linker, apt and pip test packages and tansu if missing
  build   install the pinned eBPF nightly and bpf-linker if missing (no test peers), then
          build flowlens (release): target/release/flowlens
  test    setup, then run every test (kernel tests need root), then the kernel suites in
          QEMU guests of Debian's 6.1 and 6.12 kernels
  bench   setup, then run the benchmarks (root): table + target/bench/summary.json
          (`cargo xtask bench report`: only the flowlens report benchmark;
          `cargo xtask bench ipfix`: only the IPFIX sink benchmark,
          `cargo xtask bench otlp-transport`: only OTLP/HTTP vs OTLP/gRPC,
          `cargo xtask bench identity`: only the identity stage, its probe cost and the
          interface → container map,
          `cargo xtask bench k8s`: only the Kubernetes name store (memory, lookup) at 10k
          and 100k pods,
          `cargo xtask bench flood [SECONDS]`: only the random-source flood through a veth
          into `flowlens run --max-memory` (per sink: packets sent/seen/counted, peak RSS,
          records/s, CPU per packet), sink records/s and the flow table's bytes per flow,
          `cargo xtask bench sink-rates`: records/s of each sink alone against a real peer,
          `cargo xtask bench drain` / `rss-child`: drain + records at 100k and 1M flows;
          peak RSS at 100k concurrent flows,
          `cargo xtask bench k8s-names`: each sink encoder with and without the Kubernetes
          name columns, side by side)
  demo    install only what the demo needs (eBPF nightly, bpf-linker, iproute2), build flowlens
          (profile `demo`: target/demo/flowlens), run it on two hosts in network namespaces with
          traffic both ways, show the top flows, check them against what was sent, and write
          the HTML capacity report (flows/report.html)
  qemu    --kernel 6.1|6.12 -- CMD: run CMD in a QEMU guest of Debian's kernel (`qemu --help`)";

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    match cmd {
        "setup" => setup::setup().map(|_| ()),
        "build" => {
            let env = setup::toolchain()?;
            build_release(&env)
        }
        "test" => {
            let env = setup::setup()?;
            test(&env, &rest)
        }
        "bench" => {
            let env = setup::setup()?;
            // The flood bench runs the real binary (found next to the bench's own).
            if rest.first().map(String::as_str) == Some("flood") {
                build_release(&env)?;
            }
            run(cargo(&env)
                .args([
                    "run",
                    "--release",
                    "-p",
                    "flowlens-benches",
                    "--bin",
                    "flowlens-bench",
                    "--",
                ])
                .args(&rest))
        }
        "qemu" => qemu::cli(&setup::toolchain()?, &rest),
        "demo" => {
            let t0 = Instant::now();
            let env = setup::for_demo()?;
            eprintln!("xtask: demo set-up done in {:.0?}", t0.elapsed());
            let t1 = Instant::now();
            let flowlens = build_demo(&env)?;
            eprintln!("xtask: demo build done in {:.0?}", t1.elapsed());
            demo::demo(&flowlens)
        }
        "help" | "-h" | "--help" => {
            println!("{HELP}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{HELP}"),
    }
}

/// Runs a command, failing with its name if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo(env: &setup::Env) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", &env.path);
    // The real probe or a build error, never collector/build.rs's stub.
    c.env("FLOWLENS_BUILD_EBPF", "1");
    c
}

fn build_release(env: &setup::Env) -> Result<()> {
    run(cargo(env).args(["build", "--release", "-p", "flowlens"]))
}

/// Builds `flowlens` in the `demo` profile (Cargo.toml: the release profile without what a
/// first run does not need) and returns the binary.
fn build_demo(env: &setup::Env) -> Result<PathBuf> {
    run(cargo(env).args(["build", "--profile", "demo", "-p", "flowlens"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| setup::workspace_root().join("target"));
    Ok(target.join("demo/flowlens"))
}

/// The test tiers `cargo test` leaves out (root, the real probe, peers installed by setup).
pub const KERNEL_AND_PEER_TESTS: &str = "flowlens/kernel-tests,flowlens/peer-tests,\
    flowlens-sinks/kernel-tests,flowlens-sinks/peer-tests,flowlens-testkit/kernel-tests,\
    flowlens-report/peer-tests";

fn test(env: &setup::Env, extra: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel tests load eBPF programs and create network namespaces: run as root");
    }
    let mut c = cargo(env);
    c.args(["test", "--workspace", "--no-fail-fast"]);
    c.args(["--features", KERNEL_AND_PEER_TESTS]);
    c.args(extra);
    let host = run(&mut c);
    // The kernel test suites again, on Debian 12's 6.1 and 6.12 under QEMU.
    let guests = qemu::run_suites(env, None);
    host.and(guests)
}
