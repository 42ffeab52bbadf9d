//! Network interfaces: name ↔ index, the default XDP set, and a name cache for records.

use std::{collections::HashMap, ffi::CString, sync::Arc};

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
/// resolve (the interface is gone) give an empty name; misses are not cached, so an index
/// resolves as soon as it exists.
#[derive(Default)]
pub struct NameCache {
    names: HashMap<u32, Arc<str>, foldhash::fast::RandomState>,
    empty: Arc<str>,
}

impl NameCache {
    pub fn get(&mut self, index: u32) -> Arc<str> {
        if let Some(n) = self.names.get(&index) {
            return n.clone();
        }
        match (index != 0).then(|| name_of(index)).flatten() {
            Some(n) => self.names.entry(index).or_insert_with(|| n.into()).clone(),
            None => self.empty.clone(),
        }
    }
    /// Forgets cached names (interfaces may be renamed or replaced).
    pub fn clear(&mut self) {
        self.names.clear();
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
    fn name_cache_resolves_any_index_and_does_not_cache_misses() {
        let mut c = NameCache::default();
        assert_eq!(&*c.get(index_of("lo").unwrap()), "lo");
        assert_eq!(&*c.get(0), "");
        // An index that does not exist (yet) is not remembered as nameless.
        let unused = u32::MAX - 7;
        assert_eq!(&*c.get(unused), "");
        assert!(!c.names.contains_key(&unused));
    }
}
