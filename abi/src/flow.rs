//! Kernel-shared flow key, value and counters.
//!
//! Both structs are `#[repr(C)]` with explicit padding fields: the kernel hashes every byte of a
//! key, so implicit padding (with undefined contents) would split one flow into many.

/// Observation point of the XDP ingress program.
pub const OBS_XDP: u8 = 1;
/// Netfilter hook observation points: `OBS_NF_PRE_ROUTING + hooknum` for the kernel's
/// `NF_INET_*` hook numbers (0 = pre_routing ... 4 = post_routing).
pub const OBS_NF_PRE_ROUTING: u8 = 2;
pub const OBS_NF_LOCAL_IN: u8 = 3;
pub const OBS_NF_FORWARD: u8 = 4;
pub const OBS_NF_LOCAL_OUT: u8 = 5;
pub const OBS_NF_POST_ROUTING: u8 = 6;

/// `FlowKey::vlan_id` when the frame carried no VLAN tag (not a valid 12-bit VID).
pub const VLAN_NONE: u16 = 0xffff;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// Identity of a unidirectional flow as seen at one observation point.
///
/// Addresses are 16 bytes; IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`). Ports are in
/// host byte order and zero when the protocol has none (or for non-first fragments).
///
/// Aligned to 8 (its size, 48, is unchanged): the probe reads it as six 64-bit words to hash
/// and compare it (see [`CacheSlot`]), and the verifier refuses misaligned stack access.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// Outer VLAN id (802.1Q or 802.1ad), or [`VLAN_NONE`].
    pub vlan_id: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// IANA protocol number of the transport (after IPv6 extension headers).
    pub protocol: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// One of the `OBS_*` constants.
    pub observation_point: u8,
    pub _pad: u8,
    /// Interface index the packet was observed on (ingress for XDP).
    pub ifindex: u32,
}

impl FlowKey {
    pub const ZERO: FlowKey = FlowKey {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        vlan_id: VLAN_NONE,
        ip_version: 0,
        protocol: 0,
        icmp_type: 0,
        icmp_code: 0,
        observation_point: 0,
        _pad: 0,
        ifindex: 0,
    };
}

/// Counters of one flow since it was (re)inserted into the kernel map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets: u64,
    /// Sum of IP-layer lengths (IPFIX octetDeltaCount): IPv4 total length, IPv6 40 + payload length.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of TCP flags (bit 8 = NS), widened to 64 bits: the BPF target (cpu v1, which the
    /// linker emits) only has 64-bit atomic OR.
    pub tcp_flags: u64,
    /// DSCP of the last packet.
    pub dscp: u8,
    pub _pad: [u8; 7],
    /// cgroup v2 id (kernfs node id, the cgroup directory's inode number) of the local socket
    /// that sent (`nf_local_out`, `nf_post_routing`) or receives (`nf_local_in`, after early
    /// demux) the flow's packets; 0 when no packet of the delta carried a full local socket.
    /// The first non-zero id a packet brings is kept (a socket's cgroup never changes).
    pub cgroup_id: u64,
}

impl FlowValue {
    /// The value of a flow's first packet.
    #[inline(always)]
    pub const fn first(bytes: u64, tcp_flags: u64, dscp: u8, now_ns: u64, cgroup_id: u64) -> Self {
        FlowValue {
            packets: 1,
            bytes,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            tcp_flags,
            dscp,
            _pad: [0; 7],
            cgroup_id,
        }
    }
}

/// One slot of the probe's flow cache: a direct-mapped array in front of the LRU hash map.
/// A packet whose key hashes to a slot holding its flow is counted there without a hash-map
/// lookup (an inlined array access instead of a kernel function call); a flow whose slot is
/// taken goes to the LRU map as before. Slots are only claimed, never evicted or reused before
/// the drain, which reads every ready slot of a still buffer and empties its states.
///
/// Two arrays hold the cache, each with the slots of both flow buffers (buffer `b`'s slot `i`
/// at `b * slots + i`, so every program's lookups are of one map, which the verifier inlines):
/// `CACHE` of these slots and `CACHE_STATE` of one `u64` state per slot ([`cache::EMPTY`],
/// [`cache::CLAIMED`] or [`cache::ready`] of the key's hash). The states are dense (8 per cache
/// line, 128 KiB per buffer), so checking a slot rarely misses the CPU cache: a packet whose
/// slot holds another flow never touches that flow's slot, and a new flow claims its slot on a
/// state line, then fills the slot with plain stores (which do not wait for the slot's memory).
///
/// 128 bytes (padding included): a slot is two whole cache lines (key and first counters in
/// one), never three.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot {
    pub key: FlowKey,
    pub value: FlowValue,
    pub _pad: [u8; 24],
}

impl Default for CacheSlot {
    fn default() -> Self {
        CacheSlot {
            key: FlowKey::ZERO,
            value: FlowValue::default(),
            _pad: [0; 24],
        }
    }
}

impl FlowKey {
    /// The key as the six 64-bit words the probe hashes and compares (its memory, native
    /// byte order).
    pub fn words(&self) -> [u64; 6] {
        let mut b = [0u8; 48];
        b[..16].copy_from_slice(&self.src_addr);
        b[16..32].copy_from_slice(&self.dst_addr);
        b[32..34].copy_from_slice(&self.src_port.to_ne_bytes());
        b[34..36].copy_from_slice(&self.dst_port.to_ne_bytes());
        b[36..38].copy_from_slice(&self.vlan_id.to_ne_bytes());
        b[38] = self.ip_version;
        b[39] = self.protocol;
        b[40] = self.icmp_type;
        b[41] = self.icmp_code;
        b[42] = self.observation_point;
        b[43] = self._pad;
        b[44..48].copy_from_slice(&self.ifindex.to_ne_bytes());
        let mut w = [0u64; 6];
        for (i, x) in w.iter_mut().enumerate() {
            let mut c = [0u8; 8];
            c.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *x = u64::from_ne_bytes(c);
        }
        w
    }

    /// The flow-cache slot the probe uses for this key ([`CacheSlot`]) in a cache of `slots`.
    pub fn cache_slot(&self, slots: u32) -> u32 {
        cache::index(cache::hash(&self.words()), slots)
    }
}

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey::ZERO
    }
}

pub mod cache {
    /// Most slots per buffer (16,384 x 128 bytes = 2 MiB of slots and 128 KiB of states per
    /// buffer); see [`slots_for`].
    pub const SLOTS: u32 = 16_384;

    /// Slots per buffer for `max_flows` LRU entries per buffer: the largest power of two at
    /// most a quarter of it (at least 1), at most [`SLOTS`]. A buffer then holds at most
    /// `max_flows + slots` flows: `--max-flows` keeps bounding the kernel's memory, and small
    /// buffers still overflow (and count their evictions) as before.
    pub const fn slots_for(max_flows: u32) -> u32 {
        let q = max_flows / 4;
        if q >= SLOTS {
            SLOTS
        } else if q <= 1 {
            1
        } else {
            1 << (31 - q.leading_zeros())
        }
    }
    /// A free slot.
    pub const EMPTY: u64 = 0;
    /// Being written by the program that claimed it; not yet counted into.
    pub const CLAIMED: u64 = 1;

    /// The state of a slot holding the flow whose key hashes to `hash` ([`hash`]): key and
    /// first packet written, programs with this key count into it. Never [`EMPTY`] or
    /// [`CLAIMED`] (its low two bits are `10`); the other bits are the hash's, so a packet of
    /// another flow hashing to the same slot almost always sees the slot is not its flow's
    /// from the state alone.
    #[inline(always)]
    pub const fn ready(hash: u64) -> u64 {
        (hash & !3) | 2
    }

    /// Whether a state is [`ready`] (holds a flow).
    #[inline(always)]
    pub const fn is_ready(state: u64) -> bool {
        state & 3 == 2
    }

    /// The hash of a key (its six 64-bit words): xor, multiply, then fold the high half down
    /// (a multiplication only carries a bit's influence upwards, and the last address byte
    /// sits in a word's top bits), per word. The same function in the probe and in user space.
    #[inline(always)]
    pub fn hash(words: &[u64; 6]) -> u64 {
        let mut h: u64 = 0;
        let mut i = 0;
        while i < 6 {
            h = (h ^ words[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 32;
            i += 1;
        }
        h
    }

    /// The slot of a key's [`hash`] in a buffer's cache of `slots` (a power of two, the
    /// loader's [`slots_for`]).
    #[inline(always)]
    pub const fn index(hash: u64, slots: u32) -> u32 {
        (hash as u32) & (slots - 1)
    }
}

/// The per-CPU `STATS` map: one entry per (flow-map buffer, observation point), each an array
/// of `COUNT` `u64` slots. A program adds to the entry of the buffer it writes its flows into, so
/// once the collector has swapped buffers and waited out running programs, a buffer's counters
/// and its flow map are both still and can be compared exactly (see docs/ARCHITECTURE.md).
pub mod stats {
    /// Every packet the program ran on.
    pub const PACKETS_SEEN: u32 = 0;
    /// Frames that are not IPv4/IPv6 (ARP, LLDP, ...): counted, not keyed.
    pub const NON_IP: u32 = 1;
    /// IP frames that are truncated or malformed: counted, never attributed to a flow.
    pub const UNPARSED: u32 = 2;
    /// Flow-map inserts the kernel refused (other than a lost insert race).
    pub const MAP_ERRORS: u32 = 3;
    /// IP-layer bytes of all keyed packets.
    pub const BYTES_KEYED: u32 = 4;
    /// Flow entries inserted: how full the buffer is (entries are only removed by the drain,
    /// or by LRU eviction when it is full). Drives the early drain.
    pub const NEW_FLOWS: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "packets_seen",
        "non_ip",
        "unparsed",
        "map_errors",
        "bytes_keyed",
        "new_flows",
    ];

    /// Observation-point slots per buffer (`OBS_*` values are below this).
    pub const OBS_SLOTS: u32 = 8;
    /// Flow-map buffers (double buffering).
    pub const BUFFERS: u32 = 2;
    /// Entries of the `STATS` map.
    pub const ENTRIES: u32 = BUFFERS * OBS_SLOTS;

    /// `STATS` index of (buffer, observation point).
    #[inline(always)]
    pub const fn index(buffer: u32, observation_point: u8) -> u32 {
        buffer * OBS_SLOTS + (observation_point as u32 & (OBS_SLOTS - 1))
    }
}

/// Netfilter verdict the netfilter probe always returns: it observes, it never drops.
pub const NF_ACCEPT: i32 = 1;
/// Netfilter protocol families the probe attaches to (`NFPROTO_*`).
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// Byte offsets into kernel structs that the netfilter probe reads, found by the loader in the
/// running kernel's BTF (`/sys/kernel/btf/vmlinux`) and handed to the program as the read-only
/// global `NF_OFFSETS`: Rust eBPF has no CO-RE, so the layout of `struct sk_buff` and friends
/// must come from the running kernel, not from the build machine.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NfOffsets {
    /// `struct sk_buff`: `len` (u32), `data_len` (u32), `data` (pointer).
    pub skb_len: u32,
    pub skb_data_len: u32,
    pub skb_data: u32,
    /// `struct nf_hook_state`: `hook` (u8), `pf` (u8), `in`, `out` (pointers).
    pub state_hook: u32,
    pub state_pf: u32,
    pub state_in: u32,
    pub state_out: u32,
    /// `struct net_device`: `ifindex` (int).
    pub dev_ifindex: u32,
    /// Socket identity (issue 12): `sk_buff.sk` (pointer), `sock.__sk_common.skc_state` (u8),
    /// `sock.sk_cgrp_data.cgroup` (pointer), `cgroup.kn` (pointer), `kernfs_node.id` (u64).
    pub skb_sk: u32,
    pub sk_state: u32,
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// 1: netfilter programs read the socket's cgroup id (the five reads above, for packets
    /// with a socket); 0: they don't (the benchmark's side-by-side baseline). In frozen
    /// `.rodata`, so the verifier drops the branch not taken.
    pub socket_identity: u32,
}

#[cfg(feature = "aya")]
mod pod {
    // SAFETY: #[repr(C)], Copy, fourteen u32 fields, no padding.
    unsafe impl aya::Pod for super::NfOffsets {}
    // SAFETY: both types are #[repr(C)], Copy, contain only integers and byte arrays, and have no
    // implicit padding (the explicit `_pad` fields fill every gap; see the size test below).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: #[repr(C)]: the two types above (48 and 56 bytes, 8-aligned), then explicit
    // padding to 128 bytes.
    unsafe impl aya::Pod for super::CacheSlot {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16 + 16 + 2 * 3 + 6 + 4);
        assert_eq!(core::mem::size_of::<FlowValue>(), 8 * 5 + 1 + 7 + 8);
        assert_eq!(core::mem::size_of::<NfOffsets>(), 4 * 14);
        assert_eq!(core::mem::align_of::<FlowKey>(), 8);
        assert_eq!(core::mem::size_of::<CacheSlot>(), 48 + 56 + 24);
        assert_eq!(core::mem::size_of::<CacheSlot>(), 128);
    }

    /// `words` is the key's memory, as the probe reads it (a pointer cast there).
    #[test]
    fn key_words_are_its_memory() {
        let mut k = FlowKey::ZERO;
        k.src_addr = core::array::from_fn(|i| i as u8 + 1);
        k.dst_addr = core::array::from_fn(|i| 0x80 + i as u8);
        k.src_port = 0x1234;
        k.dst_port = 0x5678;
        k.ip_version = 6;
        k.protocol = 17;
        k.icmp_type = 3;
        k.icmp_code = 4;
        k.observation_point = OBS_XDP;
        k.ifindex = 0xdead_beef;
        // SAFETY: FlowKey is 48 bytes, 8-aligned, no implicit padding (see above).
        let mem = unsafe { *(&k as *const FlowKey as *const [u64; 6]) };
        assert_eq!(k.words(), mem);
        assert!(k.cache_slot(cache::SLOTS) < cache::SLOTS);
        let mut other = k;
        other.src_port += 1;
        assert_ne!(other.words(), k.words());
    }

    /// Keys that differ in one address byte (any of them) or one port spread over the slots:
    /// 4096 consecutive IPv4 sources (last byte fastest) fill most of 4096 distinct slots.
    #[test]
    fn cache_slots_spread_sequential_keys() {
        let mut k = FlowKey::ZERO;
        k.ip_version = 4;
        k.observation_point = OBS_XDP;
        let mut seen = std::collections::HashSet::new();
        for i in 0u32..4096 {
            k.src_addr[12..16].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            seen.insert(k.cache_slot(cache::SLOTS));
        }
        // Uniform hashing of 4096 keys into 16384 slots leaves ~3600 distinct.
        assert!(seen.len() > 3400, "{} slots", seen.len());
        let mut seen = std::collections::HashSet::new();
        for p in 0u16..4096 {
            k.src_port = p;
            seen.insert(k.cache_slot(cache::SLOTS));
        }
        assert!(seen.len() > 3400, "{} slots", seen.len());
    }

    /// A ready state is never mistaken for a free or claimed slot, and names its hash: another
    /// key's state differs unless the hashes agree in all but their two lowest bits.
    #[test]
    fn ready_states_are_neither_empty_nor_claimed() {
        for h in [0u64, 1, 2, 3, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            let r = cache::ready(h);
            assert!(cache::is_ready(r), "{h:#x}");
            assert_ne!(r, cache::EMPTY);
            assert_ne!(r, cache::CLAIMED);
            assert!(!cache::is_ready(cache::EMPTY) && !cache::is_ready(cache::CLAIMED));
        }
        let mut a = FlowKey::ZERO;
        a.ip_version = 4;
        let mut b = a;
        b.src_port = 1;
        let (ha, hb) = (cache::hash(&a.words()), cache::hash(&b.words()));
        assert_ne!(cache::ready(ha), cache::ready(hb));
        assert_eq!(a.cache_slot(cache::SLOTS), cache::index(ha, cache::SLOTS));
    }

    #[test]
    fn cache_slots_follow_max_flows() {
        assert_eq!(cache::slots_for(8), 2);
        assert_eq!(cache::slots_for(3), 1);
        assert_eq!(cache::slots_for(1000), 128);
        assert_eq!(cache::slots_for(65_536), cache::SLOTS);
        assert_eq!(cache::slots_for(u32::MAX), cache::SLOTS);
    }

    #[test]
    fn stats_index_separates_buffers_and_points() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..stats::BUFFERS {
            for p in 0..stats::OBS_SLOTS as u8 {
                let i = stats::index(b, p);
                assert!(i < stats::ENTRIES);
                assert!(seen.insert(i), "index {i} used twice");
            }
        }
        assert!(OBS_NF_POST_ROUTING < stats::OBS_SLOTS as u8);
    }
}
