//! The raw `bpf(2)` commands the drain needs and aya 0.16 does not offer: batch
//! lookup-and-delete (aya issue 1124) and an RCU barrier for BPF programs.
//!
//! Everything `unsafe` about the drain lives here. Attribute structs are the prefixes of the
//! kernel's `union bpf_attr` members that these commands read; the kernel zero-fills the rest
//! of the union when the size passed is smaller than its own.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `ENOTSUPP` (kernel-internal, leaks to user space from some map types).
const ENOTSUPP: i32 = 524;

/// Calls `bpf(cmd, attr, sizeof(attr))`.
///
/// # Safety
/// `attr` must be the attribute layout `cmd` expects, and every pointer in it must be valid for
/// what the kernel does with it (reads or writes of the sizes the attribute states).
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: forwarded to the caller; the size passed is exactly that of `*attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn map_create(attr: &mut MapCreateAttr) -> io::Result<OwnedFd> {
    // SAFETY: a MAP_CREATE attribute with no pointers.
    let fd = unsafe { sys_bpf(BPF_MAP_CREATE, attr)? };
    // SAFETY: on success MAP_CREATE returns a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
        let inner = map_create(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = map_create(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns after an RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = ElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0, // BPF_ANY
        };
        // SAFETY: key and value point to live u32s, the sizes the outer map was created with.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)? };
        Ok(())
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
}

/// Moves every entry out of a hash map with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, `chunk` entries
/// per call, handing each `(key, value)` to `sink`. Returns the number of entries moved.
///
/// Exact only on a map nobody writes meanwhile (the inactive buffer). `K` and `V` must be
/// plain-old-data `#[repr(C)]` types of exactly the map's key and value sizes; the scratch
/// vectors are reused between calls.
pub fn lookup_and_delete_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    zero: (K, V),
    mut chunk: usize,
    mut sink: impl FnMut(&K, &V),
) -> Result<usize, BatchError> {
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
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_token as *const u32 as u64
            },
            out_batch: &mut out_token as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: keys/values hold `chunk` elements of the map's key/value size (caller's
        // contract on K and V); the tokens are live u32s; the kernel writes at most `count`
        // entries and updates `count`.
        let r = unsafe { sys_bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) };
        let n = (attr.count as usize).min(chunk);
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
