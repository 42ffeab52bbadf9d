//! User-space flow table: merges drained kernel deltas per flow and decides when a flow record
//! ends (IPFIX-style timeouts).
//!
//! * `end_of_flow`: a TCP FIN or RST was seen; the record is emitted at the next expiry pass.
//! * `idle_timeout`: no packet for `idle_timeout`.
//! * `active_timeout`: the record has been open for `active_timeout` (long flows are reported in
//!   slices; the next packets open a new record).
//! * `forced_end`: the exporter stops ([`FlowTable::drain_all`]).

use std::{collections::HashMap, time::Duration};

/// Flow keys come from the network: a seeded hasher (foldhash, per-process random seed) keeps
/// collisions unpredictable at a fraction of SipHash's cost (the table is the record path's
/// hottest structure; see docs/BENCHMARKS.md).
type Hasher = foldhash::fast::RandomState;

use flowlens_schema::{FlowKey, FlowValue, record::EndReason};

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

pub struct FlowTable {
    flows: HashMap<FlowKey, FlowState, Hasher>,
    /// Records ended because the same flow key showed up with another socket's cgroup (a
    /// reused address and port): emitted at the next [`FlowTable::expire`] / `drain_all`.
    split: Vec<Ended>,
    active_ns: u64,
    idle_ns: u64,
}

impl FlowTable {
    pub fn new(active_timeout: Duration, idle_timeout: Duration) -> Self {
        FlowTable {
            flows: HashMap::with_hasher(Hasher::default()),
            split: Vec::new(),
            active_ns: u64::try_from(active_timeout.as_nanos()).unwrap_or(u64::MAX),
            idle_ns: u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Flows the table can hold before it has to grow or clean up.
    pub fn capacity(&self) -> usize {
        self.flows.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Makes room for `n` more flows before a drain's deltas are merged.
    ///
    /// Flows end all the time, and every removal leaves a tombstone in the hash table that
    /// still counts against its capacity. Left alone, the table then *doubles* when it runs out
    /// of room even if it holds no more flows than before (hashbrown resizes rather than
    /// cleaning up in place above half load): with 333k flows and 1M new flows a minute, that
    /// was a 1M-bucket table and 45 MB more peak memory. Rebuilding into a table sized for
    /// what it will hold clears the tombstones instead.
    pub fn reserve(&mut self, n: usize) {
        if self.flows.capacity() - self.flows.len() >= n {
            return;
        }
        let mut fresh =
            HashMap::with_capacity_and_hasher(self.flows.len() + n, self.flows.hasher().clone());
        fresh.extend(self.flows.drain());
        self.flows = fresh;
    }

    /// Adds one drain's deltas: first makes room for the flows among them that are new to the
    /// table, so a rebuild, when needed, is sized for what the table will hold.
    ///
    /// The counting pass runs only when the table might not have room for every delta, so the
    /// usual drain hashes each key once.
    pub fn merge_all(&mut self, deltas: &[(FlowKey, FlowValue)]) {
        if self.flows.capacity() - self.flows.len() < deltas.len() {
            let new = deltas
                .iter()
                .filter(|(k, _)| !self.flows.contains_key(k))
                .count();
            self.reserve(new);
        }
        for (k, v) in deltas {
            self.merge(k, v);
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
        let fresh = FlowState {
            packets: d.packets,
            bytes: d.bytes,
            first_seen_ns: d.first_seen_ns,
            last_seen_ns: d_last,
            tcp_flags: flags,
            dscp: d.dscp,
            cgroup_id: d.cgroup_id,
        };
        match self.flows.entry(*key) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let s = o.get_mut();
                if s.cgroup_id != 0 && d.cgroup_id != 0 && s.cgroup_id != d.cgroup_id {
                    // Another socket (another cgroup) now uses this flow key: the old record
                    // ends here, so nothing of the new socket is attributed to the old one.
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
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(fresh);
            }
        }
    }

    /// Moves every record that ended by `now_ns` (CLOCK_MONOTONIC) into `out`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Ended>) {
        out.append(&mut self.split);
        let (active, idle) = (self.active_ns, self.idle_ns);
        self.flows.retain(|key, s| {
            let reason = if s.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                EndReason::EndOfFlow
            } else if now_ns.saturating_sub(s.last_seen_ns) >= idle {
                EndReason::IdleTimeout
            } else if now_ns.saturating_sub(s.first_seen_ns) >= active {
                EndReason::ActiveTimeout
            } else {
                return true;
            };
            out.push(Ended {
                key: *key,
                state: *s,
                reason,
            });
            false
        });
    }

    /// Ends every open record with `forced_end` (shutdown).
    pub fn drain_all(&mut self, out: &mut Vec<Ended>) {
        out.append(&mut self.split);
        out.extend(self.flows.drain().map(|(key, state)| Ended {
            key,
            state,
            reason: EndReason::ForcedEnd,
        }));
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
}
