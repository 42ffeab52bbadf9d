//! Conservation and accounting logs: every packet the probe saw is either exported or
//! reported with numbers. Per drain, losses (LRU evictions, refused inserts), double counting
//! and failed drains are logged, rate-limited; at shutdown one line sums the whole run.
//! The numbers come from [`crate::stats`]; the metrics endpoint exports the same counters.

use flowlens_sinks::log_limit::RateLimited;

use crate::{
    drain::DrainError,
    stats::{Accounting, Totals},
};

/// Log lines of drain events that repeat every cycle while a condition lasts (each at most
/// once per [`RateLimited`] period, with the number suppressed).
#[derive(Default)]
pub struct DrainLog {
    evicted: RateLimited,
    excess: RateLimited,
    failed: RateLimited,
}

/// A drain failed (not the final one, and not yet too many in a row): what it had not moved
/// stays in the kernel map for a later drain.
pub fn report_drain_failure(e: &DrainError, in_a_row: u64, log: &mut DrainLog) {
    if let Some(suppressed) = log.failed.check() {
        tracing::error!(
            error = %e,
            failures_in_a_row = in_a_row,
            suppressed,
            "draining the kernel flow map failed; the flows it did not move stay in the kernel map and are drained by a later cycle"
        );
    }
}

/// Every drain: anything the probe saw that will not be exported is logged with numbers (at
/// most once per interval while it repeats; the shutdown line and the metrics have the sums).
pub fn report_drain(a: &Accounting, log: &mut DrainLog) {
    if (a.excess_packets > 0 || a.excess_bytes > 0)
        && let Some(suppressed) = log.excess.check()
    {
        tracing::error!(
            suppressed,
            keyed_packets = a.keyed_packets,
            drained_packets = a.drained_packets,
            excess_packets = a.excess_packets,
            excess_bytes = a.excess_bytes,
            "conservation: more drained than the probe keyed (double counting)"
        );
    }
    if (a.evicted_packets > 0 || a.map_error_packets > 0)
        && let Some(suppressed) = log.evicted.check()
    {
        tracing::warn!(
            suppressed,
            evicted_packets = a.evicted_packets,
            evicted_bytes = a.evicted_bytes,
            map_error_packets = a.map_error_packets,
            new_flows = a.new_flows,
            "kernel flow buffer overflowed between two drains: these packets are lost (raise --max-flows or lower --drain-interval / --early-drain-fill)"
        );
    }
}

/// At shutdown: the sum of every drain's accounting, in one line.
pub fn report_shutdown(t: &Totals) {
    let a = &t.accounting;
    let (seen, non_ip, unparsed) = (a.seen_packets, a.non_ip_packets, a.unparsed_packets);
    // "keyed" here counts every parsed IP packet, refused inserts included, so that
    // `keyed = drained + lost` (lost = evicted + refused).
    let keyed = a.keyed_packets + a.map_error_packets;
    let (keyed_bytes, drained, drained_bytes) = (a.keyed_bytes, t.drained_packets, t.drained_bytes);
    let (lost, lost_bytes) = (a.lost_packets(), a.evicted_bytes);
    if a.excess_packets > 0 || a.excess_bytes > 0 {
        tracing::error!(
            seen_packets = seen,
            keyed_packets = keyed,
            drained_packets = drained,
            excess_packets = a.excess_packets,
            "conservation: more drained than the probe keyed (double counting)"
        );
    } else if lost > 0 || lost_bytes > 0 {
        tracing::warn!(
            seen_packets = seen,
            non_ip_packets = non_ip,
            unparsed_packets = unparsed,
            keyed_packets = keyed,
            drained_packets = drained,
            lost_packets = lost,
            lost_bytes,
            evicted_packets = a.evicted_packets,
            map_error_packets = a.map_error_packets,
            "conservation: packets counted by the probe never reached user space (LRU evictions or refused inserts)"
        );
    } else {
        tracing::info!(
            seen_packets = seen,
            non_ip_packets = non_ip,
            unparsed_packets = unparsed,
            keyed_packets = keyed,
            keyed_bytes,
            drained_packets = drained,
            drained_bytes,
            lost_packets = 0,
            "conservation: every keyed packet was drained"
        );
    }
}
