//! Capabilities `flowlens run` needs, checked before anything is loaded so that a missing one is
//! a one-line error naming it instead of a verifier log.
//!
//! | capability | why |
//! |---|---|
//! | `CAP_BPF` | create maps, load programs, batch map operations |
//! | `CAP_PERFMON` | the verifier allows the parser's variable-offset packet pointer arithmetic and the netfilter program's kernel struct reads only with it ("pointer arithmetic ... prohibited for !root") |
//! | `CAP_NET_ADMIN` | attach XDP to an interface, create netfilter BPF links |
//!
//! `CAP_SYS_ADMIN` implies `CAP_BPF` and `CAP_PERFMON` for the kernel's BPF checks, so root (or a
//! process holding it) passes. Nothing else is needed on kernels ≥ 5.11 (BPF memory is charged to
//! the cgroup, not RLIMIT_MEMLOCK; hence no `CAP_SYS_RESOURCE`). deploy/README.md has the same
//! table and the unit/manifest settings that grant exactly these.

use anyhow::{Result, bail};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The capabilities `flowlens run` needs, with the reason shown when one is missing.
pub const REQUIRED: [(u32, &str, &str); 3] = [
    (CAP_BPF, "CAP_BPF", "load the eBPF probe"),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "let the verifier accept the probe's packet parsing",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "attach XDP and netfilter hooks",
    ),
];

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/self/status for capabilities: {e}"))?;
    parse_cap_eff(&status).ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the required capabilities missing from `eff`, with what each is for.
pub fn missing(eff: u64) -> Vec<(&'static str, &'static str)> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    REQUIRED
        .iter()
        .filter(|(cap, _, _)| {
            // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON in the kernel's checks
            // (bpf_capable(), perfmon_capable()), not for CAP_NET_ADMIN.
            !(has(*cap) || (*cap != CAP_NET_ADMIN && has(CAP_SYS_ADMIN)))
        })
        .map(|(_, name, why)| (*name, *why))
        .collect()
}

/// Fails with one line naming every missing capability.
pub fn check() -> Result<()> {
    let m = missing(effective()?);
    if m.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = m.iter().map(|(n, why)| format!("{n} (to {why})")).collect();
    bail!(
        "missing capabilities: {}; run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; see deploy/README.md",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let bit = |c: u32| 1u64 << c;
        assert!(missing(bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_NET_ADMIN)).is_empty());
        // CAP_SYS_ADMIN covers BPF and PERFMON but not NET_ADMIN.
        assert!(missing(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN)).is_empty());
        let m: Vec<_> = missing(bit(CAP_SYS_ADMIN)).iter().map(|m| m.0).collect();
        assert_eq!(m, ["CAP_NET_ADMIN"]);
        let m: Vec<_> = missing(bit(CAP_BPF) | bit(CAP_NET_ADMIN))
            .iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(m, ["CAP_PERFMON"]);
        assert_eq!(missing(0).len(), 3);
    }
}
