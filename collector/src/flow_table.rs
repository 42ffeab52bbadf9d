//! User-space flow table: merges drained kernel deltas per flow and decides when a flow record
//! ends (IPFIX-style timeouts).
//!
//! * `end_of_flow`: a TCP FIN or RST was seen; the record is emitted at the next expiry pass.
//! * `idle_timeout`: no packet for `idle_timeout`.
//! * `active_timeout`: the record has been open for `active_timeout` (long flows are reported in
//!   slices; the next packets open a new record).
//! * `forced_end`: the exporter stops ([`FlowTable::drain_all`]).
//! * `lack_of_resources`: the table is full (`--max-memory` sets its flow cap,
//!   [`FlowTable::with_max_flows`]): to make room for new flows, the flows *seen least recently*
//!   end early (see [`FlowTable::merge_all`]). Their packets and bytes are in those records, so
//!   totals stay exact; only the record is cut short.

use std::time::Duration;

/// Flow keys come from the network: a seeded hasher (foldhash, per-process random seed) keeps
/// collisions unpredictable at a fraction of SipHash's cost (the table is the record path's
/// hottest structure; see docs/BENCHMARKS.md).
type Hasher = foldhash::fast::RandomState;

use flowlens_schema::{FlowKey, FlowValue, record::EndReason};
use hashbrown::HashTable;

const TCP_FIN: u16 = 0x01;
const TCP_RST: u16 = 0x04;

/// Accumulated counters of one open flow record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u16,
    pub dscp: u8,
    /// cgroup id of the flow's local socket (first non-zero one of the record), or 0.
    pub cgroup_id: u64,
}

/// A flow record that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub key: FlowKey,
    pub state: FlowState,
    pub reason: EndReason,
}

/// One open flow: 96 bytes, stored once in a dense array.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FlowKey,
    state: FlowState,
}

/// The open flows: a dense array of entries (key and state, 96 bytes each) and a hash index of
/// 4-byte positions into it (one control byte per bucket besides). A table of 333k flows is
/// 32 MB of entries and 2.6 MB of index, where a hash map of (key, state) pairs was a 51 MB
/// table that a rebuild held twice; new flows are appended (sequential writes), and an expiry
/// pass walks the array. Removal swaps the last entry into the hole and fixes its index slot.
pub struct FlowTable {
    entries: Vec<Entry>,
    index: HashTable<u32>,
    hasher: Hasher,
    /// Records ended because the same flow key showed up with another socket's cgroup (a
    /// reused address and port), or to make room (`lack_of_resources`): emitted at the next
    /// [`FlowTable::expire`] / `drain_all`.
    split: Vec<Ended>,
    active_ns: u64,
    idle_ns: u64,
    /// Most flows the table holds at once (`usize::MAX`: no bound).
    max_flows: usize,
    /// Records ended with `lack_of_resources` since the table was made, and their packets.
    lack_of_resources: u64,
    lack_of_resources_packets: u64,
    /// Scratch: indices of the deltas of flows not in the table, and sampled `last_seen_ns`.
    new_idx: Vec<u32>,
    sample: Vec<u64>,
}

/// Capacity of the split buffer kept between cycles (a flood's burst is not).
const SPLIT_KEEP: usize = 32_768;

/// Flows sampled to find the `last_seen` threshold of an eviction pass.
const EVICT_SAMPLE: usize = 4096;

impl FlowTable {
    pub fn new(active_timeout: Duration, idle_timeout: Duration) -> Self {
        FlowTable {
            entries: Vec::new(),
            index: HashTable::new(),
            hasher: Hasher::default(),
            split: Vec::new(),
            active_ns: u64::try_from(active_timeout.as_nanos()).unwrap_or(u64::MAX),
            idle_ns: u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            max_flows: usize::MAX,
            lack_of_resources: 0,
            lack_of_resources_packets: 0,
            new_idx: Vec::new(),
            sample: Vec::new(),
        }
    }

    /// A table that never holds more than `max_flows` flows (at least 1): past it, the flows
    /// seen least recently end with `lack_of_resources` (see [`FlowTable::merge_all`]).
    pub fn with_max_flows(mut self, max_flows: usize) -> Self {
        self.max_flows = max_flows.max(1);
        self
    }

    /// The flow cap (`usize::MAX`: none).
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Records ended with `lack_of_resources` so far, and the packets in them.
    pub fn lack_of_resources(&self) -> (u64, u64) {
        (self.lack_of_resources, self.lack_of_resources_packets)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Flows the table can hold before it has to grow or clean up (its hash index).
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn hash(&self, k: &FlowKey) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, k)
    }

    /// Position of `k`'s entry.
    fn find(&self, k: &FlowKey) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(self.hash(k), |&i| entries[i as usize].key == *k)
            .map(|&i| i as usize)
    }

    fn contains_key(&self, k: &FlowKey) -> bool {
        self.find(k).is_some()
    }

    /// Appends a flow that is not in the table.
    fn insert_new(&mut self, key: FlowKey, state: FlowState) {
        let h = self.hash(&key);
        let i = self.entries.len() as u32;
        self.entries.push(Entry { key, state });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(h, i, |&j| {
            std::hash::BuildHasher::hash_one(hasher, entries[j as usize].key)
        });
    }

    /// Removes the entry at `i` (the last entry takes its place).
    fn remove_at(&mut self, i: usize) -> Entry {
        let h = self.hash(&self.entries[i].key);
        if let Ok(e) = self.index.find_entry(h, |&j| j as usize == i) {
            e.remove();
        }
        let last = self.entries.len() - 1;
        if i != last {
            let hl = self.hash(&self.entries[last].key);
            if let Some(slot) = self.index.find_mut(hl, |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        self.entries.swap_remove(i)
    }

    /// Keeps the flows for which `keep` is true; hands each removed one to `removed`.
    fn retain(
        &mut self,
        mut keep: impl FnMut(&FlowKey, &FlowState) -> bool,
        mut removed: impl FnMut(Entry),
    ) {
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if keep(&e.key, &e.state) {
                i += 1;
            } else {
                // The entry moved into `i` has not been looked at yet: check it next.
                let e = self.remove_at(i);
                removed(e);
            }
        }
    }

    /// Makes room for `n` more flows before a drain's deltas are merged.
    ///
    /// Removals leave tombstones in the hash index that still count against its capacity;
    /// rebuilding the index (4 bytes per flow, the entries stay where they are) sized for what
    /// the table will hold clears them. The entry array grows by exactly what is needed.
    pub fn reserve(&mut self, n: usize) {
        let want = self.entries.len() + n;
        if self.entries.capacity() < want {
            self.entries.reserve_exact(n);
        }
        if self.index.capacity() - self.index.len() >= n {
            return;
        }
        let mut fresh = HashTable::with_capacity(want);
        for (i, e) in self.entries.iter().enumerate() {
            let h = std::hash::BuildHasher::hash_one(&self.hasher, e.key);
            let entries = &self.entries;
            let hasher = &self.hasher;
            fresh.insert_unique(h, i as u32, |&j| {
                std::hash::BuildHasher::hash_one(hasher, entries[j as usize].key)
            });
        }
        self.index = fresh;
    }

    /// Adds one drain's deltas: first makes room for the flows among them that are new to the
    /// table, so a rebuild, when needed, is sized for what the table will hold.
    ///
    /// The counting pass runs only when the table might not have room for every delta, so the
    /// usual drain hashes each key once.
    ///
    /// **At the flow cap** ([`FlowTable::with_max_flows`]): the deltas of flows already in the
    /// table are merged first (so that a flow active in this drain counts as recently seen);
    /// then, if the new flows do not fit, the flows whose last packet is the oldest end with
    /// `lack_of_resources` (least recently seen first: a long flow that is still active keeps
    /// its record, a flow that went quiet ends a little before its idle timeout would have
    /// ended it). Each such pass ends at least 1/16 of the cap, so that a flood pays one pass
    /// per many new flows. If one drain alone brings more new flows than the cap, the ones
    /// beyond it end at once, in drain order. No packet is lost either way: every delta is in
    /// exactly one record.
    pub fn merge_all(&mut self, deltas: &[(FlowKey, FlowValue)]) {
        if self.entries.len().saturating_add(deltas.len()) <= self.max_flows {
            if self.index.capacity() - self.index.len() < deltas.len() {
                let new = deltas.iter().filter(|(k, _)| !self.contains_key(k)).count();
                self.reserve(new);
            }
            for (k, v) in deltas {
                self.merge(k, v);
            }
            return;
        }
        self.merge_at_cap(deltas);
    }

    fn merge_at_cap(&mut self, deltas: &[(FlowKey, FlowValue)]) {
        let mut new_idx = std::mem::take(&mut self.new_idx);
        new_idx.clear();
        for (i, (k, v)) in deltas.iter().enumerate() {
            if v.packets == 0 {
                continue;
            }
            if self.contains_key(k) {
                self.merge(k, v);
            } else {
                new_idx.push(i as u32);
            }
        }
        let want = self.entries.len() + new_idx.len();
        if want > self.max_flows {
            let need = (want - self.max_flows).max(self.max_flows / 16);
            self.evict_least_recent(need.min(self.entries.len()));
        }
        let room = self.max_flows - self.entries.len().min(self.max_flows);
        self.reserve(new_idx.len().min(room));
        for &i in &new_idx {
            let (k, v) = &deltas[i as usize];
            if self.entries.len() < self.max_flows || self.contains_key(k) {
                self.merge(k, v);
            } else {
                let state = fresh_state(v);
                self.end_for_lack_of_resources(*k, state);
            }
        }
        self.new_idx = new_idx;
    }

    fn end_for_lack_of_resources(&mut self, key: FlowKey, state: FlowState) {
        self.lack_of_resources += 1;
        self.lack_of_resources_packets += state.packets;
        self.split.push(Ended {
            key,
            state,
            reason: EndReason::LackOfResources,
        });
    }

    /// Ends the `n` flows (or a few more on ties) seen least recently, with `lack_of_resources`.
    /// The `last_seen` threshold comes from a sample of the table (entries spread evenly over
    /// the array), then one pass ends the flows at or below it; a second pass with a higher
    /// threshold runs only if the sample underestimated it.
    fn evict_least_recent(&mut self, n: usize) {
        let mut left = n;
        let mut fraction = n as f64 / self.entries.len().max(1) as f64;
        while left > 0 && !self.entries.is_empty() {
            let threshold = if left >= self.entries.len() {
                u64::MAX
            } else {
                let step = (self.entries.len() / EVICT_SAMPLE).max(1);
                self.sample.clear();
                self.sample.extend(
                    self.entries
                        .iter()
                        .step_by(step)
                        .take(EVICT_SAMPLE)
                        .map(|e| e.state.last_seen_ns),
                );
                self.sample.sort_unstable();
                // The sample's n-th smallest for a fraction n/len of the table.
                let idx = ((fraction * self.sample.len() as f64).ceil() as usize)
                    .saturating_sub(1)
                    .min(self.sample.len() - 1);
                self.sample[idx]
            };
            let mut ended = 0usize;
            let mut split = std::mem::take(&mut self.split);
            let (mut count, mut packets) = (0u64, 0u64);
            self.retain(
                |_, s| {
                    !(ended < left && s.last_seen_ns <= threshold && {
                        ended += 1;
                        true
                    })
                },
                |e| {
                    count += 1;
                    packets += e.state.packets;
                    split.push(Ended {
                        key: e.key,
                        state: e.state,
                        reason: EndReason::LackOfResources,
                    });
                },
            );
            self.split = split;
            self.lack_of_resources += count;
            self.lack_of_resources_packets += packets;
            left -= ended;
            // Underestimated: aim higher next pass.
            fraction = (fraction * 2.0).max(left as f64 / self.entries.len().max(1) as f64);
        }
    }

    /// Adds one drained delta.
    pub fn merge(&mut self, key: &FlowKey, d: &FlowValue) {
        if d.packets == 0 {
            return;
        }
        let flags = (d.tcp_flags & 0x1ff) as u16;
        // CPUs store last_seen without ordering, and XDP reads the coarse clock (one tick) on
        // each CPU: the last packet of a delta is never before its first.
        let d_last = d.last_seen_ns.max(d.first_seen_ns);
        let fresh = fresh_state(d);
        let Some(i) = self.find(key) else {
            self.insert_new(*key, fresh);
            return;
        };
        let s = &mut self.entries[i].state;
        if s.cgroup_id != 0 && d.cgroup_id != 0 && s.cgroup_id != d.cgroup_id {
            // Another socket (another cgroup) now uses this flow key: the old record ends
            // here, so nothing of the new socket is attributed to the old one.
            self.split.push(Ended {
                key: *key,
                state: *s,
                reason: EndReason::EndOfFlow,
            });
            *s = fresh;
            return;
        }
        s.packets += d.packets;
        s.bytes += d.bytes;
        s.first_seen_ns = s.first_seen_ns.min(d.first_seen_ns);
        if d_last >= s.last_seen_ns {
            s.last_seen_ns = d_last;
            s.dscp = d.dscp;
        }
        s.tcp_flags |= flags;
        if s.cgroup_id == 0 {
            s.cgroup_id = d.cgroup_id;
        }
    }

    /// Moves the records ended by a split or for lack of room into `out`. An empty `out` takes
    /// the buffer itself when its own is smaller (no copy, no second buffer of that size).
    fn take_split(&mut self, out: &mut Vec<Ended>) {
        if self.split.is_empty() {
            return;
        }
        if out.is_empty() && out.capacity() < self.split.len() {
            std::mem::swap(out, &mut self.split);
            self.split = Vec::new();
        } else {
            out.append(&mut self.split);
            if self.split.capacity() > SPLIT_KEEP {
                self.split = Vec::new();
            }
        }
    }

    /// Moves every record that ended by `now_ns` (CLOCK_MONOTONIC) into `out`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Ended>) {
        self.take_split(out);
        let (active, idle) = (self.active_ns, self.idle_ns);
        let reason_of = |s: &FlowState| {
            if s.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                Some(EndReason::EndOfFlow)
            } else if now_ns.saturating_sub(s.last_seen_ns) >= idle {
                Some(EndReason::IdleTimeout)
            } else if now_ns.saturating_sub(s.first_seen_ns) >= active {
                Some(EndReason::ActiveTimeout)
            } else {
                None
            }
        };
        self.retain(
            |_, s| reason_of(s).is_none(),
            |e| {
                out.push(Ended {
                    key: e.key,
                    state: e.state,
                    reason: reason_of(&e.state).unwrap_or(EndReason::IdleTimeout),
                })
            },
        );
    }

    /// Ends up to `max` open records with `forced_end` (and moves any split ones), for a
    /// shutdown that exports in chunks; `false` once the table is empty. The table only
    /// shrinks after this: no merge may follow.
    pub fn drain_some(&mut self, out: &mut Vec<Ended>, max: usize) -> bool {
        self.take_split(out);
        self.index.clear();
        let from = self.entries.len().saturating_sub(max);
        out.extend(self.entries.drain(from..).map(|e| Ended {
            key: e.key,
            state: e.state,
            reason: EndReason::ForcedEnd,
        }));
        if self.entries.is_empty() {
            self.entries = Vec::new();
            return false;
        }
        true
    }

    /// Ends every open record with `forced_end` (shutdown).
    pub fn drain_all(&mut self, out: &mut Vec<Ended>) {
        self.take_split(out);
        self.index.clear();
        out.extend(self.entries.drain(..).map(|e| Ended {
            key: e.key,
            state: e.state,
            reason: EndReason::ForcedEnd,
        }));
    }
}

/// The state of a flow record that starts with delta `d`.
fn fresh_state(d: &FlowValue) -> FlowState {
    FlowState {
        packets: d.packets,
        bytes: d.bytes,
        first_seen_ns: d.first_seen_ns,
        last_seen_ns: d.last_seen_ns.max(d.first_seen_ns),
        tcp_flags: (d.tcp_flags & 0x1ff) as u16,
        dscp: d.dscp,
        cgroup_id: d.cgroup_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.ip_version = 4;
        k.protocol = 6;
        k.src_port = port;
        k
    }

    fn delta(packets: u64, bytes: u64, first: u64, last: u64, flags: u64) -> FlowValue {
        FlowValue {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: flags,
            dscp: 0,
            _pad: [0; 7],
            cgroup_id: 0,
        }
    }

    fn table() -> FlowTable {
        FlowTable::new(Duration::from_secs(60), Duration::from_secs(15))
    }

    #[test]
    fn merges_deltas() {
        let mut t = table();
        t.merge(&key(1), &delta(2, 200, 10 * S, 11 * S, 0x02));
        t.merge(&key(1), &delta(3, 300, 12 * S, 13 * S, 0x10));
        let mut out = vec![];
        t.drain_all(&mut out);
        assert_eq!(out.len(), 1);
        let s = out[0].state;
        assert_eq!(
            (
                s.packets,
                s.bytes,
                s.first_seen_ns,
                s.last_seen_ns,
                s.tcp_flags
            ),
            (5, 500, 10 * S, 13 * S, 0x12)
        );
        assert_eq!(out[0].reason, EndReason::ForcedEnd);
        assert!(t.is_empty());
    }

    #[test]
    fn idle_timeout_fires_exactly_at_the_limit() {
        let mut t = table();
        t.merge(&key(1), &delta(1, 60, 100 * S, 100 * S, 0));
        let mut out = vec![];
        t.expire(115 * S - 1, &mut out);
        assert!(out.is_empty());
        t.expire(115 * S, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::IdleTimeout);
    }

    #[test]
    fn active_timeout_slices_long_flows() {
        let mut t = table();
        t.merge(&key(1), &delta(1, 60, 100 * S, 100 * S, 0));
        let mut out = vec![];
        for sec in 101..=160 {
            t.merge(&key(1), &delta(1, 60, sec * S, sec * S, 0));
            t.expire(sec * S, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].reason, EndReason::ActiveTimeout);
        assert_eq!(out[0].state.packets, 61);
        // The next packet opens a new record.
        t.merge(&key(1), &delta(1, 60, 161 * S, 161 * S, 0));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn fin_or_rst_ends_the_flow() {
        let mut t = table();
        t.merge(&key(1), &delta(4, 400, S, 2 * S, 0x11));
        t.merge(&key(2), &delta(1, 40, S, 2 * S, 0x04));
        t.merge(&key(3), &delta(1, 40, S, 2 * S, 0x10));
        let mut out = vec![];
        t.expire(2 * S, &mut out);
        out.sort_by_key(|e| e.key.src_port);
        assert_eq!(
            out.iter()
                .map(|e| (e.key.src_port, e.reason))
                .collect::<Vec<_>>(),
            vec![(1, EndReason::EndOfFlow), (2, EndReason::EndOfFlow)]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn empty_deltas_are_ignored() {
        let mut t = table();
        t.merge(&key(1), &delta(0, 0, 0, 0, 0));
        assert!(t.is_empty());
    }

    /// Largest capacity over a churn run: `LIVE` flows refreshed every second, `CHURN` of
    /// them replaced every second, idle timeout 5 s.
    fn churn_max_capacity(reserve: bool) -> (usize, usize) {
        let mut t = FlowTable::new(Duration::from_secs(3600), Duration::from_secs(5));
        let mut ended = Vec::new();
        const LIVE: u32 = 30_000;
        const CHURN: u32 = 3_000;
        let mut first = 0u32;
        let (mut max_cap, mut max_len) = (0, 0);
        for sec in 0..100u64 {
            let now = sec * S;
            let deltas: Vec<_> = (first..first + LIVE)
                .map(|id| {
                    let mut k = key((id % 60_000) as u16);
                    k.src_addr[0] = (id / 60_000) as u8;
                    let v = FlowValue {
                        packets: 1,
                        bytes: 10,
                        first_seen_ns: now,
                        last_seen_ns: now,
                        ..FlowValue::default()
                    };
                    (k, v)
                })
                .collect();
            if reserve {
                t.merge_all(&deltas);
            } else {
                for (k, v) in &deltas {
                    t.merge(k, v);
                }
            }
            ended.clear();
            t.expire(now, &mut ended);
            first += CHURN;
            max_cap = max_cap.max(t.capacity());
            max_len = max_len.max(t.len());
        }
        (max_cap, max_len)
    }

    /// Churn at a steady number of open flows must not make the table double: `merge_all`
    /// clears the tombstones (rebuilding for what the table will hold) where hashbrown alone
    /// would grow.
    #[test]
    fn churn_at_steady_size_does_not_grow_the_table() {
        let (with, len) = churn_max_capacity(true);
        let (without, _) = churn_max_capacity(false);
        assert!((40_000..=50_000).contains(&len), "{len}");
        // Room for every open flow plus one drain's worth of new ones, no more.
        assert!(with <= 2 * (len + 3_000), "{with} slots for {len} flows");
        assert!(
            with < without,
            "reserve: {with} slots, plain hashbrown: {without}"
        );
    }

    /// The shutdown in chunks ends every flow exactly once, with its counters.
    #[test]
    fn drain_some_ends_every_flow_once_in_chunks() {
        let mut t = table();
        for p in 0..1000u16 {
            t.merge(&key(p), &delta(p as u64 + 1, 100, 10 * S, 11 * S, 0));
        }
        // Removals before, so the array was reordered.
        let mut out = Vec::new();
        t.merge(&key(7), &delta(1, 1, 10 * S, 11 * S, 0x01));
        t.expire(12 * S, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        let mut chunks = 0;
        let mut seen = std::collections::BTreeMap::new();
        loop {
            let mut c = Vec::new();
            let more = t.drain_some(&mut c, 300);
            assert!(c.len() <= 300);
            chunks += 1;
            for e in c {
                assert_eq!(e.reason, EndReason::ForcedEnd);
                assert!(seen.insert(e.key.src_port, e.state.packets).is_none());
            }
            if !more {
                break;
            }
        }
        assert_eq!(chunks, 4);
        assert_eq!(seen.len(), 999);
        assert!(t.is_empty());
        for (p, packets) in seen {
            assert_eq!(packets, p as u64 + 1);
        }
    }

    #[test]
    fn another_cgroup_on_the_same_key_ends_the_record() {
        let mut t = table();
        let k = key(53);
        let with = |cg: u64, first: u64| FlowValue {
            cgroup_id: cg,
            ..delta(1, 100, first, first, 0)
        };
        t.merge(&k, &with(0, 1));
        t.merge(&k, &with(7, 2)); // first socket named: adopted
        t.merge(&k, &with(0, 3)); // a packet without socket: same record
        t.merge(&k, &with(7, 4));
        t.merge(&k, &with(9, 5)); // another cgroup: new record
        let mut out = Vec::new();
        t.expire(6, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state.cgroup_id, 7);
        assert_eq!(out[0].state.packets, 4);
        assert_eq!(out[0].reason, EndReason::EndOfFlow);
        out.clear();
        t.drain_all(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].state.cgroup_id, out[0].state.packets), (9, 1));
        assert_eq!(out[0].state.first_seen_ns, 5);
    }
    fn flood_delta(port: u16, seen: u64) -> (FlowKey, FlowValue) {
        let mut k = key(port);
        k.src_addr[0] = 10;
        (k, delta(1, 60, seen, seen, 0x02))
    }

    /// At the cap, the flows seen least recently end with `lack_of_resources`; a flow updated
    /// in the same drain keeps its record; no packet is lost.
    #[test]
    fn cap_ends_least_recently_seen_flows_first() {
        let mut t = table().with_max_flows(100);
        // 100 flows, flow i last seen at i seconds.
        let first: Vec<_> = (0..100).map(|i| flood_delta(i, i as u64 * S)).collect();
        t.merge_all(&first);
        assert_eq!(t.len(), 100);
        // Flow 0 (the oldest) is active again; 10 new flows arrive.
        let mut second = vec![flood_delta(0, 200 * S)];
        second.extend((1000..1010).map(|i| flood_delta(i, 200 * S)));
        t.merge_all(&second);
        assert!(t.len() <= 100, "{}", t.len());
        let mut out = Vec::new();
        t.expire(1, &mut out); // nothing times out at t=1ns: only the cap's records
        let ended: Vec<u16> = out
            .iter()
            .filter(|e| e.reason == EndReason::LackOfResources)
            .map(|e| e.key.src_port)
            .collect();
        assert_eq!(ended.len(), out.len());
        // At least 10 (room for the new ones), and at least cap/16 per pass.
        assert!(ended.len() >= 10, "{ended:?}");
        let mut sorted = ended.clone();
        sorted.sort();
        // The oldest ones, flow 0 excepted (it was refreshed).
        let expect: Vec<u16> = (1..=sorted.len() as u16).collect();
        assert_eq!(sorted, expect);
        assert_eq!(t.lack_of_resources().0, ended.len() as u64);
        // Every packet in exactly one record.
        let mut rest = Vec::new();
        t.drain_all(&mut rest);
        let packets: u64 = out.iter().chain(&rest).map(|e| e.state.packets).sum();
        assert_eq!(packets, 111);
        let flow0 = rest.iter().find(|e| e.key.src_port == 0).unwrap();
        assert_eq!(flow0.state.packets, 2);
    }

    /// One drain with more new flows than the cap: the table stays at the cap, the rest end at
    /// once; duplicate keys in one drain (both buffers at shutdown) merge.
    #[test]
    fn one_drain_beyond_the_cap() {
        let mut t = table().with_max_flows(50);
        let mut d: Vec<_> = (0..200).map(|i| flood_delta(i, S + i as u64)).collect();
        d.push(flood_delta(199, 2 * S));
        t.merge_all(&d);
        assert_eq!(t.len(), 50);
        let mut out = Vec::new();
        t.drain_all(&mut out);
        assert_eq!(out.iter().map(|e| e.state.packets).sum::<u64>(), 201);
        let lor = out
            .iter()
            .filter(|e| e.reason == EndReason::LackOfResources)
            .count();
        assert_eq!(lor as u64, t.lack_of_resources().0);
        assert!(lor >= 150, "{lor}");
        // Each key ends in one record per stretch in the table: no key is in two records
        // unless it was ended for lack of room first.
        let keys: std::collections::HashSet<_> = out.iter().map(|e| e.key).collect();
        assert!(keys.len() == 200, "{}", keys.len());
    }

    /// A long flood at the cap: the table never holds more than the cap, its allocation stays
    /// bounded, and every packet is in one record.
    #[test]
    fn flood_at_the_cap_stays_bounded() {
        const CAP: usize = 10_000;
        let mut t =
            FlowTable::new(Duration::from_secs(60), Duration::from_secs(15)).with_max_flows(CAP);
        let (mut sent, mut got, mut max_cap) = (0u64, 0u64, 0usize);
        let mut out = Vec::new();
        let mut id = 0u32;
        for sec in 0..50u64 {
            let d: Vec<_> = (0..3_000)
                .map(|_| {
                    id += 1;
                    let mut k = key(id as u16);
                    k.src_addr[0..4].copy_from_slice(&id.to_be_bytes());
                    (k, delta(2, 120, sec * S, sec * S, 0x02))
                })
                .collect();
            sent += 2 * d.len() as u64;
            t.merge_all(&d);
            assert!(t.len() <= CAP);
            max_cap = max_cap.max(t.capacity());
            out.clear();
            t.expire(sec * S, &mut out);
            got += out.iter().map(|e| e.state.packets).sum::<u64>();
        }
        out.clear();
        t.drain_all(&mut out);
        got += out.iter().map(|e| e.state.packets).sum::<u64>();
        assert_eq!(got, sent);
        assert!(
            t.lack_of_resources().0 > 100_000,
            "{:?}",
            t.lack_of_resources()
        );
        // hashbrown rounds buckets up to a power of two (7/8 full): at most 2x the cap.
        assert!(max_cap <= 2 * CAP, "{max_cap}");
    }
}
