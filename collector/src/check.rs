//! `flowlens check [run options]`: what this kernel and these interfaces support, one line per
//! feature, found by trying each thing the way `flowlens run` would (load the real probe, attach
//! it to each interface in the requested mode and detach it, attach and detach each requested
//! netfilter hook), plus the kernel features the probe relies on ([`crate::kernel_support`]).
//!
//! Each line is `STATUS  FEATURE  WHY`, STATUS being
//! - `ok`: present and used;
//! - `fallback`: `run` works around it (generic XDP instead of native, XDP only instead of
//!   netfilter too, a per-key drain) and logs a warning;
//! - `missing`: absent, but these options do not need it;
//! - `FAIL`: `run` with these options would exit with an error.
//!
//! The exit status is non-zero exactly when a line is `FAIL`. Sinks are not contacted and no
//! file is written: a sink that cannot start still makes `run` fail.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use crate::{
    config::RunConfig,
    ifaces, kernel_support,
    netfilter::btf::{Btf, VMLINUX_BTF},
    privileges,
    probe::{Probe, XDP_NOOP_PROGRAM, XDP_PROGRAM, XdpAttachMode, XdpAttached},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fallback,
    Missing,
    Fail,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fallback => "fallback",
            Status::Missing => "missing",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Line {
    pub status: Status,
    pub feature: String,
    pub why: String,
}

/// Everything `flowlens check` found, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, status: Status, feature: impl Into<String>, why: impl Into<String>) {
        self.lines.push(Line {
            status,
            feature: feature.into(),
            why: why.into(),
        });
    }

    /// Whether `flowlens run` with the same options would fail.
    pub fn would_fail(&self) -> bool {
        self.lines.iter().any(|l| l.status == Status::Fail)
    }

    /// The report as printed: one line per feature, then the verdict.
    pub fn render(&self) -> String {
        let width = self
            .lines
            .iter()
            .map(|l| l.feature.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for l in &self.lines {
            let _ = writeln!(
                out,
                "{:<8}  {:<width$}  {}",
                l.status.word(),
                l.feature,
                l.why
            );
        }
        let fails = self
            .lines
            .iter()
            .filter(|l| l.status == Status::Fail)
            .count();
        if fails == 0 {
            out.push_str("flowlens run with these options would start\n");
        } else {
            let _ = writeln!(
                out,
                "flowlens run with these options would fail ({fails} line(s) marked FAIL)"
            );
        }
        out
    }
}

/// An error on one line: its chain joined, a verifier log reduced to its last line (the reason).
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    match lines.next_back() {
        Some(last) => format!("{first} ... {last}"),
        None => first,
    }
}

/// Runs every check for `cfg` (the options of `flowlens run`).
pub fn check(cfg: &RunConfig) -> Report {
    let mut r = Report::default();
    match kernel_support::uname() {
        Some((release, machine)) => {
            r.push(Status::Ok, "kernel", format!("Linux {release} ({machine})"))
        }
        None => r.push(Status::Missing, "kernel", "uname(2) failed"),
    }

    // Without the capabilities nothing below can be tried.
    match privileges::effective() {
        Ok(eff) => {
            let missing = privileges::missing(eff);
            if missing.is_empty() {
                r.push(
                    Status::Ok,
                    "capabilities",
                    "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are effective (or CAP_SYS_ADMIN stands in)",
                );
            } else {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(n, why)| format!("{n} (to {why})"))
                    .collect();
                r.push(
                    Status::Fail,
                    "capabilities",
                    format!(
                        "missing {}; run as root or grant them (deploy/README.md); nothing else can be checked without them",
                        list.join(", ")
                    ),
                );
                return r;
            }
        }
        Err(e) => {
            r.push(Status::Fail, "capabilities", one_line(&e));
            return r;
        }
    }

    let nf_requested = !cfg.netfilter.is_empty();
    match Btf::from_kernel() {
        Ok(_) => r.push(Status::Ok, "btf", format!("{VMLINUX_BTF} parses")),
        Err(e) => r.push(
            Status::Missing,
            "btf",
            format!("{e} (only the netfilter probe needs it: see the netfilter line)"),
        ),
    }

    match kernel_support::coarse_clock() {
        Ok(()) => r.push(
            Status::Ok,
            "coarse clock",
            "XDP may call bpf_ktime_get_coarse_ns (Linux >= 5.11)",
        ),
        Err(e) => r.push(
            Status::Missing,
            "coarse clock",
            format!(
                "XDP may not call bpf_ktime_get_coarse_ns (Linux >= 5.11): {e}; the xdp program line says whether the probe loads"
            ),
        ),
    }
    match kernel_support::atomic_or() {
        Ok(()) => r.push(
            Status::Ok,
            "atomics",
            "the verifier takes BPF atomic OR (Linux >= 5.12)",
        ),
        Err(e) => r.push(
            Status::Missing,
            "atomics",
            format!(
                "the verifier refuses BPF atomic OR (Linux >= 5.12): {e}; the xdp program line says whether the probe loads"
            ),
        ),
    }
    match kernel_support::batch_drain() {
        Ok(()) => r.push(
            Status::Ok,
            "batch drain",
            "BPF_MAP_LOOKUP_AND_DELETE_BATCH drains an LRU hash map (Linux >= 5.6)",
        ),
        Err(e) => r.push(
            Status::Fallback,
            "batch drain",
            format!("{e}: the flow buffers are drained key by key (slower, still exact)"),
        ),
    }

    let targets = match ifaces::xdp_targets(&cfg.xdp, nf_requested) {
        Ok(t) => t,
        Err(e) => {
            r.push(Status::Fail, "xdp", one_line(&e));
            Vec::new()
        }
    };
    let known: Vec<&String> = targets
        .iter()
        .filter(|i| match ifaces::index_of(i) {
            Ok(_) => true,
            Err(e) => {
                r.push(Status::Fail, format!("xdp {i}"), one_line(&e));
                false
            }
        })
        .collect();

    let nf_offsets = match kernel_support::netfilter_offsets() {
        Ok(o) => {
            r.push(
                Status::Ok,
                "netfilter",
                "netfilter BPF programs and links (Linux >= 6.4, CONFIG_NETFILTER_BPF_LINK), struct offsets from BTF",
            );
            Some(o)
        }
        Err(e) => {
            let config = kernel_support::kernel_config("CONFIG_NETFILTER_BPF_LINK")
                .map(|v| format!(" [kernel config: CONFIG_NETFILTER_BPF_LINK {v}]"))
                .unwrap_or_default();
            let (status, then) = if !nf_requested {
                (Status::Missing, "not requested")
            } else if e.is_unavailable() && !targets.is_empty() {
                (
                    Status::Fallback,
                    "run warns and counts with XDP only (--netfilter is dropped)",
                )
            } else {
                (Status::Fail, "run fails: --netfilter needs it")
            };
            r.push(status, "netfilter", format!("{e}{config}; {then}"));
            None
        }
    };

    let mut probe = match Probe::load_opts(cfg.max_flows, nf_offsets, cfg.precise_timestamps) {
        Ok(p) => p,
        Err(e) => {
            r.push(Status::Fail, "probe maps", one_line(&e));
            return r;
        }
    };

    if !targets.is_empty() {
        // If the flow program is refused, the no-op twin still shows what the interfaces take.
        let variant = probe.variant();
        let program = match probe.xdp_program(XDP_PROGRAM) {
            Ok(_) => {
                r.push(
                    Status::Ok,
                    "xdp program",
                    format!(
                        "{XDP_PROGRAM} passes the verifier (probe variant: {})",
                        variant.describe(cfg.precise_timestamps)
                    ),
                );
                XDP_PROGRAM
            }
            Err(e) => {
                r.push(Status::Fail, "xdp program", one_line(&e));
                XDP_NOOP_PROGRAM
            }
        };
        for iface in known {
            check_interface(&mut r, &mut probe, program, iface, cfg.xdp_mode);
        }
    }

    if nf_requested && probe_has_offsets(&r) {
        for &hook in &cfg.netfilter {
            let feature = format!("netfilter {hook}");
            match probe.attach_netfilter(hook, cfg.netfilter_priority) {
                Ok(()) => {
                    r.push(
                        Status::Ok,
                        feature,
                        format!(
                            "attached and detached (IPv4 and IPv6, priority {})",
                            cfg.netfilter_priority
                        ),
                    );
                }
                Err(e) => r.push(Status::Fail, feature, one_line(&e)),
            }
            probe.detach_netfilter();
        }
    }

    if let Some(addr) = cfg.metrics_listen {
        match crate::metrics::bind(addr) {
            Ok(_) => r.push(Status::Ok, "metrics", format!("{addr} can be bound")),
            Err(e) => r.push(Status::Fail, "metrics", e.to_string()),
        }
    }
    r.push(
        Status::Ok,
        "bpffs",
        "not needed: flowlens pins no program or map",
    );
    r
}

/// Whether the netfilter line found the kernel able to run the probe.
fn probe_has_offsets(r: &Report) -> bool {
    r.lines
        .iter()
        .any(|l| l.feature == "netfilter" && l.status == Status::Ok)
}

/// Attaches `program` to `iface` as `run --xdp-mode mode` would, detaches it, and reports.
fn check_interface(
    r: &mut Report,
    probe: &mut Probe,
    program: &str,
    iface: &str,
    mode: XdpAttachMode,
) {
    let feature = format!("xdp {iface}");
    let attached = probe.attach_xdp_program(program, iface, mode);
    if attached.is_ok()
        && let Err(e) = probe.detach_xdp_program(program, iface)
    {
        r.push(Status::Fail, feature, one_line(&e));
        return;
    }
    let mode_name = format!("--xdp-mode {}", mode_word(mode));
    match attached {
        Ok(XdpAttached::Native) => {
            r.push(
                Status::Ok,
                feature,
                format!("native (driver) mode ({mode_name}); attached and detached"),
            );
        }
        Ok(XdpAttached::Generic) => r.push(
            Status::Ok,
            feature,
            format!("generic (skb) mode ({mode_name}); attached and detached"),
        ),
        Ok(XdpAttached::GenericFallback { native_refused }) => r.push(
            Status::Fallback,
            feature,
            format!(
                "generic (skb) mode: {mode_name} falls back because native mode is refused: {native_refused}"
            ),
        ),
        Err(e) => {
            r.push(Status::Fail, feature, one_line(&e));
            // Native refused: would the other modes work?
            if mode == XdpAttachMode::Native {
                let generic = probe.attach_xdp_program(program, iface, XdpAttachMode::Skb);
                let detached = generic
                    .as_ref()
                    .ok()
                    .map(|_| probe.detach_xdp_program(program, iface));
                match (generic, detached) {
                    (Ok(_), Some(Ok(()))) => r.push(
                        Status::Ok,
                        format!("xdp {iface} generic"),
                        "generic (skb) mode attaches: --xdp-mode auto or skb would run",
                    ),
                    (Err(e), _) | (_, Some(Err(e))) => r.push(
                        Status::Missing,
                        format!("xdp {iface} generic"),
                        one_line(&e),
                    ),
                    (Ok(_), None) => {}
                }
            }
        }
    }
}

fn mode_word(mode: XdpAttachMode) -> &'static str {
    match mode {
        XdpAttachMode::Auto => "auto",
        XdpAttachMode::Native => "native",
        XdpAttachMode::Skb => "skb",
    }
}

/// `flowlens check`: prints the report; an error (exit status 1) if `run` would fail.
pub fn run(cfg: &RunConfig) -> Result<()> {
    let report = check(cfg);
    print!("{}", report.render());
    if let Some(l) = report.lines.iter().find(|l| l.status == Status::Fail) {
        bail!(
            "flowlens run with these options would fail: {}: {}",
            l.feature,
            l.why
        );
    }
    Ok(())
}
