//! flowlens kernel probes.
//!
//! `flowlens_xdp` parses every ingress frame once with the shared parser
//! ([`flowlens_schema::parse`]) and adds it to its flow in the active flow map. It always
//! returns `XDP_PASS`: the probe observes, it never changes traffic.
//!
//! Every program counts a packet through [`account`], the one place that knows the map layout:
//!
//! * **Double buffering.** Flows go into `FLOWS_0` or `FLOWS_1`, whichever `ACTIVE` names. The
//!   collector flips `ACTIVE`, waits for every program run that may still use the old buffer
//!   (an RCU grace period, see `collector/src/drain.rs`), then drains the old buffer while nobody
//!   writes it: no update can fall between a read and a delete.
//! * **Per-buffer counters.** `STATS` has one per-CPU entry per (buffer, observation point), so
//!   a drained buffer's counters are as still as its flows and the collector can check
//!   `seen = exported + non_ip + unparsed + map_errors + evicted` exactly, every drain.
//! * Counters are exact under concurrency: a flow's entry is shared by all CPUs and updated with
//!   BPF atomic adds; a lost insert race (`EEXIST`) falls back to the winner's entry. (A per-CPU
//!   map costs a value per CPU per flow and measured slower; see docs/BENCHMARKS.md.)
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod probe {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, LruHashMap, PerCpuArray},
        programs::XdpContext,
    };
    use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};
    use flowlens_schema::{
        FlowKey, FlowValue, OBS_XDP,
        parse::{Packet, Parsed, parse_ethernet},
        stats,
    };

    /// Flow buffers; `max_entries` is replaced at load time (`--max-flows`).
    #[map]
    static FLOWS_0: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);
    #[map]
    static FLOWS_1: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);

    /// Entry 0: the buffer programs write now (0 or 1). Written only by the collector.
    #[map]
    static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

    /// Per-CPU counters, one entry per (buffer, observation point) ([`stats::index`]), each
    /// holding every slot of [`flowlens_schema::stats`]: one array lookup per packet.
    #[map]
    static STATS: PerCpuArray<[u64; stats::COUNT as usize]> =
        PerCpuArray::with_max_entries(stats::ENTRIES, 0);

    const BPF_NOEXIST: u64 = 1;

    type Counters = *mut [u64; stats::COUNT as usize];

    struct Xdp<'a>(&'a XdpContext);

    impl Packet for Xdp<'_> {
        #[inline(always)]
        fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
            let start = self.0.data();
            let end = self.0.data_end();
            if start + off + N > end {
                return None;
            }
            // SAFETY: the range [start+off, start+off+N) was just checked against data_end; the
            // read is of a byte array (alignment 1).
            Some(unsafe { *((start + off) as *const [u8; N]) })
        }
        #[inline(always)]
        fn covers(&self, end_off: usize) -> bool {
            self.0.data() + end_off <= self.0.data_end()
        }
    }

    #[inline(always)]
    fn bump(c: Option<Counters>, slot: u32, by: u64) {
        if let Some(p) = c {
            // SAFETY: this CPU's entry; programs run with migration disabled; `slot` < COUNT.
            unsafe { (*p)[slot as usize] += by };
        }
    }

    /// The buffer programs write now.
    #[inline(always)]
    fn active_buffer() -> u32 {
        match ACTIVE.get_ptr(0) {
            // SAFETY: entry 0 of a one-entry array; a volatile read because user space flips it.
            Some(p) => (unsafe { core::ptr::read_volatile(p) }) & 1,
            None => 0,
        }
    }

    /// Counts one packet seen at `observation_point` on `ifindex`: the single entry point of
    /// every program (XDP and netfilter) into the maps.
    #[inline(always)]
    pub fn account(parsed: Parsed, observation_point: u8, ifindex: u32) {
        let buffer = active_buffer();
        let c = STATS.get_ptr_mut(stats::index(buffer, observation_point));
        bump(c, stats::PACKETS_SEEN, 1);
        let meta = match parsed {
            Parsed::Flow(m) => m,
            Parsed::NonIp => {
                bump(c, stats::NON_IP, 1);
                return;
            }
            Parsed::Unparsed => {
                bump(c, stats::UNPARSED, 1);
                return;
            }
        };
        let mut key = meta.key;
        key.observation_point = observation_point;
        key.ifindex = ifindex;
        let bytes = meta.ip_len as u64;
        let flags = meta.tcp_flags as u64;
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let flows = if buffer == 0 { &FLOWS_0 } else { &FLOWS_1 };
        match record(flows, &key, bytes, flags, meta.dscp, now) {
            Stored::Updated => bump(c, stats::BYTES_KEYED, bytes),
            Stored::Inserted => {
                bump(c, stats::BYTES_KEYED, bytes);
                bump(c, stats::NEW_FLOWS, 1);
            }
            Stored::Refused => bump(c, stats::MAP_ERRORS, 1),
        }
    }

    #[xdp]
    pub fn flowlens_xdp(ctx: XdpContext) -> u32 {
        let parsed = parse_ethernet(&Xdp(&ctx));
        // SAFETY: reading the ingress ifindex from the xdp_md context.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        account(parsed, OBS_XDP, ifindex);
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn update(v: *mut FlowValue, bytes: u64, flags: u64, dscp: u8, now: u64) {
        // SAFETY: `v` points into a live map value (RCU-protected for the program's run). The
        // counters use BPF atomic instructions; last_seen and dscp are plain stores (last writer
        // wins, which is the intended semantics).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, bytes);
            if flags != 0 {
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).tcp_flags, flags);
            }
            (*v).last_seen_ns = now;
            (*v).dscp = dscp;
        }
    }

    enum Stored {
        Updated,
        Inserted,
        Refused,
    }

    #[inline(always)]
    fn record(
        flows: &LruHashMap<FlowKey, FlowValue>,
        key: &FlowKey,
        bytes: u64,
        flags: u64,
        dscp: u8,
        now: u64,
    ) -> Stored {
        if let Some(v) = flows.get_ptr_mut(key) {
            update(v, bytes, flags, dscp, now);
            return Stored::Updated;
        }
        let fresh = FlowValue::first(bytes, flags, dscp, now);
        if flows.insert(key, &fresh, BPF_NOEXIST).is_ok() {
            return Stored::Inserted;
        }
        // Another CPU inserted the flow between our lookup and insert: add to its entry.
        match flows.get_ptr_mut(key) {
            Some(v) => {
                update(v, bytes, flags, dscp, now);
                Stored::Updated
            }
            None => Stored::Refused,
        }
    }

    /// Counterpart for benchmarks: the same attach point doing nothing.
    #[xdp]
    pub fn flowlens_xdp_noop(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
