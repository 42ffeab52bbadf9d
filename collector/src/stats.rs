//! Run statistics: the counters the pipeline accumulates and everything else reads (the run
//! loop's logs, the conservation lines, the metrics endpoint).
//!
//! A leaf module: it imports nothing from the rest of the collector, so both the pipeline
//! (which writes these counters) and the metrics endpoint (which reads a copy of them) can
//! depend on it without depending on each other.

use flowlens_schema::stats;
use flowlens_sinks::SinkMetrics;

/// Totals reported at shutdown (and in logs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub drains: u64,
    /// Drains that failed (a `bpf()` call on the flow map or its counters returned an error):
    /// what had not been moved yet stays in the kernel map for the next drain (see
    /// `pipeline::MAX_CONSECUTIVE_DRAIN_FAILURES`).
    pub drain_failures: u64,
    /// Failed drains since the last successful one.
    pub consecutive_drain_failures: u64,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub sink_errors: u64,
    pub records_lost_in_sinks: u64,
    /// Records left in the sinks' on-disk spools at shutdown (delivered by the next start).
    pub records_spooled: u64,
    /// Drains started before the interval because the kernel buffer was filling up.
    pub early_drains: u64,
    /// Flow records ended early with `lack_of_resources` because the flow table was at its
    /// cap (`--max-memory`), and the packets in them (exported like any other record's).
    pub flows_ended_lack_of_resources: u64,
    pub lack_of_resources_packets: u64,
    /// Packets/bytes moved out of the kernel map (before the flow table).
    pub drained_packets: u64,
    pub drained_bytes: u64,
    /// Kernel-side conservation, summed over every drain (exact: see `drain.rs`).
    pub accounting: Accounting,
    /// The same per observation point (`OBS_*` index), for the metrics endpoint.
    pub per_observation_point: [Accounting; stats::OBS_SLOTS as usize],
}

/// Failed calls of one sink (the records of a failed `write` are lost for that sink).
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkFailures {
    pub errors: u64,
    pub records_lost: u64,
}

/// What the metrics endpoint copies once per cycle. The pipeline implements it; the metrics
/// module sees only this view (so it does not depend on the pipeline).
pub trait RunStats {
    fn totals(&self) -> &Totals;
    /// Flows open in the user-space flow table.
    fn flows_in_table(&self) -> u64;
    /// Per sink, in order: its delivery counters and the collector's count of its failed calls.
    fn sink_stats(&self) -> Vec<(SinkMetrics, SinkFailures)>;
}

/// Conservation of one drained buffer (or a sum of them), in packets and IP-layer bytes.
///
/// `seen = non_ip + unparsed + map_errors + keyed`, `keyed = drained + evicted`; `excess` is
/// what was drained beyond what was keyed (double counting: must stay 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub seen_packets: u64,
    pub non_ip_packets: u64,
    pub unparsed_packets: u64,
    /// Packets whose flow could not be inserted (map refused): counted, not keyed.
    pub map_error_packets: u64,
    pub keyed_packets: u64,
    pub keyed_bytes: u64,
    pub drained_packets: u64,
    pub drained_bytes: u64,
    /// Keyed but not drained: the LRU evicted their flow before the drain.
    pub evicted_packets: u64,
    pub evicted_bytes: u64,
    pub excess_packets: u64,
    pub excess_bytes: u64,
    pub new_flows: u64,
}

impl Accounting {
    /// From one buffer's counter deltas (indexed by `stats::*`) and what its drain moved.
    pub fn from_counters(
        c: &[u64; stats::COUNT as usize],
        drained_packets: u64,
        drained_bytes: u64,
    ) -> Accounting {
        let seen = c[stats::PACKETS_SEEN as usize];
        let non_ip = c[stats::NON_IP as usize];
        let unparsed = c[stats::UNPARSED as usize];
        let map_errors = c[stats::MAP_ERRORS as usize];
        let keyed_packets = seen
            .saturating_sub(non_ip)
            .saturating_sub(unparsed)
            .saturating_sub(map_errors);
        let keyed_bytes = c[stats::BYTES_KEYED as usize];
        Accounting {
            seen_packets: seen,
            non_ip_packets: non_ip,
            unparsed_packets: unparsed,
            map_error_packets: map_errors,
            keyed_packets,
            keyed_bytes,
            drained_packets,
            drained_bytes,
            evicted_packets: keyed_packets.saturating_sub(drained_packets),
            evicted_bytes: keyed_bytes.saturating_sub(drained_bytes),
            excess_packets: drained_packets.saturating_sub(keyed_packets),
            excess_bytes: drained_bytes.saturating_sub(keyed_bytes),
            new_flows: c[stats::NEW_FLOWS as usize],
        }
    }

    pub fn add(&mut self, o: &Accounting) {
        self.seen_packets += o.seen_packets;
        self.non_ip_packets += o.non_ip_packets;
        self.unparsed_packets += o.unparsed_packets;
        self.map_error_packets += o.map_error_packets;
        self.keyed_packets += o.keyed_packets;
        self.keyed_bytes += o.keyed_bytes;
        self.drained_packets += o.drained_packets;
        self.drained_bytes += o.drained_bytes;
        self.evicted_packets += o.evicted_packets;
        self.evicted_bytes += o.evicted_bytes;
        self.excess_packets += o.excess_packets;
        self.excess_bytes += o.excess_bytes;
        self.new_flows += o.new_flows;
    }

    /// Packets the probe saw as IP but that will never be exported.
    pub fn lost_packets(&self) -> u64 {
        self.evicted_packets + self.map_error_packets
    }
}
