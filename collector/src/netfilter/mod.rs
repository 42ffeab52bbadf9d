//! A loader for netfilter-hook BPF programs (`BPF_PROG_TYPE_NETFILTER`, Linux >= 6.4).
//!
//! aya 0.16 has no program type for these and aya-obj rejects a `netfilter` ELF section, so this
//! module does the three steps itself, using the public pieces aya-obj offers:
//!
//! 1. **Instructions**: the object is parsed with `aya_obj::Object::parse`; every program but
//!    the wanted one is dropped, its map references are relocated to map fds the caller passes
//!    **by name** (flowlens passes the maps aya already created for the XDP programs of the
//!    same object, so both program kinds write one set of maps), and bpf-to-bpf calls are
//!    linked (`relocate_calls`).
//! 2. **Load**: `BPF_PROG_LOAD` with `prog_type = BPF_PROG_TYPE_NETFILTER` (32) and
//!    `expected_attach_type = BPF_NETFILTER` (45); on failure the load is repeated with a
//!    verifier log, which the error carries.
//! 3. **Attach**: one `BPF_LINK_CREATE` per (hook, family). A [`NetfilterLink`] owns its link
//!    fd: dropping it closes the fd, which detaches the hook (the kernel holds no other
//!    reference to an unpinned link).
//!
//! Kernel struct offsets the program needs come from [`btf`] (no CO-RE in Rust eBPF); the
//! `bpf(2)` calls and all `unsafe` are in `sys`. Nothing here is flowlens-specific but the
//! [`nf_offsets`] helper, so the module could become aya's `programs::Netfilter`.

pub mod btf;
pub(crate) mod sys;

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fmt, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    str::FromStr,
};

use aya_obj::generated::{bpf_attach_type, bpf_insn, bpf_prog_type};
use flowlens_schema::{NFPROTO_IPV4, NFPROTO_IPV6, NfOffsets};

use self::btf::{Btf, BtfError};

/// An inet netfilter hook (`NF_INET_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    PreRouting,
    LocalIn,
    Forward,
    LocalOut,
    PostRouting,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::PreRouting,
        Hook::LocalIn,
        Hook::Forward,
        Hook::LocalOut,
        Hook::PostRouting,
    ];

    /// The kernel's hook number.
    pub const fn hooknum(self) -> u32 {
        self as u32
    }

    /// The name used on the command line and in errors (`pre_routing`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Hook::PreRouting => "pre_routing",
            Hook::LocalIn => "local_in",
            Hook::Forward => "forward",
            Hook::LocalOut => "local_out",
            Hook::PostRouting => "post_routing",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown hook name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown netfilter hook {0:?}: expected a comma list of pre_routing, local_in, forward, local_out, post_routing"
)]
pub struct UnknownHook(pub String);

impl FromStr for Hook {
    type Err = UnknownHook;
    fn from_str(s: &str) -> Result<Self, UnknownHook> {
        Hook::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| UnknownHook(s.to_string()))
    }
}

/// The protocol family a link is attached for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// `NFPROTO_*`.
    pub const fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => NFPROTO_IPV4,
            Family::Ipv6 => NFPROTO_IPV6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// Priorities the kernel reserves (`NF_IP_PRI_FIRST`, `NF_IP_PRI_LAST`): a BPF link may not use
/// them.
pub const RESERVED_PRIORITIES: [i32; 2] = [i32::MIN, i32::MAX];

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error(
        "this kernel cannot load netfilter BPF programs (BPF_PROG_TYPE_NETFILTER needs Linux >= 6.4 built with CONFIG_NETFILTER_BPF_LINK): {0}"
    )]
    Unsupported(#[source] io::Error),
    #[error("reading kernel struct offsets from BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("parsing the probe object: {0}")]
    Parse(#[source] Box<aya_obj::ParseError>),
    #[error("program {0} not found in the probe object")]
    NoProgram(String),
    #[error(
        "relocating {program}: {source} (maps given: {given}; maps in the object not given: {missing})"
    )]
    Relocate {
        program: String,
        given: String,
        missing: String,
        #[source]
        source: Box<aya_obj::relocation::EbpfRelocationError>,
    },
    #[error("loading {program} (BPF_PROG_LOAD): {source}; verifier log:\n{log}")]
    Load {
        program: String,
        #[source]
        source: io::Error,
        log: String,
    },
    #[error(
        "attaching {program} to netfilter hook {hook} ({family}, priority {priority}): {source}"
    )]
    Attach {
        program: String,
        hook: Hook,
        family: Family,
        priority: i32,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The offsets `flowlens_nf` reads, from the running kernel's BTF, each checked for the size the
/// program reads it with; also checks the two context offsets the program has compiled in.
pub fn nf_offsets(btf: &Btf) -> Result<NfOffsets, BtfError> {
    let ctx_state = btf.member_sized("bpf_nf_ctx", "state", 8)?;
    let ctx_skb = btf.member_sized("bpf_nf_ctx", "skb", 8)?;
    if (ctx_state, ctx_skb) != (0, 8) {
        return Err(BtfError::BadMember {
            st: "bpf_nf_ctx".into(),
            member: "state/skb".into(),
            what: format!(
                "at {ctx_state}/{ctx_skb}; the probe is built for 0/8 (rebuild it for this kernel)"
            ),
        });
    }
    Ok(NfOffsets {
        skb_len: btf.member_sized("sk_buff", "len", 4)?,
        skb_data_len: btf.member_sized("sk_buff", "data_len", 4)?,
        skb_data: btf.member_sized("sk_buff", "data", 8)?,
        state_hook: btf.member_sized("nf_hook_state", "hook", 1)?,
        state_pf: btf.member_sized("nf_hook_state", "pf", 1)?,
        state_in: btf.member_sized("nf_hook_state", "in", 8)?,
        state_out: btf.member_sized("nf_hook_state", "out", 8)?,
        dev_ifindex: btf.member_sized("net_device", "ifindex", 4)?,
        skb_sk: btf.member_sized("sk_buff", "sk", 8)?,
        sk_state: btf.member("sock", "__sk_common")?.offset
            + btf.member_sized("sock_common", "skc_state", 1)?,
        sk_cgroup: btf.member("sock", "sk_cgrp_data")?.offset
            + btf.member_sized("sock_cgroup_data", "cgroup", 8)?,
        cgroup_kn: btf.member_sized("cgroup", "kn", 8)?,
        kn_id: btf.member_sized("kernfs_node", "id", 8)?,
        socket_identity: 1,
    })
}

/// Verifier log buffer for a failed load (the kernel truncates longer logs).
const LOG_SIZE: usize = 4 << 20;
/// Bytes of the verifier log kept in an error (its end says why).
const LOG_TAIL: usize = 4096;

fn load_insns(name: &str, insns: &[bpf_insn], license: &[u8]) -> Result<OwnedFd, NetfilterError> {
    let p = sys::ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32,
        expected_attach_type: bpf_attach_type::BPF_NETFILTER as u32,
        insns,
        license,
        name,
    };
    match sys::prog_load(&p, &mut [], 0) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, which says why. The first errno is the reason
            // reported (the second load can only add ENOSPC for a log that did not fit).
            let mut log = vec![0u8; LOG_SIZE];
            if let Ok(fd) = sys::prog_load(&p, &mut log, 1) {
                return Ok(fd);
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail = text
                .char_indices()
                .rev()
                .nth(LOG_TAIL)
                .map_or(&text[..], |(i, _)| &text[i..]);
            Err(NetfilterError::Load {
                program: name.to_string(),
                source: first,
                log: tail.trim_end().to_string(),
            })
        }
    }
}

/// Whether this kernel loads netfilter programs: loads `return NF_ACCEPT` and closes it.
/// `Err(NetfilterError::Unsupported)` when the kernel does not know the program type.
pub fn probe_support() -> Result<(), NetfilterError> {
    // r0 = 1; exit
    let insns = [
        bpf_insn {
            code: 0xb7,
            _bitfield_1: Default::default(),
            off: 0,
            imm: 1,
        },
        bpf_insn {
            code: 0x95,
            _bitfield_1: Default::default(),
            off: 0,
            imm: 0,
        },
    ];
    match load_insns("flowlens_probe", &insns, b"GPL\0") {
        Ok(_fd) => Ok(()),
        Err(NetfilterError::Load { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
        {
            Err(NetfilterError::Unsupported(source))
        }
        Err(e) => Err(e),
    }
}

/// A loaded netfilter program. Dropping it closes the program fd (links keep the program alive
/// until they are dropped too).
#[derive(Debug)]
pub struct NetfilterProgram {
    name: String,
    fd: OwnedFd,
}

impl NetfilterProgram {
    /// Loads program `name` of the ELF `object` as a netfilter program. Every map the program
    /// references is resolved by name in `maps` (name, fd), so the program shares maps with
    /// whoever created them; no map is created here.
    pub fn load<'a>(
        object: &[u8],
        name: &str,
        maps: impl IntoIterator<Item = (&'a str, BorrowedFd<'a>)>,
    ) -> Result<NetfilterProgram, NetfilterError> {
        let mut obj =
            aya_obj::Object::parse(object).map_err(|e| NetfilterError::Parse(Box::new(e)))?;
        let prog = obj
            .programs
            .remove(name)
            .ok_or_else(|| NetfilterError::NoProgram(name.to_string()))?;
        // Every section holding code; calls and data references into them are not maps.
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        // Keep only this program and the shared code (.text): other programs' references
        // are not ours to resolve.
        let other_programs: HashSet<usize> =
            obj.programs.values().map(|p| p.section_index).collect();
        obj.programs.clear();
        let key = prog.function_key();
        obj.functions
            .retain(|k, _| k.0 == key.0 || !other_programs.contains(&k.0));
        obj.programs.insert(name.to_string(), prog.clone());

        let given: HashMap<&str, BorrowedFd<'a>> = maps.into_iter().collect();
        let obj_maps = std::mem::take(&mut obj.maps);
        let mut missing: Vec<&str> = obj_maps
            .keys()
            .map(String::as_str)
            .filter(|m| !given.contains_key(m))
            .collect();
        missing.sort_unstable();
        let mut given_names: Vec<&str> = given.keys().copied().collect();
        given_names.sort_unstable();
        let relocate_err = |source| NetfilterError::Relocate {
            source: Box::new(source),
            program: name.to_string(),
            given: given_names.join(", "),
            missing: if missing.is_empty() {
                "none".into()
            } else {
                missing.join(", ")
            },
        };
        let resolved = obj_maps.iter().filter_map(|(n, m)| {
            given
                .get(n.as_str())
                .map(|fd| (n.as_str(), fd.as_raw_fd(), m))
        });
        obj.relocate_maps(resolved, &text_sections)
            .map_err(relocate_err)?;
        obj.relocate_calls(&text_sections).map_err(relocate_err)?;
        let insns = &obj
            .functions
            .get(&key)
            .ok_or_else(|| NetfilterError::NoProgram(name.to_string()))?
            .instructions;
        let license = CString::as_bytes_with_nul(&prog.license);
        let fd = load_insns(name, insns, license)?;
        Ok(NetfilterProgram {
            name: name.to_string(),
            fd,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's id of the program.
    pub fn id(&self) -> Result<u32, NetfilterError> {
        sys::prog_id(self.fd.as_raw_fd()).map_err(|source| NetfilterError::Io {
            what: "reading the program id",
            source,
        })
    }

    /// Attaches to `hook` for `family` at `priority` (lower runs earlier).
    pub fn attach(
        &self,
        hook: Hook,
        family: Family,
        priority: i32,
    ) -> Result<NetfilterLink, NetfilterError> {
        let fd = sys::link_create_netfilter(
            self.fd.as_raw_fd(),
            bpf_attach_type::BPF_NETFILTER as u32,
            family.nfproto() as u32,
            hook.hooknum(),
            priority,
        )
        .map_err(|source| NetfilterError::Attach {
            program: self.name.clone(),
            hook,
            family,
            priority,
            source,
        })?;
        let id = sys::link_id(fd.as_raw_fd()).map_err(|source| NetfilterError::Io {
            what: "reading the link id",
            source,
        })?;
        Ok(NetfilterLink {
            fd,
            hook,
            family,
            id,
        })
    }

    /// Runs the program `repeat` times on `packet` (an IP packet, starting at the IP header)
    /// through `BPF_PROG_TEST_RUN`, as if at `hook` for `family`. The kernel's harness
    /// (`bpf_prog_test_run_nf`) uses the loopback device as in/out interface and, for every hook
    /// but `local_out`, wants an Ethernet frame (it pulls the link header as a receive path
    /// would), so one is put in front here. Returns (verdict, mean ns per run).
    pub fn test_run(
        &self,
        packet: &[u8],
        hook: Hook,
        family: Family,
        repeat: u32,
    ) -> Result<(u32, u32), NetfilterError> {
        // The harness accepts a `struct nf_hook_state` prefix holding only `hook` and `pf`
        // (its first two bytes).
        let ctx = [hook.hooknum() as u8, family.nfproto()];
        let framed;
        let data = if hook == Hook::LocalOut {
            packet
        } else {
            let ethertype: u16 = match family {
                Family::Ipv4 => 0x0800,
                Family::Ipv6 => 0x86dd,
            };
            let mut f = Vec::with_capacity(14 + packet.len());
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(packet);
            framed = f;
            &framed[..]
        };
        sys::prog_test_run(self.fd.as_raw_fd(), data, &ctx, repeat).map_err(|source| {
            NetfilterError::Io {
                what: "BPF_PROG_TEST_RUN",
                source,
            }
        })
    }
}

/// One attached (hook, family). Dropping it closes the link fd, which detaches the program.
#[derive(Debug)]
pub struct NetfilterLink {
    fd: OwnedFd,
    pub hook: Hook,
    pub family: Family,
    /// The kernel's link id (as `bpftool link` shows it).
    pub id: u32,
}

impl NetfilterLink {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_round_trip() {
        for h in Hook::ALL {
            assert_eq!(h.name().parse::<Hook>().unwrap(), h);
        }
        assert_eq!(Hook::Forward.hooknum(), 2);
        let e = "input".parse::<Hook>().unwrap_err().to_string();
        assert!(e.contains("\"input\"") && e.contains("post_routing"), "{e}");
    }

    /// Needs root: this kernel has netfilter programs (kernel tier).
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn this_kernel_supports_netfilter_programs() {
        probe_support().unwrap();
    }

    /// A program the verifier rejects: the error carries the errno and the verifier's reason.
    /// Loading needs root (kernel tier).
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn rejected_program_reports_errno_and_verifier_log() {
        // `exit` with r0 never written.
        let insns = [bpf_insn {
            code: 0x95,
            _bitfield_1: Default::default(),
            off: 0,
            imm: 0,
        }];
        match load_insns("flowlens_bad", &insns, b"GPL\0") {
            Err(NetfilterError::Load {
                program,
                source,
                log,
            }) => {
                assert_eq!(program, "flowlens_bad");
                assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{source}");
                assert!(log.contains("R0 !read_ok"), "{log}");
            }
            other => panic!("{other:?}"),
        }
    }
}
