//! flowlens kernel probes.
//!
//! `flowlens_xdp` parses every ingress frame once with the shared parser
//! ([`flowlens_schema::parse`]) and adds it to its flow in the `FLOWS` LRU hash map. It always
//! returns `XDP_PASS`: the probe observes, it never changes traffic.
//!
//! Counters are exact under concurrency: a flow's entry is shared by all CPUs and updated with
//! BPF atomic adds; a lost insert race (`EEXIST`) falls back to the atomic update of the winner's
//! entry. (A per-CPU map would avoid the atomics but costs a value per CPU per flow and a merge in
//! user space; see docs/ARCHITECTURE.md.)
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
        maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
        programs::XdpContext,
    };
    use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};
    use flowlens_schema::{
        FlowKey, FlowValue, OBS_XDP,
        parse::{Packet, Parsed, parse_ethernet},
        stats,
    };

    /// Flow table; `max_entries` is replaced at load time (`--max-flows`).
    #[map]
    static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);

    /// The per-CPU alternative to `FLOWS`, used only by `flowlens_xdp_percpu` for the side-by-side
    /// benchmark that justifies the shared map (one entry unless a benchmark resizes it).
    #[map]
    static FLOWS_PERCPU: LruPerCpuHashMap<FlowKey, FlowValue> =
        LruPerCpuHashMap::with_max_entries(1, 0);

    /// Per-CPU counters: one entry holding every slot of [`flowlens_schema::stats`], so a packet
    /// costs one array lookup however many counters it touches.
    #[map]
    static STATS: PerCpuArray<[u64; stats::COUNT as usize]> = PerCpuArray::with_max_entries(1, 0);

    const BPF_NOEXIST: u64 = 1;

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

    /// This CPU's counters.
    #[inline(always)]
    fn counters() -> Option<*mut [u64; stats::COUNT as usize]> {
        STATS.get_ptr_mut(0)
    }

    #[inline(always)]
    fn bump(c: Option<*mut [u64; stats::COUNT as usize]>, slot: u32, by: u64) {
        if let Some(p) = c {
            // SAFETY: this CPU's entry; XDP runs with preemption disabled; `slot` < COUNT.
            unsafe { (*p)[slot as usize] += by };
        }
    }

    /// Parses the frame and fills in the key; counts non-IP and unparsed frames.
    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Option<(FlowKey, u64, u64, u8)> {
        let c = counters();
        bump(c, stats::PACKETS_SEEN, 1);
        let meta = match parse_ethernet(&Xdp(ctx)) {
            Parsed::Flow(m) => m,
            Parsed::NonIp => {
                bump(c, stats::NON_IP, 1);
                return None;
            }
            Parsed::Unparsed => {
                bump(c, stats::UNPARSED, 1);
                return None;
            }
        };
        let mut key = meta.key;
        key.observation_point = OBS_XDP;
        // SAFETY: reading the ingress ifindex from the xdp_md context.
        key.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        bump(c, stats::BYTES_KEYED, meta.ip_len as u64);
        Some((key, meta.ip_len as u64, meta.tcp_flags as u64, meta.dscp))
    }

    #[xdp]
    pub fn flowlens_xdp(ctx: XdpContext) -> u32 {
        if let Some((key, bytes, flags, dscp)) = classify(&ctx) {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            record(&key, bytes, flags, dscp, now);
        }
        xdp_action::XDP_PASS
    }

    /// Benchmark twin of `flowlens_xdp` with per-CPU values (plain adds, no atomics).
    #[xdp]
    pub fn flowlens_xdp_percpu(ctx: XdpContext) -> u32 {
        if let Some((key, bytes, flags, dscp)) = classify(&ctx) {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if let Some(v) = FLOWS_PERCPU.get_ptr_mut(&key) {
                // SAFETY: this CPU's value; XDP runs with preemption disabled.
                unsafe {
                    (*v).packets += 1;
                    (*v).bytes += bytes;
                    (*v).tcp_flags |= flags;
                    (*v).last_seen_ns = now;
                    (*v).dscp = dscp;
                }
            } else {
                let fresh = FlowValue::first(bytes, flags, dscp, now);
                if FLOWS_PERCPU.insert(&key, &fresh, 0).is_err() {
                    bump(counters(), stats::MAP_ERRORS, 1);
                }
            }
        }
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

    #[inline(always)]
    fn record(key: &FlowKey, bytes: u64, flags: u64, dscp: u8, now: u64) {
        if let Some(v) = FLOWS.get_ptr_mut(key) {
            update(v, bytes, flags, dscp, now);
            return;
        }
        let fresh = FlowValue::first(bytes, flags, dscp, now);
        if FLOWS.insert(key, &fresh, BPF_NOEXIST).is_ok() {
            return;
        }
        // Another CPU inserted the flow between our lookup and insert: add to its entry.
        match FLOWS.get_ptr_mut(key) {
            Some(v) => update(v, bytes, flags, dscp, now),
            None => bump(counters(), stats::MAP_ERRORS, 1),
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
