//! `--max-memory`: the collector's user-space memory budget, and the flow table cap derived
//! from it (a leaf module: imports nothing from the rest of the collector).
//!
//! What `flowlens run` holds in memory, and how each part is bounded:
//!
//! | part | bound |
//! |---|---|
//! | program, runtime, sinks' fixed buffers (a Parquet row group, sockets, …) | [`BASE_BYTES`], measured |
//! | one drain's deltas (drain → table) | `2 × --max-flows` entries (both kernel buffers at the last drain), reserved once |
//! | records handed to the sinks per call (table → identity → sinks) | 8192 records (`pipeline::RECORD_CHUNK`), in `BASE_BYTES` |
//! | records queued in Kafka / OTLP sinks (and the spool's copies of them) | `--kafka-queue-max-records`, `--otlp-queue-records`, × [`QUEUED_RECORD_BYTES`] |
//! | records waiting for each sink's thread (`flowlens_sinks::worker`) | `DEFAULT_QUEUE_RECORDS` (65,536) per sink, × [`QUEUED_RECORD_BYTES`] |
//! | the flow table, its rebuilds and the ended flows of one expiry pass | **the rest**: the flow cap is the most flows whose [`table_peak_bytes`] fit |
//!
//! Past the flow cap, the flows seen least recently end early with `lack_of_resources`
//! (`flow_table`). The table's model is checked against measured peak RSS:
//! `flowlens-bench flood` runs the real pipeline (flow table, exporter, Parquet sink) capped at
//! several sizes under a flood of 120k new flows per second, reads the peak RSS (`VmHWM`) of
//! each, and reports the measured bytes per flow next to the model's (docs/BENCHMARKS.md).
//!
//! Kernel memory (the two LRU flow buffers, charged to the same cgroup on kernels ≥ 5.11) is not
//! part of `--max-memory`: it is fixed by `--max-flows` (see [`kernel_map_bytes`]).
//! The default budget, 256 MiB, plus the kernel maps at the default `--max-flows` (about 40 MiB)
//! leaves more than 200 MiB of a 512 MiB systemd `MemoryMax=` or DaemonSet limit for page cache
//! and the allocator's slack.

/// Default `--max-memory` (see the module documentation).
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;

/// Peak RSS of `flowlens run` besides the flow table, the drain buffers and the sink queues:
/// program, tokio, the Parquet sink (its open row group of up to 128k rows), one 8192-record
/// chunk of records. Measured: `flowlens-bench flow-memory-child 4096` peaks at 76 MB with
/// 120k-flow drains (about 25 MB of them drain buffers), and the flood test's debug build of
/// `flowlens run` at 74 MB with a 3 MB table and 14 MB of drain buffers: 57 MB; rounded up with
/// a margin for allocator fragmentation.
pub const BASE_BYTES: u64 = 64 << 20;

/// One open flow in the flow table's entry array: 48-byte key, 48-byte state.
pub const TABLE_ENTRY_BYTES: u64 = 48 + 48;
/// One bucket of the flow table's hash index: a 4-byte position and one control byte.
pub const TABLE_SLOT_BYTES: u64 = 4 + 1;
/// One ended flow waiting to become a record (`flow_table::Ended`).
pub const ENDED_BYTES: u64 = 104;

/// Bytes of one record waiting in a sink's memory queue (a `FlowRecord` and its Community ID
/// string): 368 measured (`flowlens-bench record-memory-child`), rounded up.
pub const QUEUED_RECORD_BYTES: u64 = 384;

/// Bytes of one drained `(FlowKey, FlowValue)` delta.
pub const DELTA_BYTES: u64 = 104;

/// Buckets of a hash table (hashbrown, std's `HashMap`) sized for `n` items: at most 7/8 full,
/// a power of two.
pub fn table_buckets(n: u64) -> u64 {
    if n < 8 {
        return 8;
    }
    (n * 8).div_ceil(7).next_power_of_two()
}

/// Peak bytes of a flow table capped at `n` flows: its entry array (grown exactly, never past
/// the cap), two hash indexes at once (a rebuild that clears tombstones fills the new index
/// before it drops the old one), and every flow ended in one expiry pass.
/// `flowlens-bench flood` reports it next to the measured peak RSS per flow at several caps
/// (docs/BENCHMARKS.md).
pub fn table_peak_bytes(n: u64) -> u64 {
    n * TABLE_ENTRY_BYTES + 2 * table_buckets(n) * TABLE_SLOT_BYTES + n * ENDED_BYTES
}

/// The most flows whose [`table_peak_bytes`] fit in `bytes`.
pub fn flows_in(bytes: u64) -> u64 {
    let (mut lo, mut hi) = (0u64, bytes / ENDED_BYTES + 1);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if table_peak_bytes(mid) <= bytes {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Smallest flow cap `--max-memory` may leave (below it a busy host ends almost every flow
/// early: refused at start).
pub const MIN_FLOW_CAP: u64 = 4096;

/// How `--max-memory` is split (bytes), and the flow cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max_memory: u64,
    pub base: u64,
    /// One drain's deltas (2 × `--max-flows`).
    pub drain: u64,
    /// Records the sinks may queue in memory.
    pub sink_queues: u64,
    /// What is left for the flow table.
    pub table: u64,
    /// Most flows the user-space table holds.
    pub flow_cap: u64,
}

/// Entries of the drain buffer: both kernel buffers at the last drain.
pub fn drain_entries(kernel_max_flows: u32) -> usize {
    2 * kernel_max_flows as usize
}

/// Splits `max_memory` (see the module documentation). `queued_records`: the records the sinks
/// may hold in memory queues, summed over sinks (a spooled sink counts its queue twice: the
/// spool keeps a copy until the sink settles them). An error is one line saying what is needed.
pub fn plan(max_memory: u64, kernel_max_flows: u32, queued_records: u64) -> Result<Budget, String> {
    // The deltas, and as many flows ended for lack of room by them.
    let drain = drain_entries(kernel_max_flows) as u64 * (DELTA_BYTES + ENDED_BYTES);
    let sink_queues = queued_records.saturating_mul(QUEUED_RECORD_BYTES);
    let fixed = BASE_BYTES + drain + sink_queues;
    let need = fixed + table_peak_bytes(MIN_FLOW_CAP);
    if max_memory < need {
        return Err(format!(
            "--max-memory {} is too small for these settings: at least {} ({} MiB) is needed \
             ({} MiB base, {} MiB for the drain of --max-flows {kernel_max_flows}, {} MiB of sink \
             queues, {} MiB for {MIN_FLOW_CAP} flows); raise it or lower --max-flows, \
             --kafka-queue-max-records or --otlp-queue-records",
            max_memory,
            need,
            need.div_ceil(1 << 20),
            BASE_BYTES >> 20,
            drain.div_ceil(1 << 20),
            sink_queues.div_ceil(1 << 20),
            table_peak_bytes(MIN_FLOW_CAP).div_ceil(1 << 20),
        ));
    }
    let table = max_memory - fixed;
    Ok(Budget {
        max_memory,
        base: BASE_BYTES,
        drain,
        sink_queues,
        table,
        flow_cap: flows_in(table),
    })
}

/// Kernel memory of the two LRU flow buffers (approximate: key, value and the kernel's
/// per-element header, per entry), not part of `--max-memory`.
pub fn kernel_map_bytes(kernel_max_flows: u32) -> u64 {
    // htab_elem header (about 48 bytes on x86_64) + 48-byte key + 56-byte value, rounded to 8.
    2 * kernel_max_flows as u64 * (48 + 48 + 56)
}

/// `268435456`, `256MiB`, `256M` (= MiB), `1GiB`, `1G`, `512KiB`, `512K`: bytes. Binary
/// multiples only (a memory limit in systemd and Kubernetes is usually given as `M`/`Mi`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 268435456 or 256MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "Ki" | "k" => 1 << 10,
        "M" | "MiB" | "Mi" => 1 << 20,
        "G" | "GiB" | "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Peak resident set size of this process so far (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert!(parse_bytes("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("MiB").is_err());
        assert!(
            parse_bytes("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn default_budget_leaves_room_for_flows() {
        let b = plan(DEFAULT_MAX_MEMORY, 131_072, 0).unwrap();
        assert_eq!(
            b.base + b.drain + b.sink_queues + b.table,
            DEFAULT_MAX_MEMORY
        );
        assert!(b.flow_cap >= 400_000, "{b:?}");
        // The default and the kernel maps stay well under a 512 MiB limit.
        assert!(DEFAULT_MAX_MEMORY + kernel_map_bytes(131_072) < 320 << 20);
    }

    #[test]
    fn too_small_is_one_clear_line() {
        let e = plan(96 << 20, 131_072, 0).unwrap_err();
        assert!(e.starts_with("--max-memory 100663296 is too small"), "{e}");
        assert!(!e.contains('\n'));
        // Queued records of the sinks come off the table's share.
        let a = plan(256 << 20, 131_072, 0).unwrap();
        let b = plan(256 << 20, 131_072, 100_000).unwrap();
        assert_eq!(a.table - b.table, 100_000 * QUEUED_RECORD_BYTES);
    }

    #[test]
    fn flow_cap_is_the_most_flows_that_fit() {
        for bytes in [1u64 << 20, 50 << 20, 150 << 20, 1 << 30] {
            let n = flows_in(bytes);
            assert!(table_peak_bytes(n) <= bytes);
            assert!(table_peak_bytes(n + 1) > bytes);
        }
        // 7/8 of a power of two fills its buckets; one more flow doubles them.
        assert_eq!(table_buckets(458_752), 524_288);
        assert_eq!(table_buckets(458_753), 1_048_576);
        // About 210-225 bytes per flow: entry, ended flow, two indexes.
        let per_flow = table_peak_bytes(458_752) as f64 / 458_752.0;
        assert!((200.0..230.0).contains(&per_flow), "{per_flow}");
    }
}
