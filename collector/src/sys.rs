//! The raw `bpf(2)` commands the drain needs and aya 0.16 does not offer: batch
//! lookup-and-delete (aya issue 1124) and an RCU barrier for BPF programs.
//!
//! Also the one `bpf(2)` wrapper of the collector ([`bpf`], [`zeroed_attr`], [`owned`]), which
//! the netfilter loader (`netfilter/sys.rs`) uses too. Attribute structs come from
//! `aya_obj::generated`; every command starts from an all-zero `bpf_attr`, as the kernel requires.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_info, bpf_map_type};

/// `ENOTSUPP` (kernel-internal, leaks to user space from some map types).
const ENOTSUPP: i32 = 524;

/// An all-zero `bpf_attr`: what the kernel expects in every field a command does not use.
pub(crate) fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers and arrays; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, sizeof(bpf_attr))`: the one raw `bpf(2)` call of the collector (the drain
/// here and the netfilter loader).
pub(crate) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr that lives across the call; the
    // size passed is its size. Pointers inside it were set by the callers to buffers that
    // outlive the call and have the sizes the command's attributes state.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a file descriptor the kernel just returned.
pub(crate) fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `BPF_MAP_CREATE` of a map with 4-byte keys and values and `max_entries` 1.
fn map_create(map_type: bpf_map_type, inner_map_fd: Option<&OwnedFd>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_MAP_CREATE member of the zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = map_type as u32;
    u.key_size = 4;
    u.value_size = 4;
    u.max_entries = 1;
    u.inner_map_fd = inner_map_fd.map_or(0, |f| f.as_raw_fd() as u32);
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(owned)
}

/// Waits until every BPF program run that started before the call has finished.
///
/// Updating an element of a map-of-maps from user space makes the kernel call
/// `synchronize_rcu()` before returning (`maybe_wait_bpf_programs()`, there so that user space
/// can rely on programs seeing the new inner map). XDP and netfilter programs run inside RCU
/// read-side sections, so once the update returns, no program still uses a value it read
/// before: in particular, none still writes into a flow buffer it picked before the swap.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<RcuBarrier> {
        let inner = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY, None)?;
        let outer = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(&inner))?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns after an RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = zeroed_attr();
        // SAFETY: writing the element member of the zeroed union; key and value point to live
        // u32s, the sizes the outer map was created with (flags 0 = BPF_ANY).
        let u = unsafe { &mut attr.__bindgen_anon_2 };
        u.map_fd = self.outer.as_raw_fd() as u32;
        u.key = &key as *const u32 as u64;
        u.__bindgen_anon_1.value = &value as *const u32 as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// Why a batch drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel or map type has no batch lookup-and-delete: use the per-key path.
    #[error("batch lookup-and-delete not supported: {0}")]
    Unsupported(io::Error),
    #[error("batch lookup-and-delete: {0}")]
    Failed(io::Error),
    /// The key or value type does not have the map's layout: refused before any syscall
    /// that would write into the caller's buffers.
    #[error("batch lookup-and-delete: {0}")]
    Layout(String),
}

/// The map's description (`BPF_OBJ_GET_INFO_BY_FD`): type, key and value sizes, ...
pub fn map_info(map: BorrowedFd<'_>) -> io::Result<bpf_map_info> {
    // SAFETY: bpf_map_info is a plain C struct of integers and arrays; all-zero is valid.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    // SAFETY: writing the info member of the zeroed union. `info` is a live bpf_map_info; the
    // kernel writes at most `info_len` (its size) bytes into it.
    let i = unsafe { &mut attr.info };
    i.bpf_fd = map.as_raw_fd() as u32;
    i.info_len = std::mem::size_of::<bpf_map_info>() as u32;
    i.info = &mut info as *mut bpf_map_info as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Checks that the map is a (LRU) hash map, whose batch commands write one key and one value
/// per entry and a `u32` bucket index as the batch token, and that `K` and `V` are exactly its
/// key and value sizes. Other types (per-CPU maps write one value per possible CPU) are refused.
fn check_layout<K, V>(map: BorrowedFd<'_>) -> Result<(), BatchError> {
    let info = map_info(map).map_err(BatchError::Failed)?;
    let hash = [
        bpf_map_type::BPF_MAP_TYPE_HASH,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
    ]
    .iter()
    .any(|t| *t as u32 == info.type_);
    if !hash {
        return Err(BatchError::Layout(format!(
            "map {} is of type {}, not a hash or LRU hash map",
            info.id, info.type_
        )));
    }
    let (k, v) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    if k != info.key_size as usize || v != info.value_size as usize {
        return Err(BatchError::Layout(format!(
            "map {} has {}-byte keys and {}-byte values, the types given are {k} and {v} bytes",
            info.id, info.key_size, info.value_size
        )));
    }
    Ok(())
}

/// Moves every entry out of a hash map with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, `chunk` entries
/// per call, handing each `(key, value)` to `sink`. Returns the number of entries moved.
///
/// Exact only on a map nobody writes meanwhile (the inactive buffer). `K` and `V` are
/// plain-old-data types (`Pod`: the kernel writes raw bytes into them); their sizes are
/// checked against the map's (one `BPF_OBJ_GET_INFO_BY_FD` per call) and a mismatch is refused
/// with [`BatchError::Layout`] before anything is read or deleted. The scratch vectors are
/// reused between calls.
pub fn lookup_and_delete_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    zero: (K, V),
    mut chunk: usize,
    mut sink: impl FnMut(&K, &V),
) -> Result<usize, BatchError> {
    check_layout::<K, V>(map)?;
    let mut moved = 0usize;
    // Hash-map batch tokens are bucket indices (u32).
    let mut in_token: u32 = 0;
    let mut out_token: u32 = 0;
    let mut first = true;
    loop {
        keys.clear();
        keys.resize(chunk, zero.0);
        values.clear();
        values.resize(chunk, zero.1);
        let mut attr = zeroed_attr();
        // SAFETY: writing the batch member of the zeroed union. keys/values hold `chunk`
        // elements of exactly the map's key/value size (checked above: the kernel writes
        // `count` entries of those sizes, no more), of types valid for any bytes (Pod); the
        // tokens are live u32s; the kernel updates `count`.
        let b = unsafe { &mut attr.batch };
        b.in_batch = if first {
            0
        } else {
            &in_token as *const u32 as u64
        };
        b.out_batch = &mut out_token as *mut u32 as u64;
        b.keys = keys.as_mut_ptr() as u64;
        b.values = values.as_mut_ptr() as u64;
        b.count = chunk as u32;
        b.map_fd = map.as_raw_fd() as u32;
        let r = bpf(bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr);
        // SAFETY: reading back the member written above (the kernel updated `count`).
        let count = unsafe { attr.batch.count };
        let n = (count as usize).min(chunk);
        for i in 0..n {
            sink(&keys[i], &values[i]);
        }
        moved += n;
        match r {
            Ok(_) => {
                in_token = out_token;
                first = false;
            }
            // The last chunk (possibly empty): the map has been walked to its end.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(moved),
            // One bucket holds more entries than fit: retry the same position with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                if chunk >= 1 << 20 {
                    return Err(BatchError::Failed(e));
                }
                chunk *= 2;
            }
            Err(e)
                if moved == 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
            {
                return Err(BatchError::Unsupported(e));
            }
            Err(e) => return Err(BatchError::Failed(e)),
        }
    }
}
