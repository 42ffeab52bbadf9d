//! Network interfaces: name ↔ index, the default XDP set, and a name cache for records.

use std::{
    collections::HashMap,
    ffi::CString,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Index of interface `name` in the current network namespace.
pub fn index_of(name: &str) -> Result<u32> {
    let c = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("unknown interface {name:?} (see `ip link`)");
    }
    Ok(idx)
}

/// Name of interface `index`, if it exists.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// The default XDP set: interfaces that are administratively up, except loopback and except
/// interfaces whose packets another interface in the set already sees (so nothing is counted
/// twice): ports enslaved to a bridge or bond (they have a `master`), bridges and VLAN devices.
pub fn up_non_loopback() -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let flags = std::fs::read_to_string(e.path().join("flags")).unwrap_or_default();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        let up = flags & libc::IFF_UP as u32 != 0;
        let lo = flags & libc::IFF_LOOPBACK as u32 != 0;
        let enslaved = e.path().join("master").exists();
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        let stacked = uevent
            .lines()
            .any(|l| l == "DEVTYPE=bridge" || l == "DEVTYPE=vlan");
        if up && !lo && !enslaved && !stacked {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// How long an index that did not resolve is remembered as nameless before it is looked up
/// again (an interface created meanwhile then gets its name).
pub const MISS_TTL: Duration = Duration::from_secs(5);
/// Indexes remembered as nameless at most (expired ones are dropped first when it is reached).
pub const MAX_MISSES: usize = 1024;

/// The interfaces `flowlens run` attaches XDP to: those named with `--xdp`; with none named and
/// no netfilter hooks, the default set ([`up_non_loopback`]); with only netfilter hooks, none.
pub fn xdp_targets(named: &[String], netfilter: bool) -> Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    if netfilter {
        return Ok(Vec::new());
    }
    let l = up_non_loopback()?;
    if l.is_empty() {
        bail!("no interface is up except loopback; name one with --xdp IFACE");
    }
    Ok(l)
}

/// Caches interface names by index (records carry the name as of export time). Any interface
/// of the collector's network namespace resolves, not only those with an XDP program: the
/// netfilter hooks report every interface. Index 0 (no interface) and indexes that do not
/// resolve (the interface is gone, or not there yet) give an empty name. Misses are cached too,
/// for [`MISS_TTL`] and at most [`MAX_MISSES`] of them, so the flows of a vanished interface
/// cost one lookup per index and TTL instead of one per record.
pub struct NameCache {
    names: HashMap<u32, Arc<str>, foldhash::fast::RandomState>,
    /// Index → when its miss expires.
    misses: HashMap<u32, Instant, foldhash::fast::RandomState>,
    empty: Arc<str>,
    resolve: fn(u32) -> Option<String>,
}

impl Default for NameCache {
    fn default() -> Self {
        NameCache::with_resolver(name_of)
    }
}

impl NameCache {
    /// A cache over another resolver than [`name_of`] (tests).
    pub fn with_resolver(resolve: fn(u32) -> Option<String>) -> Self {
        NameCache {
            names: HashMap::default(),
            misses: HashMap::default(),
            empty: Arc::from(""),
            resolve,
        }
    }

    pub fn get(&mut self, index: u32) -> Arc<str> {
        if let Some(n) = self.names.get(&index) {
            return n.clone();
        }
        if index == 0 {
            return self.empty.clone();
        }
        self.get_miss(index, Instant::now())
    }

    /// An index not in `names`, at time `now`.
    fn get_miss(&mut self, index: u32, now: Instant) -> Arc<str> {
        if self.misses.get(&index).is_some_and(|&until| now < until) {
            return self.empty.clone();
        }
        match (self.resolve)(index) {
            Some(n) => {
                self.misses.remove(&index);
                self.names.entry(index).or_insert_with(|| n.into()).clone()
            }
            None => {
                if self.misses.len() >= MAX_MISSES && !self.misses.contains_key(&index) {
                    self.misses.retain(|_, &mut until| now < until);
                    if self.misses.len() >= MAX_MISSES {
                        self.misses.clear();
                    }
                }
                self.misses.insert(index, now + MISS_TTL);
                self.empty.clone()
            }
        }
    }

    /// Forgets cached names and misses (interfaces may be renamed or replaced).
    pub fn clear(&mut self) {
        self.names.clear();
        self.misses.clear();
    }
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn loopback_resolves_both_ways() {
        let i = index_of("lo").unwrap();
        assert_eq!(name_of(i).as_deref(), Some("lo"));
        let e = index_of("no-such-if0").unwrap_err().to_string();
        assert!(e.contains("unknown interface"), "{e}");
        assert!(!up_non_loopback().unwrap().contains(&"lo".to_string()));
    }

    #[test]
    fn name_cache_resolves_any_index() {
        let mut c = NameCache::default();
        assert_eq!(&*c.get(index_of("lo").unwrap()), "lo");
        assert_eq!(&*c.get(0), "");
        assert_eq!(&*c.get(u32::MAX - 7), "");
    }

    /// Index 7 appears (is "created") once CREATED is set; every lookup is counted.
    static LOOKUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static CREATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    fn fake(index: u32) -> Option<String> {
        use std::sync::atomic::Ordering::SeqCst;
        LOOKUPS.fetch_add(1, SeqCst);
        (index == 7 && CREATED.load(SeqCst)).then(|| "late0".to_string())
    }

    /// A miss is looked up once per MISS_TTL, not once per record; after the TTL an interface
    /// created meanwhile gets its name; the number of remembered misses stays bounded.
    #[test]
    fn name_cache_caches_misses_for_a_while() {
        use std::sync::atomic::Ordering::SeqCst;
        let mut c = NameCache::with_resolver(fake);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(&*c.get_miss(7, t0), "");
        }
        assert_eq!(LOOKUPS.load(SeqCst), 1, "misses are cached");
        CREATED.store(true, SeqCst);
        assert_eq!(&*c.get_miss(7, t0 + MISS_TTL / 2), "", "still cached");
        assert_eq!(LOOKUPS.load(SeqCst), 1);
        assert_eq!(
            &*c.get_miss(7, t0 + MISS_TTL),
            "late0",
            "expired: looked up again"
        );
        assert_eq!(&*c.get(7), "late0");
        assert_eq!(LOOKUPS.load(SeqCst), 2);

        // Bounded: many distinct missing indexes never hold more than MAX_MISSES entries.
        for i in 0..(3 * MAX_MISSES as u32) {
            c.get_miss(1000 + i, t0);
            assert!(c.misses.len() <= MAX_MISSES);
        }
        // Expired entries are the ones dropped when the bound is reached.
        c.clear();
        for i in 0..(MAX_MISSES as u32 - 1) {
            c.get_miss(1000 + i, t0);
        }
        let later = t0 + MISS_TTL * 2;
        c.get_miss(5000, later);
        c.get_miss(5001, later);
        assert_eq!(c.misses.len(), 2, "expired misses dropped first");
        let n = LOOKUPS.load(SeqCst);
        c.get_miss(5000, later);
        assert_eq!(LOOKUPS.load(SeqCst), n, "a fresh miss survived");
    }
}
