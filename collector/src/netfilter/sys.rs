//! The raw `bpf(2)` commands the netfilter loader needs. All `unsafe` of the loader is here.
//!
//! Attribute structs come from `aya_obj::generated` (the kernel's UAPI as bindgen sees it); each
//! command zeroes the whole `bpf_attr` union first, as the kernel requires for unused bytes. The
//! `bpf(2)` call itself is the collector's one wrapper, `crate::sys::bpf`.

use std::{
    io,
    os::fd::{OwnedFd, RawFd},
};

use aya_obj::generated::{bpf_cmd, bpf_insn, bpf_link_info, bpf_prog_info};

use crate::sys::{bpf, owned, zeroed_attr};

/// `BPF_PROG_LOAD`. `log` (if non-empty) receives the verifier log at `log_level`.
pub(crate) struct ProgLoad<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub insns: &'a [bpf_insn],
    /// NUL-terminated.
    pub license: &'a [u8],
    pub name: &'a str,
}

pub(crate) fn prog_load(p: &ProgLoad<'_>, log: &mut [u8], log_level: u32) -> io::Result<OwnedFd> {
    debug_assert_eq!(p.license.last(), Some(&0));
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_PROG_LOAD member of the zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = p.prog_type;
    u.expected_attach_type = p.expected_attach_type;
    u.insns = p.insns.as_ptr() as u64;
    u.insn_cnt = p.insns.len() as u32;
    u.license = p.license.as_ptr() as u64;
    if !log.is_empty() && log_level > 0 {
        u.log_level = log_level;
        u.log_buf = log.as_mut_ptr() as u64;
        u.log_size = log.len() as u32;
    }
    // The kernel keeps 15 bytes plus NUL of the name.
    for (d, s) in u.prog_name.iter_mut().zip(p.name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(owned)
}

/// `BPF_LINK_CREATE` for a netfilter program.
pub(super) fn link_create_netfilter(
    prog: RawFd,
    attach_type: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_LINK_CREATE member of the zeroed union, then its netfilter arm.
    unsafe {
        let l = &mut attr.link_create;
        l.__bindgen_anon_1.prog_fd = prog as u32;
        l.attach_type = attach_type;
        let nf = &mut l.__bindgen_anon_3.netfilter;
        nf.pf = pf;
        nf.hooknum = hooknum;
        nf.priority = priority;
    }
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

fn obj_info<T>(fd: RawFd, info: &mut T) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // Writing a Copy member of a union is safe; `info` is a plain C struct the kernel fills up
    // to `info_len` bytes.
    attr.info.bpf_fd = fd as u32;
    attr.info.info_len = std::mem::size_of::<T>() as u32;
    attr.info.info = info as *mut T as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// The kernel's id of a link.
pub(super) fn link_id(fd: RawFd) -> io::Result<u32> {
    // SAFETY: plain C struct of integers; all-zero is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info.id)
}

/// The kernel's id of a program.
pub(super) fn prog_id(fd: RawFd) -> io::Result<u32> {
    // SAFETY: plain C struct of integers and arrays; all-zero is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info.id)
}

/// `BPF_PROG_TEST_RUN`: runs the program `repeat` times on `data` with the optional context
/// `ctx`; returns (return value, mean duration in ns).
pub(super) fn prog_test_run(
    prog: RawFd,
    data: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_PROG_TEST_RUN member of the zeroed union; the buffers outlive
    // the call and the kernel only reads them (no data_out/ctx_out is given).
    unsafe {
        let t = &mut attr.test;
        t.prog_fd = prog as u32;
        t.data_in = data.as_ptr() as u64;
        t.data_size_in = data.len() as u32;
        if !ctx.is_empty() {
            t.ctx_in = ctx.as_ptr() as u64;
            t.ctx_size_in = ctx.len() as u32;
        }
        t.repeat = repeat;
    }
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: reading back the member the kernel filled in.
    let t = unsafe { attr.test };
    Ok((t.retval, t.duration))
}
