//! Builds the eBPF probe (probe-ebpf) with the pinned nightly and embeds it into the collector.
//! The nightly name is shared with xtask through `../probe-ebpf/NIGHTLY`.
//!
//! Like aya's own build switch, the probe is only built where it can be:
//!
//! * `FLOWLENS_BUILD_EBPF=1` (set by `cargo xtask build|test|bench|demo`) or the `kernel-tests`
//!   feature: the probe must be built; a missing nightly, `rust-src` or `bpf-linker` is a build
//!   error.
//! * `FLOWLENS_BUILD_EBPF=0`: never built; a stub is embedded.
//! * unset: built when the pinned nightly (with `rust-src`) and `bpf-linker` are installed, else a
//!   stub is embedded and cargo prints a warning. The stub is a short text, not an ELF object: a
//!   binary built with it runs `report`, `top` and `--help`, and refuses to load the probe with
//!   one error line (`collector/src/probe.rs`). This is what lets `cargo test` run without root or
//!   the nightly (the hermetic tier; the kernel tier is the `kernel-tests` feature).
//!
//! The probe is compiled only from `probe-ebpf/` and `abi/` (crate `flowlens-abi`), so only those
//! are watched: editing the record (`schema/`) or any user-space code never rebuilds it.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context, bail};

/// Build switch: `1` = must build the probe, `0` = embed the stub, unset = build if possible.
const SWITCH: &str = "FLOWLENS_BUILD_EBPF";
/// First bytes of the stub object; `probe.rs` prints the rest of the stub in its error.
const STUB_PREFIX: &str = "flowlens-probe stub:";

fn main() -> anyhow::Result<()> {
    let nightly = fs::read_to_string("../probe-ebpf/NIGHTLY")?;
    let nightly = nightly.trim();
    println!("cargo::rerun-if-changed=../probe-ebpf/NIGHTLY");
    println!("cargo::rerun-if-changed=../probe-ebpf");
    println!("cargo::rerun-if-changed=../abi/src");
    println!("cargo::rerun-if-changed=../abi/Cargo.toml");
    println!("cargo::rerun-if-env-changed={SWITCH}");
    // Where bpf-linker and rustup are found: a PATH with or without them switches the stub.
    println!("cargo::rerun-if-env-changed=PATH");

    let kernel_tests = env::var_os("CARGO_FEATURE_KERNEL_TESTS").is_some();
    let switch = env::var(SWITCH).ok();
    let required = match switch.as_deref() {
        Some("1") => true,
        Some("0") if kernel_tests => {
            bail!("{SWITCH}=0 with feature kernel-tests: the kernel tests need the real probe")
        }
        Some("0") => false,
        None | Some("") => kernel_tests,
        Some(other) => bail!("{SWITCH} must be 1 (build the probe) or 0 (stub), not {other:?}"),
    };
    let missing = if switch.as_deref() == Some("0") {
        Some(format!("{SWITCH}=0"))
    } else {
        missing_toolchain(nightly)
    };
    match missing {
        None => aya_build::build_ebpf(
            [aya_build::Package {
                name: "flowlens-probe",
                root_dir: "../probe-ebpf",
                ..Default::default()
            }],
            aya_build::Toolchain::Custom(nightly),
        ),
        Some(why) if required => bail!(
            "cannot build the eBPF probe: {why}; `cargo xtask setup` installs the pinned nightly \
             and bpf-linker"
        ),
        Some(why) => {
            let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
            let stub = out.join("flowlens-probe");
            fs::write(&stub, format!("{STUB_PREFIX} {why}\n"))
                .with_context(|| format!("writing {}", stub.display()))?;
            println!(
                "cargo::warning=eBPF probe not built ({why}): this flowlens binary cannot attach \
                 probes (tests without root still run). Build the real one with \
                 `cargo xtask build` or {SWITCH}=1"
            );
            Ok(())
        }
    }
}

/// Why the probe cannot be built here, or `None` when the pinned nightly with `rust-src` and
/// `bpf-linker` are installed. Never installs anything (`rustup toolchain list`, not `rustup run`,
/// decides whether the nightly is there, so rustup's auto-install is not triggered).
fn missing_toolchain(nightly: &str) -> Option<String> {
    let path = env::var_os("PATH").unwrap_or_default();
    if !env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
        return Some("bpf-linker not found on PATH".into());
    }
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    let listed = match listed {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return Some(format!("`rustup toolchain list` failed: {}", o.status)),
        Err(e) => return Some(format!("rustup not found ({e})")),
    };
    if !listed.lines().any(|l| l.starts_with(nightly)) {
        return Some(format!("toolchain {nightly} is not installed"));
    }
    let sysroot = Command::new("rustup")
        .args(["run", nightly, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    let sysroot = match sysroot {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => return Some(format!("`rustup run {nightly} rustc` failed")),
    };
    let core = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        return Some(format!("{nightly} has no rust-src component"));
    }
    None
}
