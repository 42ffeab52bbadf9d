//! Moving flow counters out of the kernel.
//!
//! [`Drainer`] is the one interface the rest of the collector sees, so batch drains and
//! double-buffered maps can replace [`PerKeyDrainer`] without touching the flow table or sinks.
//!
//! [`PerKeyDrainer`] reads each key and deletes it (two syscalls per flow). Known limit: a packet
//! that updates an entry after its value was read and before it is deleted is lost. The window is
//! a few microseconds per flow per drain; double-buffered maps close it (see docs/ARCHITECTURE.md).

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use flowlens_schema::{FlowKey, FlowValue, stats};

/// Result of one drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    pub entries: usize,
    /// Keys that vanished between listing and reading (LRU eviction): their counts are lost.
    pub vanished: usize,
}

pub trait Drainer: Send {
    /// Moves every flow entry out of the kernel map, appending `(key, delta)` pairs to `out`.
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainStats, MapError>;
}

pub struct PerKeyDrainer {
    map: HashMap<MapData, FlowKey, FlowValue>,
    keys: Vec<FlowKey>,
}

impl PerKeyDrainer {
    pub fn new(map: HashMap<MapData, FlowKey, FlowValue>) -> Self {
        PerKeyDrainer {
            map,
            keys: Vec::new(),
        }
    }
}

impl Drainer for PerKeyDrainer {
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainStats, MapError> {
        self.keys.clear();
        for k in self.map.keys() {
            self.keys.push(k?);
        }
        // When the LRU evicts the key the listing stands on, the kernel restarts the listing
        // from the first bucket: drop the repeats.
        self.keys.sort_unstable();
        self.keys.dedup();
        let mut st = DrainStats::default();
        for k in &self.keys {
            match self.map.get(k, 0) {
                Ok(v) => {
                    match self.map.remove(k) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(e),
                    }
                    out.push((*k, v));
                    st.entries += 1;
                }
                Err(MapError::KeyNotFound) => st.vanished += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(st)
    }
}

type Counters = [u64; stats::COUNT as usize];

/// Reads the probe's per-CPU counters (one entry, every slot), summed over CPUs.
pub struct KernelStats {
    map: PerCpuArray<MapData, Counters>,
}

impl KernelStats {
    pub fn new(map: PerCpuArray<MapData, Counters>) -> Self {
        KernelStats { map }
    }

    pub fn read(&self) -> Result<Counters, MapError> {
        let mut out = [0u64; stats::COUNT as usize];
        for cpu in self.map.get(&0, 0)?.iter() {
            for (sum, v) in out.iter_mut().zip(cpu) {
                *sum += v;
            }
        }
        Ok(out)
    }
}
