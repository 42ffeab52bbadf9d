//! What the running kernel offers flowlens, found out by trying each thing rather than by reading
//! version numbers (distributions backport features, and a build may leave them out).
//!
//! `flowlens check` reports all of it; `flowlens run` uses [`netfilter_offsets`] (netfilter
//! hooks, or XDP only) and [`native_xdp_refusal`] (auto mode's fallback to generic XDP).
//!
//! The minimum kernel per feature is tabled in README.md ("Kernels").

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_map_type, bpf_prog_type};
use flowlens_schema::NfOffsets;

use crate::{
    netfilter::{self, NetfilterError, btf::Btf},
    sys::{self, BatchError},
};

/// The running kernel's release (`uname -r`), or `unknown`.
pub fn kernel_release() -> String {
    uname().map_or_else(|| "unknown".into(), |(release, _)| release)
}

/// `(release, machine)` of `uname(2)`.
pub fn uname() -> Option<(String, String)> {
    // SAFETY: utsname is plain C data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((field(&u.release), field(&u.machine)))
}

// ---------------------------------------------------------------------------------------------
// Netfilter hooks

/// Why the netfilter probe cannot run here, with the kernel release named.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterSupportError {
    /// The kernel cannot run the netfilter probe at all (no program type or links, or no BTF for
    /// the struct offsets): with XDP also requested, flowlens warns and runs XDP only.
    #[error("{}", unavailable_text(.release, .cause))]
    Unavailable {
        release: String,
        /// Not a `#[source]`: the message already carries its text (one line, no repeats).
        cause: NetfilterError,
    },
    /// Anything else (an I/O error, say): not a property of the kernel, so no fallback.
    #[error(transparent)]
    Other(NetfilterError),
}

impl NetfilterSupportError {
    /// Whether `flowlens run` falls back to XDP only (when XDP interfaces are given).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, NetfilterSupportError::Unavailable { .. })
    }
}

fn unavailable_text(release: &str, e: &NetfilterError) -> String {
    match e {
        NetfilterError::Unsupported(errno) => format!(
            "Linux {release} has no netfilter BPF programs and links (they need Linux >= 6.4 built with CONFIG_NETFILTER_BPF_LINK; loading one returned: {errno})"
        ),
        NetfilterError::Btf(b) => format!(
            "Linux {release} has no usable kernel BTF, which the netfilter probe needs for kernel struct offsets (CONFIG_DEBUG_INFO_BTF): {b}"
        ),
        other => format!("Linux {release}: {other}"),
    }
}

/// Errors that mean "this kernel cannot run the netfilter probe at all" (as opposed to a hook
/// that fails to attach, or a program the verifier rejects).
fn netfilter_unavailable(e: &NetfilterError) -> bool {
    matches!(e, NetfilterError::Unsupported(_) | NetfilterError::Btf(_))
}

/// Checks that this kernel runs netfilter programs (loads a trivial one) and reads the kernel
/// struct offsets the probe needs from its BTF.
pub fn netfilter_offsets() -> Result<NfOffsets, NetfilterSupportError> {
    let classify = |e: NetfilterError| {
        if netfilter_unavailable(&e) {
            NetfilterSupportError::Unavailable {
                release: kernel_release(),
                cause: e,
            }
        } else {
            NetfilterSupportError::Other(e)
        }
    };
    netfilter::probe_support().map_err(classify)?;
    let btf = Btf::from_kernel().map_err(|e| classify(e.into()))?;
    netfilter::nf_offsets(&btf).map_err(|e| classify(e.into()))
}

// ---------------------------------------------------------------------------------------------
// XDP

/// Errors of a native (driver-mode) XDP attach that generic mode does not have, and what each
/// means. Drivers use these when native XDP is missing or refused in their current
/// configuration: EOPNOTSUPP (no native XDP, e.g. virtio_net with guest offloads on, or a driver
/// without `ndo_bpf`), ERANGE (veth: MTU too large), EINVAL (virtio_net, ena, mlx5, ixgbe, i40e:
/// MTU or frame size too large), ENOSPC (veth: fewer rx than the peer's tx queues), ENOMEM
/// (no spare queues for XDP transmit), ENOTCONN (veth without a peer).
/// EBUSY and EEXIST (another program is attached) and EPERM are not here: generic mode would
/// fail the same way.
pub const NATIVE_ONLY_ERRNOS: [(i32, &str); 7] = [
    (
        libc::EOPNOTSUPP,
        "the driver has no native XDP (in this configuration)",
    ),
    (
        libc::ERANGE,
        "the MTU is too large for the driver's native XDP",
    ),
    (
        libc::EINVAL,
        "the driver refused native XDP in its current configuration (often: MTU too large)",
    ),
    (libc::ENOSPC, "too few driver queues for native XDP"),
    (
        libc::ENOMEM,
        "the driver could not set up native XDP (queues)",
    ),
    (
        libc::ENOTCONN,
        "the device is not connected (veth without a peer)",
    ),
    (524, "the driver has no native XDP (ENOTSUPP)"),
];

/// The OS error in an error chain (aya wraps it in a syscall or netlink error).
pub fn os_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error().is_some()
        {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// If a native attach to `iface` failed with `e` for a reason generic mode does not have: that
/// reason, in words, with the interface's MTU where it matters and the kernel's error.
pub fn native_xdp_refusal(iface: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let io = os_error(e)?;
    let errno = io.raw_os_error()?;
    let (_, why) = NATIVE_ONLY_ERRNOS.iter().find(|(n, _)| *n == errno)?;
    let why = match (errno, interface_mtu(iface)) {
        (libc::ERANGE, Some(mtu)) => {
            format!("the MTU ({mtu}) is too large for the driver's native XDP")
        }
        (libc::EINVAL, Some(mtu)) => format!("{why}; MTU {mtu}"),
        _ => why.to_string(),
    };
    Some(format!("{why}: {io}"))
}

/// The MTU of `iface` (from /sys/class/net, which `ip netns exec` mounts for the namespace).
pub fn interface_mtu(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Instruction-level probes: tiny programs the verifier accepts only if the kernel has the
// helper or instruction.

/// BPF_FUNC_ktime_get_coarse_ns.
const HELPER_KTIME_GET_COARSE_NS: i32 = 160;
const XDP_PASS: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    bpf_insn {
        code,
        _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
        off,
        imm,
    }
}

/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov64_imm(dst: u8, imm: i32) -> bpf_insn {
    insn(0xb7, dst, 0, 0, imm)
}

/// `exit`.
fn exit() -> bpf_insn {
    insn(0x95, 0, 0, 0, 0)
}

/// Loads `insns` as an XDP program (and closes it again).
fn load_xdp(name: &str, insns: &[bpf_insn]) -> io::Result<OwnedFd> {
    netfilter::sys::prog_load(
        &netfilter::sys::ProgLoad {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_XDP as u32,
            expected_attach_type: bpf_attach_type::BPF_XDP as u32,
            insns,
            license: b"GPL\0",
            name,
        },
        &mut [],
        0,
    )
}

/// Whether XDP programs may call `bpf_ktime_get_coarse_ns` (Linux >= 5.11).
pub fn coarse_clock() -> io::Result<()> {
    let insns = [
        insn(0x85, 0, 0, 0, HELPER_KTIME_GET_COARSE_NS), // call bpf_ktime_get_coarse_ns
        mov64_imm(0, XDP_PASS),
        exit(),
    ];
    load_xdp("fl_coarse_clock", &insns).map(drop)
}

/// Whether the verifier accepts a BPF atomic OR (`BPF_ATOMIC` with `BPF_OR`, Linux >= 5.12);
/// atomic add without fetch (the old `XADD`) is older than anything flowlens runs on.
pub fn atomic_or() -> io::Result<()> {
    const BPF_OR: i32 = 0x40;
    let insns = [
        insn(0x7a, 10, 0, -8, 0),      // *(u64 *)(r10 - 8) = 0
        mov64_imm(1, 1),               // r1 = 1
        insn(0xdb, 10, 1, -8, BPF_OR), // lock *(u64 *)(r10 - 8) |= r1
        mov64_imm(0, XDP_PASS),
        exit(),
    ];
    load_xdp("fl_atomic_or", &insns).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Batch map operations

/// `BPF_MAP_CREATE` of a small LRU hash with 8-byte keys and values.
fn lru_hash_create() -> io::Result<OwnedFd> {
    let mut attr = sys::zeroed_attr();
    // SAFETY: writing the BPF_MAP_CREATE member of the zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
    u.key_size = 8;
    u.value_size = 8;
    u.max_entries = 64;
    sys::bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(sys::owned)
}

fn map_update(map: &OwnedFd, key: u64, value: u64) -> io::Result<()> {
    let mut attr = sys::zeroed_attr();
    // SAFETY: writing the element member of the zeroed union; key and value point to live u64s,
    // the sizes the map was created with (flags 0 = BPF_ANY).
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.as_raw_fd() as u32;
    u.key = &key as *const u64 as u64;
    u.__bindgen_anon_1.value = &value as *const u64 as u64;
    sys::bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Whether `BPF_MAP_LOOKUP_AND_DELETE_BATCH` drains an LRU hash map (the flow buffers' type):
/// three entries go in, the batch drain must hand back exactly those and leave the map empty.
pub fn batch_drain() -> Result<(), BatchError> {
    let failed = BatchError::Failed;
    let map = lru_hash_create().map_err(failed)?;
    let want = [(1u64, 10u64), (2, 20), (3, 30)];
    for (k, v) in want {
        map_update(&map, k, v).map_err(failed)?;
    }
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut got = Vec::new();
    sys::lookup_and_delete_batch(
        map.as_fd(),
        &mut keys,
        &mut values,
        (0u64, 0u64),
        2,
        |k, v| got.push((*k, *v)),
    )?;
    got.sort_unstable();
    let mut left = Vec::new();
    sys::lookup_and_delete_batch(
        map.as_fd(),
        &mut keys,
        &mut values,
        (0u64, 0u64),
        8,
        |k, v| left.push((*k, *v)),
    )?;
    if got != want || !left.is_empty() {
        return Err(BatchError::Failed(io::Error::other(format!(
            "drained {got:?} then {left:?}, expected {want:?} then nothing"
        ))));
    }
    Ok(())
}

/// The kernel's build option `name` (e.g. `CONFIG_NETFILTER_BPF_LINK`) as set in
/// `/boot/config-RELEASE`: `Some("y")`, `Some("m")`, `Some("not set")`; `None` if that file is
/// not there (it is informational only: features are probed, not looked up).
pub fn kernel_config(name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/boot/config-{}", kernel_release())).ok()?;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
        if line == format!("# {name} is not set") {
            return Some("not set".into());
        }
    }
    Some("not set".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CI is root). The host kernel (6.18) has all of these.
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn this_kernel_has_the_probes_features() {
        coarse_clock().unwrap();
        atomic_or().unwrap();
        batch_drain().unwrap();
        netfilter_offsets().unwrap();
    }

    /// The probes can fail: an unknown helper and an unknown atomic operation are refused.
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn instruction_probes_can_fail() {
        let bad_helper = [insn(0x85, 0, 0, 0, 100_000), mov64_imm(0, XDP_PASS), exit()];
        assert!(load_xdp("fl_bad_helper", &bad_helper).is_err());
        let bad_atomic = [
            insn(0x7a, 10, 0, -8, 0),
            mov64_imm(1, 1),
            insn(0xdb, 10, 1, -8, 0x70), // no such atomic operation
            mov64_imm(0, XDP_PASS),
            exit(),
        ];
        let e = load_xdp("fl_bad_atomic", &bad_atomic).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }

    #[test]
    fn native_refusals_name_the_reason() {
        let e = io::Error::from_raw_os_error(libc::ERANGE);
        let r = native_xdp_refusal("lo", &e).unwrap();
        assert!(
            r.starts_with("the MTU (65536) is too large for the driver's native XDP: ")
                && r.contains("os error 34"),
            "{r}"
        );
        let r = native_xdp_refusal("lo", &io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        assert!(r.unwrap().contains("no native XDP"));
        // Another program attached, or no permission: generic mode would fail too.
        for errno in [libc::EBUSY, libc::EEXIST, libc::EPERM] {
            assert_eq!(
                native_xdp_refusal("lo", &io::Error::from_raw_os_error(errno)),
                None
            );
        }
        // Found under a wrapper, as aya returns it.
        let wrapped =
            anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC)).context("attaching");
        assert!(native_xdp_refusal("lo", wrapped.as_ref()).is_some());
    }

    /// Only "the kernel cannot do it at all" falls back to XDP; a hook that fails to attach or a
    /// rejected program stays an error. The message names the kernel release.
    #[test]
    fn netfilter_fallback_is_only_for_missing_kernel_support() {
        let errno = |n| io::Error::from_raw_os_error(n);
        assert!(netfilter_unavailable(&NetfilterError::Unsupported(errno(
            libc::EINVAL
        ))));
        assert!(netfilter_unavailable(&NetfilterError::Btf(
            netfilter::btf::BtfError::NoStruct("bpf_nf_ctx".into())
        )));
        let attach = NetfilterError::Attach {
            program: "flowlens_nf".into(),
            hook: netfilter::Hook::Forward,
            family: netfilter::Family::Ipv6,
            priority: -450,
            source: errno(libc::EBUSY),
        };
        assert!(!netfilter_unavailable(&attach));
        assert!(!netfilter_unavailable(&NetfilterError::Load {
            program: "flowlens_nf".into(),
            source: errno(libc::EACCES),
            log: "R1 invalid mem access".into(),
        }));
        let e = NetfilterSupportError::Unavailable {
            release: "6.1.0-50-amd64".into(),
            cause: NetfilterError::Unsupported(errno(libc::EINVAL)),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("Linux 6.1.0-50-amd64 has no netfilter BPF programs and links")
                && msg.contains("Linux >= 6.4")
                && msg.contains("CONFIG_NETFILTER_BPF_LINK"),
            "{msg}"
        );
        assert!(kernel_release().chars().next().unwrap().is_ascii_digit());
    }
}
