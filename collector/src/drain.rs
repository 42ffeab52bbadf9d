//! Moving flow counters out of the kernel, exactly once.
//!
//! [`Drainer`] is the one interface the rest of the collector sees. [`SwapDrainer`] is the
//! implementation `flowlens run` uses:
//!
//! 1. The probe writes flows into one of two LRU maps, the one the `ACTIVE` array names, and
//!    counts every packet in a per-CPU `STATS` entry of that same buffer.
//! 2. A drain flips `ACTIVE`, then waits for an RCU grace period ([`RcuBarrier`]): every program
//!    run that could still hold the old buffer has finished when it returns.
//! 3. The old buffer is now still. It is emptied with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`
//!    (per-key lookup + delete where the kernel refuses batches) and its counters are read.
//!    Nothing can change between a read and its delete, so no update is lost; and because the
//!    counters are as still as the flows, `keyed = drained + evicted` holds exactly per drain.
//!
//! Each buffer has a flow cache in front of its LRU map (its half of `CACHE`/`CACHE_STATE`, a
//! direct-mapped array of [`CacheSlot`]s the probe counts most flows into without a hash-map
//! lookup, and their states, see `flowlens_abi::CacheSlot`). It is swapped with its buffer and
//! emptied in the same still window ([`FlowCache::drain`]): its ready slots are handed out like
//! map entries, then their states are zeroed (a claimer rewrites the whole slot).
//! A flow can have an entry in both (a race for a slot); the flow table adds them up.
//!
//! What the drain cannot prevent, it counts: LRU evictions when a buffer overflows between two
//! drains (`evicted`, the exact shortfall) and refused inserts (`map_errors`).
//!
//! [`PerKeyDrainer`] is the way other agents drain (read each key of the live map, then delete
//! it). It is kept only as the baseline of the drain benchmark and of the loss demonstration in
//! the tests: an update landing between its read and its delete is lost.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray};
use flowlens_schema::{CacheSlot, FlowKey, FlowValue, cache, stats};

pub use crate::stats::Accounting;
use crate::sys::{BatchError, RcuBarrier, lookup_and_delete_batch};

pub type Counters = [u64; stats::COUNT as usize];

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("flow map: {0}")]
    Map(#[from] MapError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("waiting for running probe programs (RCU barrier): {0}")]
    Barrier(std::io::Error),
}

/// How entries are moved out of a still buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainMethod {
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, [`BATCH_CHUNK`] entries per syscall.
    Batch,
    /// List the keys, then lookup + delete each (two syscalls per entry).
    PerKey,
}

/// Entries per batch syscall: large enough that the syscall cost vanishes, small enough that
/// the scratch buffers stay at a few hundred KiB.
pub const BATCH_CHUNK: usize = 4096;

/// Result of one drain.
#[derive(Clone, Debug, Default)]
pub struct DrainReport {
    pub entries: usize,
    /// Per observation point (`OBS_*` index), for the buffer(s) drained. `None` for drainers
    /// that cannot account exactly.
    pub accounting: Option<[Accounting; stats::OBS_SLOTS as usize]>,
}

impl DrainReport {
    pub fn total(&self) -> Option<Accounting> {
        self.accounting.map(|a| {
            let mut t = Accounting::default();
            for p in &a {
                t.add(p);
            }
            t
        })
    }
}

pub trait Drainer: Send {
    /// Moves every flow entry the kernel finished writing out of the kernel map, appending
    /// `(key, delta)` pairs to `out`.
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError>;

    /// The last drain, after the programs were detached: moves everything still in the kernel.
    fn drain_final(
        &mut self,
        out: &mut Vec<(FlowKey, FlowValue)>,
    ) -> Result<DrainReport, DrainError> {
        self.drain(out)
    }

    /// Flow entries inserted into the buffer being written now, and its capacity, for early
    /// drains. `None` if unknown.
    fn fill(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Reads the probe's per-CPU counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, Counters>,
}

impl KernelStats {
    pub fn new(map: PerCpuArray<MapData, Counters>) -> Self {
        KernelStats { map }
    }

    /// One (buffer, observation point) entry, summed over CPUs.
    pub fn read_entry(&self, buffer: u32, observation_point: u8) -> Result<Counters, MapError> {
        let mut out = [0u64; stats::COUNT as usize];
        for cpu in self
            .map
            .get(&stats::index(buffer, observation_point), 0)?
            .iter()
        {
            for (sum, v) in out.iter_mut().zip(cpu) {
                *sum += v;
            }
        }
        Ok(out)
    }

    /// Every entry summed: totals since load, all buffers and observation points.
    pub fn read(&self) -> Result<Counters, MapError> {
        let mut out = [0u64; stats::COUNT as usize];
        for b in 0..stats::BUFFERS {
            for p in 0..stats::OBS_SLOTS {
                let e = self.read_entry(b, p as u8)?;
                for (sum, v) in out.iter_mut().zip(e) {
                    *sum += v;
                }
            }
        }
        Ok(out)
    }
}

type FlowMap = HashMap<MapData, FlowKey, FlowValue>;

/// The probe's flow-cache arrays (`CACHE` and `CACHE_STATE`, both buffers' slots), memory-mapped
/// (the maps are created `BPF_F_MMAPABLE`) and shared by the two buffers' [`FlowCache`]s.
struct CacheMaps {
    /// Keep the maps (and so the mappings' backing memory) alive.
    _maps: (MapData, MapData),
    slots: *mut CacheSlot,
    states: *mut u64,
    slot_bytes: usize,
    state_bytes: usize,
}

// SAFETY: the mappings are owned by this value; each `FlowCache` reads and writes only its own
// buffer's half, through `&mut FlowCache`.
unsafe impl Send for CacheMaps {}
unsafe impl Sync for CacheMaps {}

impl Drop for CacheMaps {
    fn drop(&mut self) {
        // SAFETY: the mappings made in `FlowCache::pair`, unmapped once.
        unsafe {
            libc::munmap(self.slots.cast(), self.slot_bytes);
            libc::munmap(self.states.cast(), self.state_bytes);
        }
    }
}

/// Maps `bytes` of array map `map` (created `BPF_F_MMAPABLE`) read-write.
fn map_shared(map: &MapData, bytes: usize) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length against the
    // array's size and refuses a map created without BPF_F_MMAPABLE.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ptr)
}

/// One buffer's flow cache: its half of the probe's `CACHE` and `CACHE_STATE` arrays.
pub struct FlowCache {
    maps: std::sync::Arc<CacheMaps>,
    /// Index of this buffer's first slot.
    first: usize,
    slots: usize,
}

impl FlowCache {
    /// Maps the cache arrays `cache` (values `CacheSlot`) and `states` (`u64`), each of
    /// `2 * slots` entries: buffer 0's cache, then buffer 1's.
    pub fn pair(cache: MapData, states: MapData, slots: u32) -> std::io::Result<[FlowCache; 2]> {
        let slots = slots as usize;
        let slot_bytes = 2 * slots * std::mem::size_of::<CacheSlot>();
        let state_bytes = 2 * slots * std::mem::size_of::<u64>();
        let slot_ptr = map_shared(&cache, slot_bytes)?;
        let state_ptr = match map_shared(&states, state_bytes) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the mapping just made, unmapped once.
                unsafe { libc::munmap(slot_ptr, slot_bytes) };
                return Err(e);
            }
        };
        let maps = std::sync::Arc::new(CacheMaps {
            _maps: (cache, states),
            slots: slot_ptr.cast(),
            states: state_ptr.cast(),
            slot_bytes,
            state_bytes,
        });
        Ok([0, 1].map(|b| FlowCache {
            maps: maps.clone(),
            first: b * slots,
            slots,
        }))
    }

    /// Appends every ready slot's flow to `out` and empties the used slots; returns the number
    /// of flows. Exact when no program writes the cache (a still buffer); on a live cache (the
    /// per-key baseline drainer) a packet counted between a slot's read and its emptying is
    /// lost.
    pub fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> usize {
        let mut n = 0;
        for i in self.first..self.first + self.slots {
            // SAFETY: `i` < 2 x slots, inside both mappings, in this buffer's half; volatile
            // because programs write them.
            let state_ptr = unsafe { self.maps.states.add(i) };
            let state = unsafe { std::ptr::read_volatile(state_ptr) };
            if state == cache::EMPTY {
                continue;
            }
            if cache::is_ready(state) {
                // SAFETY: as above.
                let s = unsafe { std::ptr::read_volatile(self.maps.slots.add(i)) };
                if s.value.packets > 0 {
                    out.push((s.key, s.value));
                    n += 1;
                }
            }
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(state_ptr, cache::EMPTY) };
        }
        n
    }
}

/// The double-buffered, exactly-once drain (see the module docs).
pub struct SwapDrainer {
    flows: [FlowMap; 2],
    caches: [FlowCache; 2],
    active_map: Array<MapData, u32>,
    stats: KernelStats,
    barrier: RcuBarrier,
    /// The buffer programs write now.
    active: u32,
    method: DrainMethod,
    capacity: u64,
    /// Counters of each (buffer, observation point) at that buffer's previous drain.
    baseline: [[Counters; stats::OBS_SLOTS as usize]; 2],
    /// Packets and bytes per (buffer, observation point) that failed drains moved out of that
    /// buffer: the buffer's next successful drain counts them as drained, so its accounting
    /// stays exact across a failure.
    moved: [[(u64, u64); stats::OBS_SLOTS as usize]; 2],
    keys: Vec<FlowKey>,
    values: Vec<FlowValue>,
    listed: Vec<FlowKey>,
}

impl SwapDrainer {
    pub fn new(
        flows: [FlowMap; 2],
        caches: [FlowCache; 2],
        mut active_map: Array<MapData, u32>,
        stats: KernelStats,
        capacity: u64,
    ) -> Result<SwapDrainer, DrainError> {
        let barrier = RcuBarrier::new().map_err(DrainError::Barrier)?;
        active_map.set(0, &0, 0)?;
        // The counters start at zero with the maps: packets counted before the drainer was set
        // up belong to the first drain of their buffer.
        let baseline = [[[0u64; stats::COUNT as usize]; stats::OBS_SLOTS as usize]; 2];
        Ok(SwapDrainer {
            flows,
            caches,
            active_map,
            stats,
            barrier,
            active: 0,
            method: DrainMethod::Batch,
            capacity,
            baseline,
            moved: [[(0, 0); stats::OBS_SLOTS as usize]; 2],
            keys: Vec::new(),
            values: Vec::new(),
            listed: Vec::new(),
        })
    }

    /// Forces a drain method (benchmarks; tests of the fallback).
    pub fn set_method(&mut self, m: DrainMethod) {
        self.method = m;
    }

    pub fn method(&self) -> DrainMethod {
        self.method
    }

    pub fn stats(&self) -> &KernelStats {
        &self.stats
    }

    /// The buffer programs write now.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// A flow buffer itself, for benchmarks and tests that fill it from user space.
    pub fn flow_map_mut(&mut self, buffer: u32) -> &mut HashMap<MapData, FlowKey, FlowValue> {
        &mut self.flows[(buffer & 1) as usize]
    }

    /// Empties buffer `b` (which nobody writes), its flow cache and its LRU map, into `out`.
    fn empty_buffer(
        &mut self,
        b: usize,
        out: &mut Vec<(FlowKey, FlowValue)>,
    ) -> Result<usize, DrainError> {
        let cached = self.caches[b].drain(out);
        Ok(cached + self.empty_map(b, out)?)
    }

    /// Empties the LRU map of buffer `b` (which nobody writes) into `out`.
    fn empty_map(
        &mut self,
        b: usize,
        out: &mut Vec<(FlowKey, FlowValue)>,
    ) -> Result<usize, DrainError> {
        if self.method == DrainMethod::Batch {
            let fd = self.flows[b].map().fd().as_fd();
            match lookup_and_delete_batch(
                fd,
                &mut self.keys,
                &mut self.values,
                (FlowKey::ZERO, FlowValue::default()),
                BATCH_CHUNK,
                |k, v| out.push((*k, *v)),
            ) {
                Ok(n) => return Ok(n),
                Err(BatchError::Unsupported(e)) => {
                    tracing::warn!(error = %e, "the kernel refuses batch drains of the flow map; draining key by key");
                    self.method = DrainMethod::PerKey;
                }
                Err(e) => return Err(e.into()),
            }
        }
        per_key_drain(&mut self.flows[b], &mut self.listed, out).map_err(Into::into)
    }
}

/// Lists the keys, then reads and deletes each. Exact only on a map nobody writes.
fn per_key_drain(
    map: &mut FlowMap,
    listed: &mut Vec<FlowKey>,
    out: &mut Vec<(FlowKey, FlowValue)>,
) -> Result<usize, MapError> {
    listed.clear();
    for k in map.keys() {
        listed.push(k?);
    }
    // When the LRU evicts the key a listing stands on, the kernel restarts the listing from the
    // first bucket: drop the repeats.
    listed.sort_unstable();
    listed.dedup();
    let mut n = 0;
    for k in listed.iter() {
        match map.get(k, 0) {
            Ok(v) => {
                match map.remove(k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e),
                }
                out.push((*k, v));
                n += 1;
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Drainer for SwapDrainer {
    /// On error, the entries already moved are in `out` (and counted for the buffer's next
    /// drain); the rest stay in the kernel map: the next drain hands the failed buffer back to
    /// the probe (which adds to those entries), and the drain after it empties it.
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError> {
        let old = self.active;
        let new = old ^ 1;
        self.active_map.set(0, &new, 0)?;
        self.active = new;
        // After this, no program run writes `old` (or its counters) any more.
        self.barrier.wait().map_err(DrainError::Barrier)?;
        let start = out.len();
        let emptied = self.empty_buffer(old as usize, out);
        let moved = &mut self.moved[old as usize];
        for (k, v) in &out[start..] {
            let d = &mut moved[(k.observation_point as u32 & (stats::OBS_SLOTS - 1)) as usize];
            d.0 += v.packets;
            d.1 += v.bytes;
        }
        let entries = emptied?;
        // Every read first: a failed one leaves the baselines (and `moved`) as they were.
        let mut now = [[0u64; stats::COUNT as usize]; stats::OBS_SLOTS as usize];
        for (p, n) in now.iter_mut().enumerate() {
            *n = self.stats.read_entry(old, p as u8)?;
        }
        let mut acc = [Accounting::default(); stats::OBS_SLOTS as usize];
        for (p, a) in acc.iter_mut().enumerate() {
            let base = &mut self.baseline[old as usize][p];
            let mut delta = [0u64; stats::COUNT as usize];
            for i in 0..delta.len() {
                delta[i] = now[p][i].wrapping_sub(base[i]);
            }
            *base = now[p];
            let (packets, bytes) = std::mem::take(&mut self.moved[old as usize][p]);
            *a = Accounting::from_counters(&delta, packets, bytes);
        }
        Ok(DrainReport {
            entries,
            accounting: Some(acc),
        })
    }

    /// Both buffers: a run that started before the detach may have picked either.
    fn drain_final(
        &mut self,
        out: &mut Vec<(FlowKey, FlowValue)>,
    ) -> Result<DrainReport, DrainError> {
        // Both, even if the first fails: nothing drains these maps afterwards.
        let a = self.drain(out);
        let b = self.drain(out);
        let (a, b) = (a?, b?);
        let mut acc = a.accounting.unwrap_or_default();
        if let Some(bb) = b.accounting {
            for (x, y) in acc.iter_mut().zip(bb.iter()) {
                x.add(y);
            }
        }
        Ok(DrainReport {
            entries: a.entries + b.entries,
            accounting: Some(acc),
        })
    }

    fn fill(&self) -> Option<(u64, u64)> {
        let b = self.active;
        let mut inserted = 0u64;
        for p in 0..stats::OBS_SLOTS {
            let now = self.stats.read_entry(b, p as u8).ok()?;
            inserted += now[stats::NEW_FLOWS as usize]
                .wrapping_sub(self.baseline[b as usize][p as usize][stats::NEW_FLOWS as usize]);
        }
        Some((inserted, self.capacity))
    }
}

/// The other agents' drain: per-key lookup and delete on the live map. Loses updates that land
/// between a read and its delete; kept as the benchmark and test baseline only.
pub struct PerKeyDrainer {
    map: FlowMap,
    cache: FlowCache,
    keys: Vec<FlowKey>,
}

impl PerKeyDrainer {
    /// `map` and `cache`: the first buffer's (the one programs write when nobody swaps).
    pub fn new(map: FlowMap, cache: FlowCache) -> Self {
        PerKeyDrainer {
            map,
            cache,
            keys: Vec::new(),
        }
    }

    /// The flow map itself, for benchmarks that fill it from user space.
    pub fn flow_map_mut(&mut self) -> &mut HashMap<MapData, FlowKey, FlowValue> {
        &mut self.map
    }
}

impl Drainer for PerKeyDrainer {
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError> {
        let entries = self.cache.drain(out) + per_key_drain(&mut self.map, &mut self.keys, out)?;
        Ok(DrainReport {
            entries,
            accounting: None,
        })
    }
}
