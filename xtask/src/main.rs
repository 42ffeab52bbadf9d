//! `cargo xtask <command>`: everything needed to go from a clean clone to a tested build.
//!
//! * `setup`: installs what is missing: the pinned eBPF nightly (with rust-src), bpf-linker built
//!   against that nightly's own LLVM, Debian packages the tests use (iproute2, chromium), the
//!   Python test peers (moto, boto3, pyarrow from PyPI), and tansu (the Kafka broker the Kafka sink
//!   tests run against).
//! * `build`: setup + release build of `flowlens`.
//! * `test`: setup + every test, kernel tests included (needs root).
//! * `bench`: setup + the benchmarks (docs/BENCHMARKS.md).
//! * `demo`: setup + build, then two hosts in network namespaces, real traffic, the top flows.

mod demo;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

const HELP: &str =
    "usage: cargo xtask <setup|build|test|bench|demo|help> [-- extra cargo test args]
  setup   install the pinned eBPF nightly, bpf-linker, apt and pip test packages and tansu if missing
  build   install the pinned eBPF nightly and bpf-linker if missing (no test peers), then
          build flowlens (release): target/release/flowlens
  test    setup, then run every test (kernel tests need root)
  bench   setup, then run the benchmarks (root): table + target/bench/summary.json
          (`cargo xtask bench report`: only the flowlens report benchmark)
  demo    setup, build, run flowlens between two network namespaces and show the top flows";

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
        "demo" => {
            let env = setup::setup()?;
            build_release(&env)?;
            demo::demo()
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

/// The test tiers `cargo test` leaves out (root, the real probe, peers installed by setup).
const KERNEL_AND_PEER_TESTS: &str = "flowlens/kernel-tests,flowlens/peer-tests,\
    flowlens-sinks/kernel-tests,flowlens-sinks/peer-tests,flowlens-testkit/kernel-tests";

fn test(env: &setup::Env, extra: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel tests load eBPF programs and create network namespaces: run as root");
    }
    let mut c = cargo(env);
    c.args(["test", "--workspace", "--no-fail-fast"]);
    c.args(["--features", KERNEL_AND_PEER_TESTS]);
    c.args(extra);
    run(&mut c)
}
