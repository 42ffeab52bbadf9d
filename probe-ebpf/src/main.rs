//! flowlens kernel probes.
//!
//! `flowlens_xdp` parses every ingress frame once with the shared parser
//! ([`flowlens_abi::parse`]) and adds it to its flow in the active flow map. It always
//! returns `XDP_PASS`: the probe observes, it never changes traffic. `flowlens_nf` does the same
//! at netfilter hooks (BPF_PROG_TYPE_NETFILTER, loaded by the collector's own loader), starting
//! the same parser at L3, and always returns `NF_ACCEPT`.
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
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod probe {
    use aya_ebpf::{
        Global,
        bindings::xdp_action,
        helpers::{
            bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel,
            bpf_probe_read_kernel_buf,
        },
        macros::{classifier, map, xdp},
        maps::{Array, LruHashMap, PerCpuArray},
        programs::{TcContext, XdpContext},
    };
    use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or, atomic_xadd, atomic_xchg};
    use flowlens_abi::{
        CacheSlot, FlowKey, FlowValue, NF_ACCEPT, NFPROTO_IPV4, NFPROTO_IPV6, NfOffsets,
        OBS_NF_PRE_ROUTING, OBS_XDP, VLAN_NONE, cache,
        parse::{FlowMeta, Outcome, Packet, parse_ethernet_into, parse_ipv4_into, parse_ipv6_into},
        stats,
    };

    /// Flow buffers; `max_entries` is replaced at load time (`--max-flows`).
    #[map]
    static FLOWS_0: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);
    #[map]
    static FLOWS_1: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);

    /// The flow caches in front of `FLOWS_0`/`FLOWS_1` ([`CacheSlot`]): the slots of both
    /// buffers (buffer `b`'s first), swapped and drained with them, and their states. One map
    /// each, not one per buffer: a call site that may look up either of two maps is not inlined
    /// by the verifier (a kernel function call per lookup instead). Memory-mappable, so the
    /// collector reads and empties them without a syscall per slot; `max_entries` (2 x
    /// `CACHE_SLOTS`) is set at load time.
    #[map]
    static CACHE: Array<CacheSlot> = Array::with_max_entries(2 * cache::SLOTS, BPF_F_MMAPABLE);
    #[map]
    static CACHE_STATE: Array<u64> = Array::with_max_entries(2 * cache::SLOTS, BPF_F_MMAPABLE);

    const BPF_F_MMAPABLE: u32 = 1 << 10;

    /// Slots of each flow cache (a power of two, `cache::slots_for(--max-flows)`), set by the
    /// loader with the arrays' `max_entries`; in frozen `.rodata`.
    #[unsafe(no_mangle)]
    static CACHE_SLOTS: Global<u32> = Global::new(cache::SLOTS);

    /// Entry 0: the buffer programs write now (0 or 1). Written only by the collector.
    #[map]
    static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

    /// Per-CPU counters, one entry per (buffer, observation point) ([`stats::index`]), each
    /// holding every slot of [`flowlens_abi::stats`]: one array lookup per packet.
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
            // `end_off` may be an IP length the verifier cannot bound (Linux < 6.8 tracks no
            // bounds through `|` of two unknown bytes), and a packet pointer plus an unbounded
            // value is refused. An explicit bound keeps the sum checkable on every kernel; it
            // must survive optimisation, which would drop it as always true, hence `opaque`.
            let end_off = opaque(end_off);
            end_off <= MAX_END_OFF && self.0.data() + end_off <= self.0.data_end()
        }
    }

    /// Larger than any header offset plus IP length the parser computes (22 + 40 + 65535).
    const MAX_END_OFF: usize = 1 << 17;

    /// `x`, unknown to the compiler: a check on the result is compiled as written (the
    /// verifier needs it; the compiler could prove it redundant). One register move: an
    /// empty asm block would give two BTF line records one instruction offset, which Linux
    /// 6.1 refuses ("Invalid line_info").
    #[inline(always)]
    fn opaque(mut x: usize) -> usize {
        // SAFETY: a register move of `x` to itself; no memory, no stack.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
        x
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
    /// `COARSE_CLOCK_OK`: whether the program type may call `bpf_ktime_get_coarse_ns`.
    #[inline(always)]
    pub fn account<const COARSE_CLOCK_OK: bool>(
        outcome: Outcome,
        meta: &mut FlowMeta,
        observation_point: u8,
        ifindex: u32,
        cgroup_id: u64,
    ) {
        let buffer = active_buffer();
        let c = STATS.get_ptr_mut(stats::index(buffer, observation_point));
        bump(c, stats::PACKETS_SEEN, 1);
        match outcome {
            Outcome::Flow => {}
            Outcome::NonIp => {
                bump(c, stats::NON_IP, 1);
                return;
            }
            Outcome::Unparsed => {
                bump(c, stats::UNPARSED, 1);
                return;
            }
        }
        meta.key.observation_point = observation_point;
        meta.key.ifindex = ifindex;
        let key = &meta.key;
        let bytes = meta.ip_len as u64;
        let flags = meta.tcp_flags as u64;
        // SAFETY: the clock helper has no preconditions.
        let now = if PRECISE_TIMESTAMPS.load() != 0 {
            unsafe { bpf_ktime_get_ns() }
        } else if COARSE_CLOCK_OK {
            coarse_now()
        } else {
            tick_now()
        };
        let flows = if buffer == 0 { &FLOWS_0 } else { &FLOWS_1 };
        match record_cached(buffer, flows, key, bytes, flags, meta.dscp, now, cgroup_id) {
            Stored::Updated => bump(c, stats::BYTES_KEYED, bytes),
            Stored::Inserted => {
                bump(c, stats::BYTES_KEYED, bytes);
                bump(c, stats::NEW_FLOWS, 1);
            }
            Stored::Refused => bump(c, stats::MAP_ERRORS, 1),
        }
    }

    /// Per CPU: the jiffies value and the coarse clock read during that jiffy (see
    /// [`coarse_now`]). Only XDP programs use it (they cannot interrupt each other on a CPU).
    #[map]
    static XDP_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

    /// The coarse CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`), read once per scheduler tick per
    /// CPU: the coarse clock only moves at ticks, so while `jiffies` (a plain load: the verifier
    /// inlines `bpf_jiffies64` on 64-bit JITs) has not moved, the value read earlier in the same
    /// jiffy is the one the helper would return; that saves a kernel function call per packet.
    /// Where the timekeeping CPU is between counting the tick and moving the clock, the value kept
    /// can be the previous tick's for the rest of that tick: a stamp stays within one tick of the
    /// coarse clock, its own resolution.
    #[inline(always)]
    fn coarse_now() -> u64 {
        // SAFETY: helpers without preconditions; `c` is this CPU's entry (XDP runs do not nest).
        unsafe {
            let j = bpf_jiffies64();
            match XDP_CLOCK.get_ptr_mut(0) {
                Some(c) if (*c)[0] == j && (*c)[1] != 0 => (*c)[1],
                Some(c) => {
                    let ns = bpf_ktime_get_coarse_ns();
                    (*c)[0] = j;
                    (*c)[1] = ns;
                    ns
                }
                None => bpf_ktime_get_coarse_ns(),
            }
        }
    }

    /// Per CPU: the jiffies value and the precise clock read during that jiffy (see
    /// [`tick_now`]). Netfilter programs only.
    #[map]
    static NF_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

    /// The netfilter programs' clock: `bpf_ktime_get_ns` (they may not call the coarse helper),
    /// read once per scheduler tick per CPU and reused while `jiffies` has not moved, as
    /// [`coarse_now`] does for XDP: a stamp is the time of an earlier packet of the same tick on
    /// this CPU, at most one tick early (the coarse clock's resolution), and the helper call
    /// (about 25 ns here, docs/BENCHMARKS.md) is paid once per tick instead of per packet.
    /// Netfilter runs can interrupt each other on a CPU (a softirq's packet while a process
    /// sends one): the clock value is stored before the jiffies it belongs to, so a run that
    /// sees the current jiffies also sees a clock value read during it or later.
    #[inline(always)]
    fn tick_now() -> u64 {
        // SAFETY: helpers without preconditions; `c` is this CPU's entry; volatile accesses
        // keep the store order (value, then jiffies) the comment above relies on.
        unsafe {
            let j = bpf_jiffies64();
            match NF_CLOCK.get_ptr_mut(0) {
                Some(c) => {
                    let cj = &raw mut (*c)[0];
                    let cns = &raw mut (*c)[1];
                    if core::ptr::read_volatile(cj) == j {
                        let ns = core::ptr::read_volatile(cns);
                        if ns != 0 {
                            return ns;
                        }
                    }
                    let ns = bpf_ktime_get_ns();
                    core::ptr::write_volatile(cns, ns);
                    core::ptr::write_volatile(cj, j);
                    ns
                }
                None => bpf_ktime_get_ns(),
            }
        }
    }

    #[xdp]
    pub fn flowlens_xdp(ctx: XdpContext) -> u32 {
        let mut meta = FlowMeta::EMPTY;
        let outcome = parse_ethernet_into(&Xdp(&ctx), &mut meta);
        // SAFETY: reading the ingress ifindex from the xdp_md context.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        account::<true>(outcome, &mut meta, OBS_XDP, ifindex, 0);
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn update(v: *mut FlowValue, bytes: u64, flags: u64, dscp: u8, now: u64, cgroup_id: u64) {
        // SAFETY: `v` points into a live map value (RCU-protected for the program's run). The
        // counters use BPF atomic instructions; last_seen and dscp are plain stores (last writer
        // wins, which is the intended semantics).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, bytes);
            if flags != 0 {
                if PLAIN_FLAGS_OR.load() == 0 {
                    atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                        &raw mut (*v).tcp_flags,
                        flags,
                    );
                } else {
                    let f = &raw mut (*v).tcp_flags;
                    let old = core::ptr::read_volatile(f);
                    if old | flags != old {
                        core::ptr::write_volatile(f, old | flags);
                    }
                }
            }
            (*v).last_seen_ns = now;
            (*v).dscp = dscp;
            // The first packet that carried a socket names the flow; later ones (the same
            // socket) need no store. A racing writer can only write the same socket's id.
            if cgroup_id != 0 && core::ptr::read_volatile(&raw const (*v).cgroup_id) == 0 {
                (*v).cgroup_id = cgroup_id;
            }
        }
    }

    enum Stored {
        Updated,
        Inserted,
        Refused,
    }

    /// 1: every program stamps every packet with `bpf_ktime_get_ns`. 0 (default): XDP with the
    /// coarse clock (`bpf_ktime_get_coarse_ns`: the same CLOCK_MONOTONIC at scheduler-tick
    /// resolution, [`coarse_now`]), netfilter programs (which may not call the coarse helper)
    /// with the precise clock read once per tick per CPU ([`tick_now`]): both cost about
    /// 15-25 ns less per packet and stamp at most one tick early. Set at load time
    /// (`--precise-timestamps`); in frozen `.rodata`, so the verifier removes the branches not
    /// taken.
    #[unsafe(no_mangle)]
    static PRECISE_TIMESTAMPS: Global<u8> = Global::new(0);

    /// 0 (default): TCP flags are OR-ed into a flow with a BPF atomic OR (Linux 5.12+). 1: with
    /// a plain read-modify-write, for older kernels; there two CPUs adding different new flags
    /// to one flow at the same instant can lose one of them (packet and byte counts stay exact:
    /// atomic adds exist everywhere). Chosen by the loader (`collector/src/probe.rs`); in frozen
    /// `.rodata`, so the verifier removes the branch not taken.
    #[unsafe(no_mangle)]
    static PLAIN_FLAGS_OR: Global<u8> = Global::new(0);

    #[inline(always)]
    fn record(
        flows: &LruHashMap<FlowKey, FlowValue>,
        key: &FlowKey,
        bytes: u64,
        flags: u64,
        dscp: u8,
        now: u64,
        cgroup_id: u64,
    ) -> Stored {
        if let Some(v) = flows.get_ptr_mut(key) {
            update(v, bytes, flags, dscp, now, cgroup_id);
            return Stored::Updated;
        }
        let fresh = FlowValue::first(bytes, flags, dscp, now, cgroup_id);
        if flows.insert(key, &fresh, BPF_NOEXIST).is_ok() {
            return Stored::Inserted;
        }
        // Another CPU inserted the flow between our lookup and insert: add to its entry.
        match flows.get_ptr_mut(key) {
            Some(v) => {
                update(v, bytes, flags, dscp, now, cgroup_id);
                Stored::Updated
            }
            None => Stored::Refused,
        }
    }

    /// Whether two keys are equal, as six 64-bit compares.
    #[inline(always)]
    fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
        let (a, b) = (words(a), words(b));
        (a[0] ^ b[0])
            | (a[1] ^ b[1])
            | (a[2] ^ b[2])
            | (a[3] ^ b[3])
            | (a[4] ^ b[4])
            | (a[5] ^ b[5])
            == 0
    }

    #[inline(always)]
    fn words(k: &FlowKey) -> &[u64; 6] {
        // SAFETY: FlowKey is 48 bytes, 8-aligned, without implicit padding.
        unsafe { &*(k as *const FlowKey as *const [u64; 6]) }
    }

    /// Counts the packet in the flow cache when its slot holds its flow or is free, else in the
    /// LRU map ([`record`]). Exact under concurrency: a slot is claimed by compare-and-exchange
    /// of its state (`EMPTY` -> `CLAIMED`), filled by its claimer alone (key and the first
    /// packet's value), then published (`CLAIMED` -> [`cache::ready`]); from then on its
    /// counters are only added to atomically. A program that finds its slot claimed but not
    /// yet published counts in the LRU map instead: the flow then has two entries, which the
    /// collector adds up.
    ///
    /// The publishing store is a plain store where the loader says the CPU keeps stores in
    /// order (`TSO_PUBLISH`, x86): a program that reads the ready state then reads the
    /// key and value written before it. Elsewhere it is an atomic exchange (a full barrier).
    /// The plain store matters for new flows: a locked instruction would wait until the
    /// slot's cache lines, usually cold, have arrived; the plain stores let the program finish
    /// while they do.
    #[inline(always)]
    fn record_cached(
        buffer: u32,
        flows: &LruHashMap<FlowKey, FlowValue>,
        key: &FlowKey,
        bytes: u64,
        flags: u64,
        dscp: u8,
        now: u64,
        cgroup_id: u64,
    ) -> Stored {
        // The compatible variant (kernels before 5.12) has no compare-and-exchange: LRU only.
        if PLAIN_FLAGS_OR.load() != 0 {
            return record(flows, key, bytes, flags, dscp, now, cgroup_id);
        }
        let slots = CACHE_SLOTS.load();
        let hash = cache::hash(words(key));
        let i = (buffer & 1) * slots + cache::index(hash, slots);
        let ready = cache::ready(hash);
        let Some(state) = CACHE_STATE.get_ptr_mut(i) else {
            return record(flows, key, bytes, flags, dscp, now, cgroup_id);
        };
        // SAFETY: `state` and `slot` point into live array values; every shared field is
        // accessed with atomics, or written only by the slot's claimer before it publishes.
        unsafe {
            // A plain load where stores stay in order (x86: loads are not reordered with
            // older loads, so the key read below is not read before the state); an atomic
            // fetch (a full barrier) elsewhere.
            let s = if TSO_PUBLISH.load() != 0 {
                core::ptr::read_volatile(state)
            } else {
                atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(state, 0)
            };
            if s == ready {
                if let Some(slot) = CACHE.get_ptr_mut(i)
                    && same_key(&(*slot).key, key)
                {
                    update(&raw mut (*slot).value, bytes, flags, dscp, now, cgroup_id);
                    return Stored::Updated;
                }
            } else if s == cache::EMPTY
                && let Some(slot) = CACHE.get_ptr_mut(i)
            {
                let (_, won) = atomic_cxchg::<
                    u64,
                    { AtomicOrdering::SeqCst },
                    { AtomicOrdering::SeqCst },
                >(state, cache::EMPTY, cache::CLAIMED);
                if won {
                    core::ptr::write_volatile(&raw mut (*slot).key, *key);
                    core::ptr::write_volatile(
                        &raw mut (*slot).value,
                        FlowValue::first(bytes, flags, dscp, now, cgroup_id),
                    );
                    if TSO_PUBLISH.load() != 0 {
                        core::ptr::write_volatile(state, ready);
                    } else {
                        atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(state, ready);
                    }
                    return Stored::Inserted;
                }
            }
        }
        record(flows, key, bytes, flags, dscp, now, cgroup_id)
    }

    /// 1: the CPU keeps stores in order and loads in order (x86's TSO), so the flow cache
    /// publishes and reads slot states with plain stores and loads ([`record_cached`]). 0: with
    /// atomic read-modify-writes (full barriers). Set by the loader from the architecture it
    /// was built for; in frozen `.rodata`, so the verifier removes the branch not taken.
    #[unsafe(no_mangle)]
    static TSO_PUBLISH: Global<u8> = Global::new(0);

    /// Benchmark only: runs of [`flowlens_xdp_bench_new_flow`] on each CPU.
    #[map]
    static BENCH_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Benchmark twin of `flowlens_xdp` whose every run opens a new flow: the key's first
    /// eight bytes are XORed with the CPU and a per-CPU run count, so `BPF_PROG_TEST_RUN` with
    /// `repeat` measures new flows back to back, as in a flood (warm caches), instead of one
    /// syscall per new flow. Costs one per-CPU array increment more than `flowlens_xdp`.
    #[xdp]
    pub fn flowlens_xdp_bench_new_flow(ctx: XdpContext) -> u32 {
        let mut meta = FlowMeta::EMPTY;
        let outcome = parse_ethernet_into(&Xdp(&ctx), &mut meta);
        if let Some(n) = BENCH_RUNS.get_ptr_mut(0) {
            // SAFETY: this CPU's counter; the key is 8-aligned and at least 8 bytes long.
            unsafe {
                *n += 1;
                let cpu = aya_ebpf::helpers::bpf_get_smp_processor_id() as u64;
                *(&raw mut meta.key as *mut u64) ^= *n | (cpu << 48);
            }
        }
        // SAFETY: reading the ingress ifindex from the xdp_md context.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        account::<true>(outcome, &mut meta, OBS_XDP, ifindex, 0);
        xdp_action::XDP_PASS
    }

    /// Counterpart for benchmarks: the same attach point doing nothing.
    #[xdp]
    pub fn flowlens_xdp_noop(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Benchmark only: a TC classifier doing nothing, the baseline of a peer's TC flow program
    /// (`cargo xtask bench` with `FLOWLENS_BENCH_NETOBSERV_OBJECT`, docs/BENCHMARKS.md).
    #[classifier]
    pub fn flowlens_tc_noop(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// `TC_ACT_OK`: let the packet continue.
    const TC_ACT_OK: i32 = 0;

    // ---- netfilter (BPF_PROG_TYPE_NETFILTER) ----
    //
    // aya-obj 0.6 rejects an ELF section named `netfilter` (the whole object would fail to
    // parse), so the netfilter programs live in `socket` sections, which aya registers as socket
    // filters and never loads by itself. The collector's netfilter loader
    // (collector/src/netfilter) loads them as BPF_PROG_TYPE_NETFILTER with the maps of this
    // same object.

    /// Kernel struct offsets, written by the loader from the running kernel's BTF.
    #[unsafe(no_mangle)]
    static NF_OFFSETS: Global<NfOffsets> = Global::new(NfOffsets {
        skb_len: 0,
        skb_data_len: 0,
        skb_data: 0,
        state_hook: 0,
        state_pf: 0,
        state_in: 0,
        state_out: 0,
        dev_ifindex: 0,
        skb_sk: 0,
        sk_state: 0,
        sk_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        socket_identity: 0,
    });

    /// Hooks at or below this number (`NF_INET_FORWARD`) report the input interface, the others
    /// (`LOCAL_OUT`, `POST_ROUTING`) the output interface.
    const NF_INET_FORWARD: u8 = 2;
    const NF_INET_POST_ROUTING: u8 = 4;

    /// Reads a `T` of a kernel struct at `addr` (a struct pointer plus an `NF_OFFSETS` offset).
    ///
    /// `DIRECT = false` (shipped): `bpf_probe_read_kernel`, whose source argument the verifier
    /// does not check, so nothing about the offsets can make the program fail to load.
    /// `DIRECT = true` (benchmark twin `flowlens_nf_direct`): a plain load through the BTF-typed
    /// pointer; it verifies only because `.rodata` is frozen (the verifier then knows each offset
    /// as a constant and matches it against a BTF field of the same size), and it is faster.
    #[inline(always)]
    fn kread<T, const DIRECT: bool>(addr: u64) -> Option<T> {
        if DIRECT {
            // SAFETY: `addr` is a field of a struct the kernel handed us (offset from BTF); the
            // verifier turns this into an exception-handled BTF load (PROBE_MEM).
            Some(unsafe { core::ptr::read_volatile(addr as *const T) })
        } else {
            // SAFETY: bpf_probe_read_kernel copies into a local and fails (instead of
            // faulting) on an unreadable address.
            unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
        }
    }

    /// The IP packet of an skb at a netfilter inet hook, where `skb->data` is the network
    /// header. Reads go through `bpf_probe_read_kernel` and stay inside the linear part
    /// (`len - data_len`); `covers` answers for the whole packet (`len`).
    ///
    /// `head`: when set, the first `have` bytes of the packet, read with one helper call into
    /// this CPU's [`NF_HEAD`] scratch. That holds the IP and transport headers of almost every
    /// packet (IPv4 without options + TCP is 40 bytes, IPv6 + TCP 60), so the parser's reads are
    /// plain loads; a read beyond it (IP options, IPv6 extension headers) is a helper call of
    /// its own, into the stack.
    struct Skb {
        data: u64,
        headlen: usize,
        len: usize,
        head: *const [u8; 2 * HEAD],
        have: usize,
    }

    #[repr(C, align(8))]
    struct Aligned<const N: usize>([u8; N]);

    /// Bytes of the packet read up front (see [`Skb`]).
    const HEAD: usize = 64;

    /// Per-CPU scratch of the netfilter programs: the packet's first [`HEAD`] bytes, and a
    /// generation that every run bumps before using the scratch. A run can be interrupted on
    /// its CPU by another (a softirq's packet while a process sends one) that overwrites the
    /// scratch; the interrupted run sees the generation moved when it resumes and parses again
    /// without the scratch, so a packet is never keyed from another packet's bytes.
    #[repr(C)]
    pub struct NfHead {
        generation: u64,
        /// The first HEAD bytes hold the packet; the rest keeps every masked read in bounds.
        bytes: [u8; 2 * HEAD],
    }

    #[map]
    static NF_HEAD: PerCpuArray<NfHead> = PerCpuArray::with_max_entries(1, 0);

    impl Packet for Skb {
        #[inline(always)]
        fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
            if off + N > self.headlen {
                return None;
            }
            if off + N <= self.have && !self.head.is_null() {
                // `off` < HEAD here; the mask (kept by `opaque`) restates it for verifiers that
                // lose the bound on some paths (Linux 6.12 refused the unmasked read as an
                // "unbounded memory access"), and the scratch is 2 x HEAD long, so any
                // masked offset plus N is inside it.
                let o = opaque(off) & (HEAD - 1);
                // SAFETY: o + N <= 2 * HEAD: inside this CPU's scratch (a map value, so the
                // verifier allows unaligned reads, unlike on the stack); o == off.
                return Some(unsafe {
                    core::ptr::read_unaligned((self.head as *const u8).add(o) as *const [u8; N])
                });
            }
            // 8-aligned: LLVM zeroes it with word stores instead of a call to `memset`, and its
            // wide loads from it stay aligned (the verifier refuses misaligned stack access).
            let mut buf = Aligned([0u8; N]);
            // SAFETY: as in `kread`; `buf` has room for exactly N bytes.
            let r = unsafe {
                bpf_probe_read_kernel_buf((self.data + off as u64) as *const u8, &mut buf.0)
            };
            r.ok().map(|()| buf.0)
        }
        #[inline(always)]
        fn covers(&self, end_off: usize) -> bool {
            end_off <= self.len
        }
    }

    /// Parses the skb's IP packet: with the packet's head read once into the scratch, and
    /// again without it if another run on this CPU took the scratch meanwhile.
    #[inline(always)]
    fn nf_parse(pf: u8, data: u64, headlen: usize, len: usize, meta: &mut FlowMeta) -> Outcome {
        let mut pkt = Skb {
            data,
            headlen,
            len,
            head: core::ptr::null(),
            have: 0,
        };
        let scratch = NF_HEAD.get_ptr_mut(0);
        let mut generation = 0;
        if let Some(h) = scratch {
            // SAFETY: this CPU's scratch; the generation is bumped before the bytes are used
            // and checked after (see `NfHead`).
            unsafe {
                generation = (*h).generation.wrapping_add(1);
                core::ptr::write_volatile(&raw mut (*h).generation, generation);
                let n = if headlen < HEAD { headlen } else { HEAD };
                let dst = (*h).bytes.get_unchecked_mut(..n);
                if bpf_probe_read_kernel_buf(data as *const u8, dst).is_ok() {
                    pkt.head = &raw const (*h).bytes;
                    pkt.have = n;
                }
            }
        }
        let outcome = parse_l3(pf, &pkt, meta);
        let intact = match scratch {
            // SAFETY: as above.
            Some(h) => {
                let now = unsafe { core::ptr::read_volatile(&raw const (*h).generation) };
                now == generation
            }
            None => true,
        };
        if pkt.have == 0 || intact {
            return outcome;
        }
        *meta = FlowMeta::EMPTY;
        pkt.head = core::ptr::null();
        pkt.have = 0;
        parse_l3(pf, &pkt, meta)
    }

    #[inline(always)]
    fn parse_l3(pf: u8, pkt: &Skb, meta: &mut FlowMeta) -> Outcome {
        match pf {
            NFPROTO_IPV4 => parse_ipv4_into(pkt, 0, VLAN_NONE, meta),
            NFPROTO_IPV6 => parse_ipv6_into(pkt, 0, VLAN_NONE, meta),
            _ => Outcome::NonIp,
        }
    }

    /// Counts a packet that could not be keyed, before its hook is known (observation-point
    /// slot 0 of the active buffer, which no program keys flows under).
    #[inline(always)]
    fn skipped(slot: u32) {
        let c = STATS.get_ptr_mut(stats::index(active_buffer(), 0));
        bump(c, stats::PACKETS_SEEN, 1);
        bump(c, slot, 1);
    }

    #[inline(always)]
    fn nf_observe<const DIRECT: bool>(ctx: *const u64) {
        let o = NF_OFFSETS.load();
        // SAFETY: the context of a netfilter program is `struct bpf_nf_ctx { state, skb }`; the
        // loader checked those two offsets (0 and 8) against the kernel's BTF.
        let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
        let (Some(hook), Some(pf)) = (
            kread::<u8, DIRECT>(state + o.state_hook as u64),
            kread::<u8, DIRECT>(state + o.state_pf as u64),
        ) else {
            skipped(stats::UNPARSED);
            return;
        };
        if hook > NF_INET_POST_ROUTING {
            // Not an inet hook: the loader attaches only to the five inet hooks.
            skipped(stats::NON_IP);
            return;
        }
        let dev_off = if hook <= NF_INET_FORWARD {
            o.state_in
        } else {
            o.state_out
        };
        let ifindex = match kread::<u64, DIRECT>(state + dev_off as u64) {
            Some(dev) if dev != 0 => kread::<u32, DIRECT>(dev + o.dev_ifindex as u64).unwrap_or(0),
            _ => 0,
        };
        let (Some(data), Some(len), Some(data_len)) = (
            kread::<u64, DIRECT>(skb + o.skb_data as u64),
            kread::<u32, DIRECT>(skb + o.skb_len as u64),
            kread::<u32, DIRECT>(skb + o.skb_data_len as u64),
        ) else {
            skipped(stats::UNPARSED);
            return;
        };
        let mut meta = FlowMeta::EMPTY;
        let outcome = nf_parse(
            pf,
            data,
            len.saturating_sub(data_len) as usize,
            len as usize,
            &mut meta,
        );
        let cgroup_id = if o.socket_identity != 0 {
            socket_cgroup::<DIRECT>(&o, skb)
        } else {
            0
        };
        account::<false>(
            outcome,
            &mut meta,
            OBS_NF_PRE_ROUTING + hook,
            ifindex,
            cgroup_id,
        );
    }

    /// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: `skb->sk` is then a `struct inet_timewait_sock`
    /// or `struct request_sock`, which have no `sk_cgrp_data` (not a "full socket").
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_NEW_SYN_RECV: u8 = 12;

    /// cgroup v2 id of the full socket `skb->sk` (0 when there is none):
    /// `skb->sk->sk_cgrp_data.cgroup->kn->id`. Locally generated packets carry their socket
    /// (`nf_local_out`, `nf_post_routing`); received ones do after early demux
    /// (`nf_local_in`, established TCP and connected UDP). A packet that crossed a veth from
    /// another namespace has been orphaned (no socket).
    #[inline(always)]
    fn socket_cgroup<const DIRECT: bool>(o: &NfOffsets, skb: u64) -> u64 {
        let sk = match kread::<u64, DIRECT>(skb + o.skb_sk as u64) {
            Some(sk) if sk != 0 => sk,
            _ => return 0,
        };
        match kread::<u8, DIRECT>(sk + o.sk_state as u64) {
            Some(TCP_TIME_WAIT | TCP_NEW_SYN_RECV) | None => return 0,
            Some(_) => {}
        }
        let cgrp = match kread::<u64, DIRECT>(sk + o.sk_cgroup as u64) {
            Some(c) if c != 0 => c,
            _ => return 0,
        };
        let id = match kread::<u64, DIRECT>(cgrp + o.cgroup_kn as u64) {
            Some(kn) if kn != 0 => kread::<u64, DIRECT>(kn + o.kn_id as u64).unwrap_or(0),
            _ => 0,
        };
        // The root cgroup (id 1) holds the kernel's own sockets (TCP's per-CPU control
        // sockets send RSTs and TIME_WAIT ACKs): they name no workload.
        if id == ROOT_CGROUP_ID { 0 } else { id }
    }

    /// kernfs id of the cgroup v2 root.
    const ROOT_CGROUP_ID: u64 = 1;

    /// Netfilter hook probe (IPv4 and IPv6, any inet hook): counts the packet, returns NF_ACCEPT.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "socket/flowlens_nf")]
    pub extern "C" fn flowlens_nf(ctx: *const u64) -> i32 {
        nf_observe::<false>(ctx);
        NF_ACCEPT
    }

    /// Benchmark twin of `flowlens_nf` reading the kernel structs with direct BTF loads instead
    /// of `bpf_probe_read_kernel` (packet bytes are read the same way in both).
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "socket/flowlens_nf_direct")]
    pub extern "C" fn flowlens_nf_direct(ctx: *const u64) -> i32 {
        nf_observe::<true>(ctx);
        NF_ACCEPT
    }

    /// Counterpart for benchmarks: a netfilter program that only accepts.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "socket/flowlens_nf_noop")]
    pub extern "C" fn flowlens_nf_noop(_ctx: *const u64) -> i32 {
        NF_ACCEPT
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
