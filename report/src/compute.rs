//! Aggregation over record batches, and the finished [`Report`] (what `--json` serialises).
//!
//! Each scan thread owns one [`Agg`] and feeds it batches; the per-thread aggregates are merged
//! and then [`finish`]ed. Rules (documented in docs/REPORT.md):
//!
//! * A record is selected when its `flow_end` lies in `[from, to)` (the partition key, so
//!   partition pruning is exact and adjacent periods never share a record) and its
//!   `observation_point` is the chosen one. Totals and top talkers use whole records.
//! * Time series: a record's bytes and packets are spread uniformly over `[flow_start, flow_end]`
//!   and each bucket gets the share of that interval it overlaps (a zero-length record goes
//!   entirely into the bucket holding `flow_end`). Buckets are aligned to the Unix epoch.
//! * Percentiles: nearest rank over every bucket of the series (empty buckets count as 0):
//!   the p-th percentile of N sorted values is the value at 1-based rank `ceil(p/100 * N)`.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
};

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt16Array, UInt32Array, types::Int32Type,
};
use serde::Serialize;

use super::ReportError;

/// An FxHash-style hasher (rustc's) with a finaliser: much faster than SipHash for the short
/// keys aggregated here; the input is our own files, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let (chunks, rest) = bytes.as_chunks::<8>();
        for c in chunks {
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(*c)).wrapping_mul(K);
        }
        for &b in rest {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    /// splitmix64's finaliser: a multiply only carries entropy upwards, and the hash table
    /// indexes by the low bits, so without it keys that differ only in high bits (the smaller
    /// id of a conversation pair) would collide.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Records, packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, packets: u64, bytes: u64) {
        self.records += 1;
        self.packets += packets;
        self.bytes += bytes;
    }
    fn merge(&mut self, o: &Counts) {
        self.records += o.records;
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// Bytes and packets per bucket of one interface/direction, growable at both ends.
#[derive(Clone, Debug, Default)]
struct SeriesAcc {
    /// Bucket index (since the epoch) of `v[0]`.
    base: i64,
    /// (bytes, packets) per bucket in fixed point ([`FRAC_BITS`] fraction bits): integer sums do
    /// not depend on the order rows arrive in, so any rewrite of the lake (other row order,
    /// other row groups, other thread count) gives bit-identical rates, and so can SQL engines.
    v: Vec<(u128, u128)>,
    counts: Counts,
    /// A record would have grown `v` past [`MAX_BUCKETS`]: the report fails with an error
    /// instead of allocating (e.g. one `flow_end` in 1971 among records of 2026).
    too_wide: bool,
}

/// Fraction bits of the series accumulators.
pub const FRAC_BITS: u32 = 32;

/// `x * num / den` in fixed point, rounded down (`num <= den`, `den > 0`): the share of a
/// record's count that falls into one bucket. Exact integer arithmetic, no overflow for any
/// `u64` count and any span below 2^64 µs.
pub fn share(x: u64, num: u64, den: u64) -> u128 {
    // Fast path in 64 bits (the usual record: product below 2^64, span below 71 minutes).
    if let Some(prod) = x.checked_mul(num)
        && den < 1 << 32
    {
        let (q, r) = (prod / den, prod % den);
        return ((q as u128) << FRAC_BITS) + ((r << FRAC_BITS) / den) as u128;
    }
    let prod = x as u128 * num as u128;
    let (q, r) = (prod / den as u128, prod % den as u128);
    (q << FRAC_BITS) + (r << FRAC_BITS) / den as u128
}

/// A fixed-point accumulator as a float.
pub fn fixed_to_f64(v: u128) -> f64 {
    v as f64 / (1u64 << FRAC_BITS) as f64
}

/// Most buckets a series may have (the report refuses more, see `build`).
pub const MAX_BUCKETS: i64 = 1_000_000;

/// A record longer than this (or with `flow_start` after `flow_end`, or at/before the epoch)
/// is counted as zero-length at its `flow_end` and in `rows_clamped`.
pub const MAX_RECORD_SPAN_US: i64 = 86_400_000_000;

impl SeriesAcc {
    fn slot(&mut self, idx: i64) -> &mut (u128, u128) {
        if self.v.is_empty() {
            self.base = idx;
        }
        let (lo, hi) = (
            self.base.min(idx),
            (self.base + self.v.len() as i64).max(idx + 1),
        );
        if hi - lo > MAX_BUCKETS + 1 {
            self.too_wide = true;
            // A scratch slot: the report fails before anything reads it.
            self.v.resize(self.v.len().max(1), (0, 0));
            return &mut self.v[0];
        }
        if idx < self.base {
            let grow = (self.base - idx) as usize;
            let mut nv = vec![(0, 0); grow];
            nv.append(&mut self.v);
            self.v = nv;
            self.base = idx;
        }
        let off = (idx - self.base) as usize;
        if off >= self.v.len() {
            self.v.resize(off + 1, (0, 0));
        }
        &mut self.v[off]
    }

    fn add(&mut self, bucket_us: i64, start: i64, end: i64, packets: u64, bytes: u64) {
        let first = start.min(end).div_euclid(bucket_us);
        let last = end.div_euclid(bucket_us);
        if end <= start || first == last {
            let s = self.slot(last);
            s.0 += (bytes as u128) << FRAC_BITS;
            s.1 += (packets as u128) << FRAC_BITS;
            return;
        }
        let d = (end - start) as u64;
        for idx in first..=last {
            let lo = start.max(idx * bucket_us);
            let hi = end.min((idx + 1) * bucket_us);
            if hi <= lo {
                continue;
            }
            let ov = (hi - lo) as u64;
            let s = self.slot(idx);
            s.0 += share(bytes, ov, d);
            s.1 += share(packets, ov, d);
        }
    }

    fn merge(&mut self, o: &SeriesAcc) {
        for (i, (b, p)) in o.v.iter().enumerate() {
            let s = self.slot(o.base + i as i64);
            s.0 += b;
            s.1 += p;
        }
        self.counts.merge(&o.counts);
        self.too_wide |= o.too_wide;
    }
}

/// What to select while aggregating.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Inclusive lower bound on `flow_end` (µs since the epoch).
    pub from_us: i64,
    /// Exclusive upper bound on `flow_end`.
    pub to_us: i64,
    pub observation_point: String,
    pub bucket_us: i64,
    /// Keep the top-talker maps (false for the previous-period scan, which needs only series).
    pub talkers: bool,
    /// Only rows whose `host` is one of these (empty: every host; a file without a `host`
    /// column has host null, which no name matches).
    pub hosts: Vec<String>,
    /// `--group-by`: also rank and chart the ends grouped by this (with `talkers`).
    pub group_by: Option<GroupBy>,
}

/// `--group-by`: what names an end in the grouped rankings, conversations and series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// `*_k8s_namespace`.
    Namespace,
    /// `namespace/OwnerKind/owner` from `*_k8s_namespace`, `*_k8s_owner_kind`, `*_k8s_owner_name`.
    Workload,
    /// `namespace/pod` from `*_k8s_namespace`, `*_k8s_pod_name`.
    Pod,
    /// `*_container_id`.
    Container,
    /// `*_cgroup`.
    Cgroup,
    /// `*_label` (`--label-cidrs`).
    Label,
    /// The end's Kubernetes node, `*_k8s_node_name`.
    Host,
}

/// The group of an end whose defining column is null or absent (older lakes, other writers).
pub const UNKNOWN_GROUP: &str = "(unknown)";

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "namespace" => GroupBy::Namespace,
            "workload" => GroupBy::Workload,
            "pod" => GroupBy::Pod,
            "container" => GroupBy::Container,
            "cgroup" => GroupBy::Cgroup,
            "label" => GroupBy::Label,
            "host" => GroupBy::Host,
            _ => {
                return Err(format!(
                    "--group-by {s:?}: expected namespace, workload, pod, container, cgroup, label or host"
                ));
            }
        })
    }
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Namespace => "namespace",
            GroupBy::Workload => "workload",
            GroupBy::Pod => "pod",
            GroupBy::Container => "container",
            GroupBy::Cgroup => "cgroup",
            GroupBy::Label => "label",
            GroupBy::Host => "host",
        }
    }
    /// Column suffixes (after `source_` / `destination_`) the group is made of; the last one
    /// decides: when it is null the end is [`UNKNOWN_GROUP`].
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            GroupBy::Namespace => &["k8s_namespace"],
            GroupBy::Workload => &["k8s_namespace", "k8s_owner_kind", "k8s_owner_name"],
            GroupBy::Pod => &["k8s_namespace", "k8s_pod_name"],
            GroupBy::Container => &["container_id"],
            GroupBy::Cgroup => &["cgroup"],
            GroupBy::Label => &["label"],
            GroupBy::Host => &["k8s_node_name"],
        }
    }
    /// Every column read for this grouping (both ends).
    pub fn columns(self) -> Vec<String> {
        ["source", "destination"]
            .iter()
            .flat_map(|e| self.fields().iter().map(move |f| format!("{e}_{f}")))
            .collect()
    }
    /// The group of one end from the values of [`GroupBy::fields`] (null: `None`).
    pub fn label(self, v: &[Option<&str>]) -> String {
        let Some(Some(last)) = v.last() else {
            return UNKNOWN_GROUP.to_string();
        };
        let or = |x: Option<&str>| x.unwrap_or(UNKNOWN_GROUP).to_string();
        match self {
            GroupBy::Workload => format!("{}/{}/{last}", or(v[0]), or(v[1])),
            GroupBy::Pod => format!("{}/{last}", or(v[0])),
            _ => last.to_string(),
        }
    }
}

/// Per-group totals of `--group-by` (ends named by [`GroupBy::label`]).
#[derive(Default)]
struct GroupAgg {
    src: FxMap<String, Counts>,
    dst: FxMap<String, Counts>,
    /// Unordered pair (smaller label first).
    conversations: FxMap<(String, String), Counts>,
    /// (group, `sent` | `received`) → series.
    series: FxMap<(String, &'static str), SeriesAcc>,
}

impl GroupAgg {
    fn merge(&mut self, o: GroupAgg) {
        for (k, c) in o.src {
            self.src.entry(k).or_default().merge(&c);
        }
        for (k, c) in o.dst {
            self.dst.entry(k).or_default().merge(&c);
        }
        for (k, c) in o.conversations {
            self.conversations.entry(k).or_default().merge(&c);
        }
        for (k, s) in o.series {
            self.series.entry(k).or_default().merge(&s);
        }
    }
}

/// The columns the report reads (projection).
pub const COLUMNS: &[&str] = super::normalize::REQUIRED;

/// Interned strings: id per distinct value, in first-seen order.
#[derive(Default)]
struct Interner {
    ids: FxMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.ids.insert(s.to_string(), i);
        self.names.push(s.to_string());
        i
    }
}

/// Top-talker counters keyed by interned ids (no string work per row beyond one hash lookup
/// per address): addresses, conversations as an unordered id pair, services as
/// (transport id, destination port).
#[derive(Default)]
struct Talkers {
    addrs: Interner,
    /// Indexed by address id.
    src: Vec<Counts>,
    dst: Vec<Counts>,
    /// (smaller id) << 32 | (larger id).
    conversations: FxMap<u64, Counts>,
    transports: Interner,
    /// transport id << 16 | destination port.
    services: FxMap<u32, Counts>,
    last_transport: Option<(String, u32)>,
}

fn at(v: &mut Vec<Counts>, i: u32) -> &mut Counts {
    let i = i as usize;
    if i >= v.len() {
        v.resize(i + 1, Counts::default());
    }
    &mut v[i]
}

fn pair(a: u32, b: u32) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo as u64) << 32 | hi as u64
}

impl Talkers {
    fn add(&mut self, a: u32, z: u32, transport: &str, dport: u16, p: u64, b: u64) {
        at(&mut self.src, a).add(p, b);
        at(&mut self.dst, z).add(p, b);
        self.conversations.entry(pair(a, z)).or_default().add(p, b);
        let t = match &self.last_transport {
            Some((name, id)) if name == transport => *id,
            _ => {
                let id = self.transports.id(transport);
                self.last_transport = Some((transport.to_string(), id));
                id
            }
        };
        self.services
            .entry(t << 16 | dport as u32)
            .or_default()
            .add(p, b);
    }

    /// Adds `o` into `self`, translating its ids.
    fn merge(&mut self, o: Talkers) {
        let map: Vec<u32> = o.addrs.names.iter().map(|n| self.addrs.id(n)).collect();
        for (i, c) in o.src.iter().enumerate() {
            at(&mut self.src, map[i]).merge(c);
        }
        for (i, c) in o.dst.iter().enumerate() {
            at(&mut self.dst, map[i]).merge(c);
        }
        for (k, c) in o.conversations {
            let (a, z) = (map[(k >> 32) as usize], map[(k & 0xffff_ffff) as usize]);
            self.conversations.entry(pair(a, z)).or_default().merge(&c);
        }
        let tmap: Vec<u32> = o
            .transports
            .names
            .iter()
            .map(|n| self.transports.id(n))
            .collect();
        for (k, c) in o.services {
            let t = tmap[(k >> 16) as usize];
            self.services
                .entry(t << 16 | (k & 0xffff))
                .or_default()
                .merge(&c);
        }
    }

    fn conversation_name(&self, k: u64) -> String {
        let a = &self.addrs.names[(k >> 32) as usize];
        let z = &self.addrs.names[(k & 0xffff_ffff) as usize];
        let (lo, hi) = if a <= z { (a, z) } else { (z, a) };
        format!("{lo} <-> {hi}")
    }

    fn service_name(&self, k: u32) -> String {
        format!(
            "{}/{}",
            self.transports.names[(k >> 16) as usize],
            k & 0xffff
        )
    }
}

/// Columns read as `Dictionary(Int32, Utf8)` (see `scan::dictionary_hint`).
pub const DICTIONARY_COLUMNS: &[&str] = &["source_address", "destination_address"];

/// A text column as the reader delivered it: plain, or dictionary keys with the interned id of
/// each dictionary value.
enum Addr<'a> {
    Plain(&'a StringArray),
    Dict(&'a [i32], &'a [u32]),
}

/// Interned ids of the current dictionary of one column. The dictionary `ArrayRef` is kept, so
/// `Arc::ptr_eq` identifies the same dictionary across batches of a column chunk (the reader
/// shares it) and its memory cannot be reused for another one while cached.
#[derive(Default)]
struct DictCache {
    values: Option<ArrayRef>,
    ids: Vec<u32>,
}

impl DictCache {
    fn ids(&mut self, values: &ArrayRef, interner: &mut Interner) -> Result<(), ReportError> {
        if !self.values.as_ref().is_some_and(|v| Arc::ptr_eq(v, values)) {
            let s = values
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| ReportError::Schema("address dictionary is not text".into()))?;
            self.ids.clear();
            self.ids
                .extend((0..s.len()).map(|i| interner.id(s.value(i))));
            self.values = Some(values.clone());
        }
        Ok(())
    }
}

/// Partial aggregate of one scan thread.
#[derive(Default)]
pub struct Agg {
    /// (interface, direction) → series.
    series: Vec<((String, String), SeriesAcc)>,
    pub totals: Counts,
    /// Every observation point seen in the time range (selected or not).
    pub observation_points: FxMap<String, Counts>,
    talkers: Talkers,
    dict_src: DictCache,
    dict_dst: DictCache,
    pub rows_read: u64,
    /// Smallest and largest selected `flow_end` (µs).
    pub min_end: Option<i64>,
    pub max_end: Option<i64>,
    /// Rows not counted at all: null `flow_end`/`packets`/`bytes`, `flow_end` at or before the
    /// Unix epoch (an unset clock), negative `packets`/`bytes`.
    pub rows_rejected: u64,
    /// Selected rows counted as zero-length at `flow_end` in the time series: `flow_start` null,
    /// at or before the epoch, after `flow_end`, or more than [`MAX_RECORD_SPAN_US`] before it.
    pub rows_clamped: u64,
    /// Selected traffic per `host` (null: files without the column).
    pub hosts: FxMap<Option<String>, Counts>,
    /// `--group-by` totals.
    groups: GroupAgg,
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, ReportError> {
    b.column_by_name(name)
        .ok_or_else(|| ReportError::Schema(format!("column {name} missing")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ReportError::Schema(format!("column {name} has an unexpected type")))
}

impl Agg {
    /// Adds every selected row of `b` (a batch with at least [`COLUMNS`]).
    pub fn add_batch(&mut self, sel: &Selection, b: &RecordBatch) -> Result<(), ReportError> {
        let start = col::<TimestampMicrosecondArray>(b, "flow_start")?;
        let end = col::<TimestampMicrosecondArray>(b, "flow_end")?;
        let obs = col::<StringArray>(b, "observation_point")?;
        let ifname = col::<StringArray>(b, "interface_name")?;
        let ifindex = col::<UInt32Array>(b, "interface_index")?;
        let dir = col::<StringArray>(b, "direction")?;
        let transport = col::<StringArray>(b, "network_transport")?;
        let addr_col = |name: &str,
                        cache: &mut DictCache,
                        interner: &mut Interner|
         -> Result<(Option<&StringArray>, Option<&[i32]>), ReportError> {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| ReportError::Schema(format!("column {name} missing")))?;
            if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                return Ok((Some(s), None));
            }
            let d = c
                .as_any()
                .downcast_ref::<DictionaryArray<Int32Type>>()
                .ok_or_else(|| {
                    ReportError::Schema(format!("column {name} has an unexpected type"))
                })?;
            if d.null_count() > 0 {
                return Err(ReportError::Schema(format!("null values in {name}")));
            }
            cache.ids(d.values(), interner)?;
            Ok((None, Some(d.keys().values().as_ref())))
        };
        // The caches are taken out of `self` for the batch so that their id slices can be
        // borrowed while the talker maps are updated.
        let mut dict_src = std::mem::take(&mut self.dict_src);
        let mut dict_dst = std::mem::take(&mut self.dict_dst);
        let (src_plain, src_keys) =
            addr_col("source_address", &mut dict_src, &mut self.talkers.addrs)?;
        let (dst_plain, dst_keys) = addr_col(
            "destination_address",
            &mut dict_dst,
            &mut self.talkers.addrs,
        )?;
        let src = match (src_plain, src_keys) {
            (Some(s), _) => Addr::Plain(s),
            (None, Some(k)) => Addr::Dict(k, &dict_src.ids),
            _ => return Err(ReportError::Schema("source_address unreadable".into())),
        };
        let dst = match (dst_plain, dst_keys) {
            (Some(s), _) => Addr::Plain(s),
            (None, Some(k)) => Addr::Dict(k, &dict_dst.ids),
            _ => return Err(ReportError::Schema("destination_address unreadable".into())),
        };
        let dport = col::<UInt16Array>(b, "destination_port")?;
        let packets = col::<Int64Array>(b, "packets")?;
        let bytes = col::<Int64Array>(b, "bytes")?;
        // Optional: files from before the column, or from other writers, have host null.
        let host =
            match b.column_by_name("host") {
                Some(c) => Some(c.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    ReportError::Schema("column host has an unexpected type".into())
                })?),
                None => None,
            };
        let host_of =
            |i: usize| -> Option<&str> { host.and_then(|h| (!h.is_null(i)).then(|| h.value(i))) };
        // `--group-by` columns of both ends; absent ones (older lakes) read as null.
        let group_cols: Vec<Option<&StringArray>> = match sel.group_by {
            Some(g) if sel.talkers => g
                .columns()
                .iter()
                .map(|n| match b.column_by_name(n) {
                    Some(c) => c
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(Some)
                        .ok_or_else(|| {
                            ReportError::Schema(format!("column {n} has an unexpected type"))
                        }),
                    None => Ok(None),
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let mut group_vals: Vec<Option<&str>> = Vec::with_capacity(group_cols.len());
        let any_null = packets.null_count() + bytes.null_count() + end.null_count() > 0;
        let start_nulls = start.null_count() > 0;
        self.rows_read += b.num_rows() as u64;
        let mut key = String::with_capacity(96);
        let mut last_series: usize = usize::MAX;
        let mut obs_tally: Vec<(&str, Counts)> = Vec::new();
        let mut host_tally: Vec<(Option<&str>, Counts)> = Vec::new();
        for i in 0..b.num_rows() {
            if any_null && (end.is_null(i) || packets.is_null(i) || bytes.is_null(i)) {
                self.rows_rejected += 1;
                continue;
            }
            let e = end.value(i);
            let (p, by) = (packets.value(i), bytes.value(i));
            if e <= 0 || p < 0 || by < 0 {
                self.rows_rejected += 1;
                continue;
            }
            if e < sel.from_us || e >= sel.to_us {
                continue;
            }
            let h = host_of(i);
            if !sel.hosts.is_empty() && !h.is_some_and(|h| sel.hosts.iter().any(|x| x == h)) {
                continue;
            }
            let (p, by) = (p as u64, by as u64);
            let o = obs.value(i);
            // Per-batch tally of observation points (a handful), flushed below.
            match obs_tally.iter_mut().find(|(name, _)| *name == o) {
                Some((_, c)) => c.add(p, by),
                None => {
                    let mut c = Counts::default();
                    c.add(p, by);
                    obs_tally.push((o, c));
                }
            }
            if o != sel.observation_point {
                continue;
            }
            self.totals.add(p, by);
            match host_tally.iter_mut().find(|(name, _)| *name == h) {
                Some((_, c)) => c.add(p, by),
                None => {
                    let mut c = Counts::default();
                    c.add(p, by);
                    host_tally.push((h, c));
                }
            }
            self.min_end = Some(self.min_end.map_or(e, |m| m.min(e)));
            self.max_end = Some(self.max_end.map_or(e, |m| m.max(e)));
            // Series of (interface, direction); the previous row's series is the usual hit.
            let (ifn, d) = (ifname.value(i), dir.value(i));
            key.clear();
            let ifn: &str = if ifn.is_empty() {
                use std::fmt::Write as _;
                let _ = write!(key, "if#{}", ifindex.value(i));
                &key
            } else {
                ifn
            };
            let idx = if last_series < self.series.len() && {
                let k = &self.series[last_series].0;
                k.0 == ifn && k.1 == d
            } {
                last_series
            } else if let Some(j) = self.series.iter().position(|(k, _)| k.0 == ifn && k.1 == d) {
                j
            } else {
                self.series
                    .push(((ifn.to_string(), d.to_string()), SeriesAcc::default()));
                self.series.len() - 1
            };
            last_series = idx;
            let s = &mut self.series[idx].1;
            s.counts.add(p, by);
            let mut st = start.value(i);
            if (start_nulls && start.is_null(i)) || st <= 0 || st > e || e - st > MAX_RECORD_SPAN_US
            {
                st = e;
                self.rows_clamped += 1;
            }
            s.add(sel.bucket_us, st, e, p, by);
            if !sel.talkers {
                continue;
            }
            if let Some(g) = sel.group_by {
                group_vals.clear();
                group_vals.extend(
                    group_cols
                        .iter()
                        .map(|c| c.and_then(|c| (!c.is_null(i)).then(|| c.value(i)))),
                );
                let half = group_vals.len() / 2;
                let a = g.label(&group_vals[..half]);
                let z = g.label(&group_vals[half..]);
                let ga = &mut self.groups;
                for (k, d) in [(&a, "sent"), (&z, "received")] {
                    let s = match ga.series.get_mut(&(k.clone(), d)) {
                        Some(s) => s,
                        None => ga.series.entry((k.clone(), d)).or_default(),
                    };
                    s.counts.add(p, by);
                    s.add(sel.bucket_us, st, e, p, by);
                }
                ga.src.entry(a.clone()).or_default().add(p, by);
                ga.dst.entry(z.clone()).or_default().add(p, by);
                let pair = if a <= z { (a, z) } else { (z, a) };
                ga.conversations.entry(pair).or_default().add(p, by);
            }
            let a = match &src {
                Addr::Plain(s) => self.talkers.addrs.id(s.value(i)),
                Addr::Dict(k, ids) => ids[k[i] as usize],
            };
            let z = match &dst {
                Addr::Plain(s) => self.talkers.addrs.id(s.value(i)),
                Addr::Dict(k, ids) => ids[k[i] as usize],
            };
            self.talkers
                .add(a, z, transport.value(i), dport.value(i), p, by);
        }
        let _ = (src, dst); // ends the borrows of the caches
        self.dict_src = dict_src;
        self.dict_dst = dict_dst;
        for (name, c) in obs_tally {
            match self.observation_points.get_mut(name) {
                Some(mine) => mine.merge(&c),
                None => {
                    self.observation_points.insert(name.to_string(), c);
                }
            }
        }
        for (name, c) in host_tally {
            self.hosts
                .entry(name.map(str::to_string))
                .or_default()
                .merge(&c);
        }
        if self.series.iter().any(|(_, s)| s.too_wide)
            || self.groups.series.values().any(|s| s.too_wide)
        {
            return Err(ReportError::Input(format!(
                "the selected records span more than {MAX_BUCKETS} buckets of {} s (is a flow_end far off?); give --from/--to or a larger --bucket",
                sel.bucket_us / 1_000_000
            )));
        }
        Ok(())
    }

    fn series_mut(&mut self, interface: &str, direction: &str) -> &mut SeriesAcc {
        let i = match self
            .series
            .iter()
            .position(|(k, _)| k.0 == interface && k.1 == direction)
        {
            Some(i) => i,
            None => {
                self.series.push((
                    (interface.to_string(), direction.to_string()),
                    SeriesAcc::default(),
                ));
                self.series.len() - 1
            }
        };
        &mut self.series[i].1
    }

    /// Sets a series' record counts (aggregates from another engine, see `engine`).
    pub fn set_series_counts(&mut self, interface: &str, direction: &str, c: Counts) {
        self.series_mut(interface, direction).counts = c;
    }

    /// Adds fixed-point bucket sums to a series (aggregates from another engine).
    pub fn add_bucket(
        &mut self,
        interface: &str,
        direction: &str,
        bucket: i64,
        bytes: u128,
        packets: u128,
    ) -> Result<(), ReportError> {
        let s = self.series_mut(interface, direction);
        let slot = s.slot(bucket);
        slot.0 += bytes;
        slot.1 += packets;
        if s.too_wide {
            return Err(ReportError::Input(format!(
                "aggregates: series {interface}/{direction} spans more than {MAX_BUCKETS} buckets"
            )));
        }
        Ok(())
    }

    pub fn add_source(&mut self, addr: &str, c: Counts) {
        let i = self.talkers.addrs.id(addr);
        at(&mut self.talkers.src, i).merge(&c);
    }

    pub fn add_destination(&mut self, addr: &str, c: Counts) {
        let i = self.talkers.addrs.id(addr);
        at(&mut self.talkers.dst, i).merge(&c);
    }

    pub fn add_conversation(&mut self, a: &str, z: &str, c: Counts) {
        let (a, z) = (self.talkers.addrs.id(a), self.talkers.addrs.id(z));
        self.talkers
            .conversations
            .entry(pair(a, z))
            .or_default()
            .merge(&c);
    }

    pub fn add_service(&mut self, transport: &str, port: u16, c: Counts) {
        let t = self.talkers.transports.id(transport);
        self.talkers
            .services
            .entry(t << 16 | port as u32)
            .or_default()
            .merge(&c);
    }

    pub fn merge(&mut self, o: Agg) {
        for (k, s) in o.series {
            match self.series.iter_mut().find(|(k2, _)| *k2 == k) {
                Some((_, mine)) => mine.merge(&s),
                None => self.series.push((k, s)),
            }
        }
        self.totals.merge(&o.totals);
        for (k, c) in o.observation_points {
            self.observation_points.entry(k).or_default().merge(&c);
        }
        self.talkers.merge(o.talkers);
        self.rows_read += o.rows_read;
        self.rows_rejected += o.rows_rejected;
        self.rows_clamped += o.rows_clamped;
        for (k, c) in o.hosts {
            self.hosts.entry(k).or_default().merge(&c);
        }
        self.groups.merge(o.groups);
        self.min_end = match (self.min_end, o.min_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_end = match (self.max_end, o.max_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// How addresses are grouped into subnets.
#[derive(Clone, Debug, PartialEq)]
pub enum Grouping {
    /// Every address to its own prefix of this length (IPv4, IPv6).
    Prefix { v4: u8, v6: u8 },
    /// Each address to the longest listed network containing it, else `other`.
    Cidrs(Vec<(IpAddr, u8)>),
}

/// `addr` with all bits past `len` cleared.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl Grouping {
    /// The subnet label of an address (`10.1.2.0/24`, or `other`).
    pub fn label(&self, addr: &str) -> String {
        let Ok(a) = addr.parse::<IpAddr>() else {
            return "other".into();
        };
        match self {
            Grouping::Prefix { v4, v6 } => {
                let len = if a.is_ipv4() { *v4 } else { *v6 };
                format!("{}/{}", mask(a, len), len)
            }
            Grouping::Cidrs(nets) => nets
                .iter()
                .filter(|(n, l)| n.is_ipv4() == a.is_ipv4() && mask(a, *l) == *n)
                .max_by_key(|(_, l)| *l)
                .map(|(n, l)| format!("{n}/{l}"))
                .unwrap_or_else(|| "other".into()),
        }
    }
}

/// One ranked entry of a top-N list.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TopEntry {
    pub key: String,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Fraction (0..1) of the selected total.
    pub bytes_share: f64,
    pub packets_share: f64,
}

/// A category ranked two ways.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Ranking {
    /// Distinct keys in the category (before the top-N cut).
    pub distinct: u64,
    pub by_bytes: Vec<TopEntry>,
    pub by_packets: Vec<TopEntry>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Top {
    pub n: usize,
    pub sources: Ranking,
    pub destinations: Ranking,
    pub source_subnets: Ranking,
    pub destination_subnets: Ranking,
    pub conversations: Ranking,
    pub services: Ranking,
    pub transports: Ranking,
}

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RateStats {
    pub mean: f64,
    pub peak: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Least-squares line through the bucket rates: rate(t) = intercept + slope * t, t in seconds
/// since the start of the first bucket (bucket midpoints as x).
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Trend {
    pub bytes_per_sec_intercept: f64,
    pub bytes_per_sec_slope_per_day: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct SeriesOut {
    pub interface: String,
    pub direction: String,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub bytes_per_sec: Vec<f64>,
    pub packets_per_sec: Vec<f64>,
    pub bytes_per_sec_stats: RateStats,
    pub packets_per_sec_stats: RateStats,
    pub trend: Trend,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Series {
    /// Start of the first bucket (µs since the epoch) and its RFC 3339 form.
    pub start_us: i64,
    pub start: String,
    pub bucket_seconds: u64,
    pub buckets: usize,
    /// Index of the first bucket used for the statistics and the trend, and how many: the
    /// buckets wholly inside the range (edge buckets hold only part of their traffic).
    pub stats_first: usize,
    pub stats_buckets: usize,
    /// Sorted by interface, then direction.
    pub interfaces: Vec<SeriesOut>,
}

/// Nearest-rank percentile of already sorted values (0 for an empty slice).
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The buckets of a series from bucket `first` to `last` (indices of `bucket_us`-wide
/// buckets): how many, the bucket width in seconds, and the first index and count of the whole
/// buckets inside [`from_us`, `to_us`) (all of them when none is whole), which the series'
/// statistics are taken over.
fn bucket_window(
    bucket_us: i64,
    first: i64,
    last: i64,
    from_us: i64,
    to_us: i64,
) -> (usize, f64, usize, usize) {
    let n = (last - first + 1).max(0) as usize;
    let bs = bucket_us as f64 / 1e6;
    let lo = (from_us + bucket_us - 1).div_euclid(bucket_us).max(first);
    let hi = (to_us.div_euclid(bucket_us) - 1).min(last);
    let (s0, sn) = if hi >= lo {
        ((lo - first) as usize, (hi - lo + 1) as usize)
    } else {
        (0, n)
    };
    (n, bs, s0, sn)
}

fn stats(v: &[f64]) -> RateStats {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    RateStats {
        mean: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
        peak: s.last().copied().unwrap_or(0.0),
        p95: nearest_rank(&s, 95.0),
        p99: nearest_rank(&s, 99.0),
    }
}

/// Least squares of `v[i]` against x = (i + 0.5) * bucket seconds; slope returned per second.
pub fn least_squares(v: &[f64], bucket_s: f64) -> (f64, f64) {
    least_squares_from(v, 0, bucket_s)
}

/// Like [`least_squares`] for a slice starting at bucket index `offset` of the series
/// (x = (offset + i + 0.5) * bucket seconds, so the intercept is at the series start).
pub fn least_squares_from(v: &[f64], offset: usize, bucket_s: f64) -> (f64, f64) {
    let n = v.len() as f64;
    if v.len() < 2 {
        return (v.first().copied().unwrap_or(0.0), 0.0);
    }
    let xs = |i: usize| ((offset + i) as f64 + 0.5) * bucket_s;
    let mx = (0..v.len()).map(xs).sum::<f64>() / n;
    let my = v.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in v.iter().enumerate() {
        let dx = xs(i) - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    (my - slope * mx, slope)
}

/// Builds the series over buckets `[first, last]` (epoch bucket indices).
/// Builds the series over buckets `[first, last]` (epoch bucket indices). Statistics and the
/// trend use only the buckets that lie wholly inside `[from_us, to_us)` (all buckets if none
/// does): an edge bucket holds only part of its traffic (records ending outside the range are
/// not selected), and would drag the mean, the low percentiles and the trend.
pub fn series(
    agg: &Agg,
    bucket_us: i64,
    first: i64,
    last: i64,
    from_us: i64,
    to_us: i64,
) -> Series {
    let (n, bs, s0, sn) = bucket_window(bucket_us, first, last, from_us, to_us);
    let mut out: Vec<SeriesOut> = agg
        .series
        .iter()
        .map(|((ifn, dir), s)| one_series(ifn, dir, s, first, n, bs, s0, sn))
        .collect();
    out.sort_by(|a, b| (&a.interface, &a.direction).cmp(&(&b.interface, &b.direction)));
    Series {
        start_us: first * bucket_us,
        start: super::fmt_time(first * bucket_us),
        bucket_seconds: (bucket_us / 1_000_000) as u64,
        buckets: n,
        stats_first: s0,
        stats_buckets: sn,
        interfaces: out,
    }
}

/// One series over `n` buckets from `first`; statistics over `[s0, s0 + sn)`.
#[allow(clippy::too_many_arguments)]
fn one_series(
    ifn: &str,
    dir: &str,
    s: &SeriesAcc,
    first: i64,
    n: usize,
    bs: f64,
    s0: usize,
    sn: usize,
) -> SeriesOut {
    let mut b = vec![0.0; n];
    let mut p = vec![0.0; n];
    for (i, (vb, vp)) in s.v.iter().enumerate() {
        let idx = s.base + i as i64 - first;
        if idx >= 0 && (idx as usize) < n {
            b[idx as usize] = fixed_to_f64(*vb) / bs;
            p[idx as usize] = fixed_to_f64(*vp) / bs;
        }
    }
    let (intercept, slope) = least_squares_from(&b[s0..s0 + sn], s0, bs);
    SeriesOut {
        interface: ifn.to_string(),
        direction: dir.to_string(),
        records: s.counts.records,
        packets: s.counts.packets,
        bytes: s.counts.bytes,
        bytes_per_sec_stats: stats(&b[s0..s0 + sn]),
        packets_per_sec_stats: stats(&p[s0..s0 + sn]),
        trend: Trend {
            bytes_per_sec_intercept: intercept,
            bytes_per_sec_slope_per_day: slope * 86_400.0,
        },
        bytes_per_sec: b,
        packets_per_sec: p,
    }
}

/// `--group-by` results: ends named by their group.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Groups {
    /// The `--group-by` value.
    pub by: GroupBy,
    /// Groups of source ends, of destination ends, and unordered group pairs
    /// (`a <-> b`, smaller first).
    pub sources: Ranking,
    pub destinations: Ranking,
    pub conversations: Ranking,
    /// Throughput of the top-N groups by bytes (sent + received): `interface` is the group,
    /// `direction` is `sent` (as source) or `received` (as destination). Same buckets as
    /// `series`. Sorted by group, then direction.
    pub series: Vec<SeriesOut>,
}

/// The `--group-by` section (None without `--group-by`, or for aggregates of another engine);
/// series over the same buckets as [`series`].
#[allow(clippy::too_many_arguments)]
pub fn groups(
    agg: &Agg,
    by: Option<GroupBy>,
    n: usize,
    bucket_us: i64,
    first: i64,
    last: i64,
    from_us: i64,
    to_us: i64,
) -> Option<Groups> {
    let by = by?;
    let g = &agg.groups;
    // Aggregates from another engine (`--from-json`) carry no groups: no section rather than
    // an empty one.
    if g.src.is_empty() {
        return None;
    }
    let t = &agg.totals;
    let named = |m: &FxMap<String, Counts>| -> (Vec<(usize, Counts)>, Vec<String>) {
        let mut v: Vec<(&String, &Counts)> = m.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        (
            v.iter().enumerate().map(|(i, (_, c))| (i, **c)).collect(),
            v.iter().map(|(k, _)| (*k).clone()).collect(),
        )
    };
    let (src, src_names) = named(&g.src);
    let (dst, dst_names) = named(&g.dst);
    let conv_map: FxMap<String, Counts> = g
        .conversations
        .iter()
        .map(|((a, z), c)| (format!("{a} <-> {z}"), *c))
        .collect();
    let (conv, conv_names) = named(&conv_map);
    // Series of the top-N groups by bytes sent + received.
    let mut total: FxMap<&str, u64> = FxMap::default();
    for ((k, _), s) in &g.series {
        *total.entry(k.as_str()).or_default() += s.counts.bytes;
    }
    let mut best: Vec<(&str, u64)> = total.into_iter().collect();
    best.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    best.truncate(n);
    let (nb, bs, s0, sn) = bucket_window(bucket_us, first, last, from_us, to_us);
    let mut series: Vec<SeriesOut> = g
        .series
        .iter()
        .filter(|((k, _), _)| best.iter().any(|(b, _)| b == k))
        .map(|((k, d), s)| one_series(k, d, s, first, nb, bs, s0, sn))
        .collect();
    series.sort_by(|a, b| (&a.interface, &a.direction).cmp(&(&b.interface, &b.direction)));
    Some(Groups {
        by,
        sources: ranking(&src, n, t, |i| src_names[i].clone()),
        destinations: ranking(&dst, n, t, |i| dst_names[i].clone()),
        conversations: ranking(&conv, n, t, |i| conv_names[i].clone()),
        series,
    })
}

/// First and last bucket that any series touched.
pub fn touched_buckets(agg: &Agg) -> Option<(i64, i64)> {
    let mut r: Option<(i64, i64)> = None;
    for (_, s) in &agg.series {
        if s.v.is_empty() {
            continue;
        }
        let (a, b) = (s.base, s.base + s.v.len() as i64 - 1);
        r = Some(r.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
    }
    r
}

/// The `n` entries with the largest `metric`, ties by name ascending. Names are rendered only
/// for the candidates (entries at or above the n-th largest value), not for every key.
fn best<K: Copy>(
    items: &[(K, Counts)],
    n: usize,
    total: &Counts,
    metric: impl Fn(&Counts) -> u64,
    name: impl Fn(K) -> String,
) -> Vec<TopEntry> {
    let share = |x: u64, t: u64| if t == 0 { 0.0 } else { x as f64 / t as f64 };
    let cut = if items.len() > n && n > 0 {
        let mut vals: Vec<u64> = items.iter().map(|(_, c)| metric(c)).collect();
        let (_, nth, _) = vals.select_nth_unstable_by(n - 1, |a, b| b.cmp(a));
        *nth
    } else {
        0
    };
    let mut cand: Vec<(String, &Counts)> = items
        .iter()
        .filter(|(_, c)| metric(c) >= cut)
        .map(|(k, c)| (name(*k), c))
        .collect();
    cand.sort_by(|a, b| metric(b.1).cmp(&metric(a.1)).then_with(|| a.0.cmp(&b.0)));
    cand.into_iter()
        .take(n)
        .map(|(key, c)| TopEntry {
            key,
            records: c.records,
            packets: c.packets,
            bytes: c.bytes,
            bytes_share: share(c.bytes, total.bytes),
            packets_share: share(c.packets, total.packets),
        })
        .collect()
}

fn ranking<K: Copy>(
    items: &[(K, Counts)],
    n: usize,
    total: &Counts,
    name: impl Fn(K) -> String,
) -> Ranking {
    Ranking {
        distinct: items.len() as u64,
        by_bytes: best(items, n, total, |c| c.bytes, &name),
        by_packets: best(items, n, total, |c| c.packets, &name),
    }
}

/// Sums counts per label: (label index, counts) and the labels.
fn regroup<'a>(
    items: impl Iterator<Item = (&'a str, &'a Counts)>,
    label: impl Fn(&str) -> String,
) -> (Vec<(usize, Counts)>, Vec<String>) {
    let mut idx: FxMap<String, usize> = FxMap::default();
    let mut out: Vec<Counts> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (k, c) in items {
        let l = label(k);
        let i = *idx.entry(l.clone()).or_insert_with(|| {
            names.push(l);
            out.push(Counts::default());
            out.len() - 1
        });
        out[i].merge(c);
    }
    (out.into_iter().enumerate().collect(), names)
}

/// The top-N lists. Subnets and transports are derived from the per-address and per-service
/// totals (no second pass over rows).
pub fn top(agg: &Agg, n: usize, grouping: &Grouping) -> Top {
    let t = &agg.totals;
    let k = &agg.talkers;
    let per_addr = |v: &Vec<Counts>| -> Vec<(u32, Counts)> {
        v.iter()
            .enumerate()
            .filter(|(_, c)| c.records > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect()
    };
    let addr_name = |i: u32| k.addrs.names[i as usize].clone();
    let src = per_addr(&k.src);
    let dst = per_addr(&k.dst);
    let subnets = |v: &[(u32, Counts)]| -> Ranking {
        let (grouped, names) = regroup(
            v.iter()
                .map(|(i, c)| (k.addrs.names[*i as usize].as_str(), c)),
            |a| grouping.label(a),
        );
        ranking(&grouped, n, t, |i| names[i].clone())
    };
    let conv: Vec<(u64, Counts)> = k.conversations.iter().map(|(a, c)| (*a, *c)).collect();
    let svc: Vec<(u32, Counts)> = k.services.iter().map(|(a, c)| (*a, *c)).collect();
    let transports = {
        let (grouped, names) = regroup(
            svc.iter()
                .map(|(s, c)| (k.transports.names[(*s >> 16) as usize].as_str(), c)),
            |s| s.to_string(),
        );
        ranking(&grouped, n, t, |i| names[i].clone())
    };
    Top {
        n,
        sources: ranking(&src, n, t, addr_name),
        destinations: ranking(&dst, n, t, addr_name),
        source_subnets: subnets(&src),
        destination_subnets: subnets(&dst),
        conversations: ranking(&conv, n, t, |c| k.conversation_name(c)),
        services: ranking(&svc, n, t, |s| k.service_name(s)),
        transports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_definition() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        assert_eq!(nearest_rank(&v, 95.0), 95.0);
        assert_eq!(nearest_rank(&v, 99.0), 99.0);
        assert_eq!(nearest_rank(&v, 100.0), 100.0);
        assert_eq!(nearest_rank(&[3.0], 95.0), 3.0);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(nearest_rank(&[], 95.0), 0.0);
    }

    #[test]
    fn spreading_conserves_totals() {
        let mut s = SeriesAcc::default();
        // 10 s buckets; a record over [5 s, 25 s] → 1/4, 1/2, 1/4.
        s.add(10_000_000, 5_000_000, 25_000_000, 4, 400);
        assert_eq!(s.base, 0);
        let f = |b: u64, p: u64| ((b as u128) << FRAC_BITS, (p as u128) << FRAC_BITS);
        assert_eq!(s.v, vec![f(100, 1), f(200, 2), f(100, 1)]);
        // Zero-length record in bucket 5, and a record ending exactly on a bucket boundary.
        s.add(10_000_000, 55_000_000, 55_000_000, 1, 10);
        s.add(10_000_000, -10_000_000, 0, 2, 20);
        assert_eq!(s.base, -1);
        assert_eq!(s.v[0], f(20, 2));
        assert_eq!(s.v[6], f(10, 1));
        let total: u128 = s.v.iter().map(|x| x.0).sum();
        assert_eq!(total, 430 << FRAC_BITS);
        // A third each: rounded down, so the shares add up to at most the whole.
        let mut t = SeriesAcc::default();
        t.add(10_000_000, 0, 29_999_999, 1, u64::MAX);
        let sum: u128 = t.v.iter().map(|x| x.0).sum();
        assert!(
            sum <= (u64::MAX as u128) << FRAC_BITS && sum + 3 >= (u64::MAX as u128) << FRAC_BITS
        );
    }

    #[test]
    fn grouping_labels() {
        let g = Grouping::Prefix { v4: 24, v6: 64 };
        assert_eq!(g.label("10.1.2.3"), "10.1.2.0/24");
        assert_eq!(g.label("2001:db8:1:2:3::1"), "2001:db8:1:2::/64");
        let g = Grouping::Cidrs(vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("10.1.0.0".parse().unwrap(), 16),
        ]);
        assert_eq!(g.label("10.1.2.3"), "10.1.0.0/16");
        assert_eq!(g.label("10.2.2.3"), "10.0.0.0/8");
        assert_eq!(g.label("192.168.1.1"), "other");
        assert_eq!(g.label("::1"), "other");
    }

    /// Address columns read plain (Utf8) or as dictionaries aggregate to the same report.
    #[test]
    fn plain_and_dictionary_columns_agree() {
        use flowlens_schema::{
            flow::{FlowKey, OBS_XDP},
            record::{EndReason, FlowRecord, arrow_schema, to_record_batch},
        };
        let recs: Vec<FlowRecord> = (0..500u32)
            .map(|i| {
                let mut k = FlowKey::ZERO;
                k.ip_version = 4;
                k.src_addr[10..].copy_from_slice(&[
                    0xff,
                    0xff,
                    10,
                    0,
                    (i % 7) as u8,
                    (i % 13) as u8,
                ]);
                k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 9, 0, (i % 5) as u8]);
                k.protocol = if i % 3 == 0 { 17 } else { 6 };
                k.dst_port = [53, 443, 80][(i % 3) as usize];
                k.observation_point = OBS_XDP;
                FlowRecord {
                    flow_start_us: 1_700_000_000_000_000 + i as i64 * 1_000_000,
                    flow_end_us: 1_700_000_000_000_000
                        + i as i64 * 1_000_000
                        + (i as i64 % 4) * 700_000,
                    key: k,
                    interface_name: "eth0".into(),
                    packets: 1 + i as u64 % 9,
                    bytes: 100 + i as u64 * 3,
                    tcp_flags: 0,
                    dscp: 0,
                    end_reason: EndReason::IdleTimeout,
                    host: "h".into(),
                    community_id: String::new(),
                    ends: Default::default(),
                }
            })
            .collect();
        let schema = arrow_schema();
        let plain = to_record_batch(&schema, &recs).unwrap();
        let mut cols = plain.columns().to_vec();
        let mut fields: Vec<arrow_schema::Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in DICTIONARY_COLUMNS {
            let i = schema.index_of(name).unwrap();
            let s = cols[i].as_any().downcast_ref::<StringArray>().unwrap();
            let d: DictionaryArray<Int32Type> = s.iter().map(|v| v.unwrap()).collect();
            fields[i] = fields[i].clone().with_data_type(d.data_type().clone());
            cols[i] = Arc::new(d);
        }
        let dict = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols).unwrap();
        let sel = Selection {
            from_us: 0,
            to_us: i64::MAX,
            observation_point: "xdp".into(),
            bucket_us: 60_000_000,
            talkers: true,
            hosts: Vec::new(),
            group_by: None,
        };
        let g = Grouping::Prefix { v4: 24, v6: 64 };
        let mut a = Agg::default();
        a.add_batch(&sel, &plain).unwrap();
        let mut b = Agg::default();
        // Twice the same dictionary batch (cache hit), split over two aggregates, merged.
        b.add_batch(&sel, &dict.slice(0, 250)).unwrap();
        let mut c = Agg::default();
        c.add_batch(&sel, &dict.slice(250, 250)).unwrap();
        b.merge(c);
        assert_eq!(top(&a, 5, &g), top(&b, 5, &g));
        assert_eq!(a.totals, b.totals);
        // (i % 7, i % 13) -> i % 5 for i < 500: 7 * 13 * 5 = 455 distinct pairs (CRT).
        assert_eq!(top(&a, 5, &g).conversations.distinct, 455);
    }

    #[test]
    fn fixed_point_share_fast_path_agrees() {
        let slow = |x: u64, n: u64, d: u64| {
            let p = x as u128 * n as u128;
            ((p / d as u128) << FRAC_BITS) + ((p % d as u128) << FRAC_BITS) / d as u128
        };
        for (x, n, d) in [
            (1u64, 1u64, 3u64),
            (1_000_000, 29_999_999, 60_000_000),
            (u64::MAX, 1, 2),
            (12345, 4_294_967_295, 4_294_967_295),
            (77, 86_399_999_999, 86_400_000_000),
        ] {
            assert_eq!(share(x, n, d), slow(x, n, d), "{x} {n} {d}");
        }
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let v: Vec<f64> = (0..10)
            .map(|i| 3.0 + 2.0 * (i as f64 + 0.5) * 60.0)
            .collect();
        let (a, b) = least_squares(&v, 60.0);
        assert!((a - 3.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-12, "{a} {b}");
    }
}
