//! `--label-cidrs FILE`: CIDR → label, longest prefix wins.
//!
//! Two formats, chosen by the file name (`.toml`) or else read as CSV:
//!
//! ```text
//! # CSV: one `CIDR,LABEL` per line; `#` starts a comment, blank lines are skipped
//! 10.0.0.0/8,site-a
//! 10.1.0.0/16,site-a-lab
//! 2001:db8::/32,cloud-x
//! ```
//!
//! ```toml
//! # TOML: a table of "CIDR" = "LABEL"
//! [labels]
//! "10.0.0.0/8" = "site-a"
//! ```
//!
//! The file may be at most [`MAX_FILE_BYTES`] long; a bad line fails the start with one line
//! naming the file, the line number and what is wrong.

use std::{collections::HashMap, net::IpAddr, path::Path, sync::Arc};

/// Largest accepted file (a generous 100k prefixes of typical length).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Longest accepted label.
const MAX_LABEL: usize = 256;

/// Prefixes by length, over 128-bit addresses (IPv4 as v4-mapped, prefix + 96).
#[derive(Default, Debug)]
pub struct LabelTable {
    /// `by_len[len]`: masked address → label.
    by_len: Vec<HashMap<u128, Arc<str>>>,
    /// Prefix lengths present, longest first.
    lens: Vec<u8>,
}

fn mask(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - len as u32))
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a /32 or /128).
fn parse_cidr(s: &str) -> Result<(u128, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {l:?} is not 0..={max}"))?,
        None => max,
    };
    let len = if ip.is_ipv4() { len + 96 } else { len };
    Ok((mask(to_u128(ip), len), len))
}

impl LabelTable {
    pub fn insert(&mut self, cidr: &str, label: &str) -> Result<(), String> {
        let (net, len) = parse_cidr(cidr.trim())?;
        let label = label.trim();
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(format!("label must be 1..={MAX_LABEL} bytes"));
        }
        if self.by_len.is_empty() {
            self.by_len.resize_with(129, HashMap::new);
        }
        self.by_len[len as usize].insert(net, label.into());
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(())
    }

    /// The label of the longest prefix containing `a`.
    pub fn lookup(&self, a: IpAddr) -> Option<&Arc<str>> {
        let a = match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let x = to_u128(a);
        self.lens
            .iter()
            .find_map(|&len| self.by_len[len as usize].get(&mask(x, len)))
    }

    pub fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `path` (CSV, or TOML when the name ends in `.toml`).
    pub fn from_file(path: &Path) -> Result<LabelTable, String> {
        let p = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| format!("--label-cidrs {p}: {e}"))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "--label-cidrs {p}: {size} bytes, more than the {MAX_FILE_BYTES} allowed"
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("--label-cidrs {p}: {e}"))?;
        let toml = path.extension().is_some_and(|e| e == "toml");
        let r = if toml {
            Self::parse_toml(&text)
        } else {
            Self::parse_csv(&text)
        };
        r.map_err(|e| format!("--label-cidrs {p}:{e}"))
    }

    /// CSV text; an error is `LINE: what`.
    pub fn parse_csv(text: &str) -> Result<LabelTable, String> {
        let mut t = LabelTable::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (cidr, label) = line
                .split_once(',')
                .ok_or_else(|| format!("{}: expected CIDR,LABEL, got {line:?}", i + 1))?;
            t.insert(cidr, label.trim().trim_matches('"'))
                .map_err(|e| format!("{}: {e}", i + 1))?;
        }
        Ok(t)
    }

    /// TOML text: `"CIDR" = "LABEL"` pairs, at the top level or in a `[labels]` table.
    pub fn parse_toml(text: &str) -> Result<LabelTable, String> {
        let v: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(1);
            format!("{line}: {}", e.message())
        })?;
        let table = match v.get("labels") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => v,
        };
        let mut t = LabelTable::default();
        for (cidr, label) in &table {
            let line = text
                .lines()
                .position(|l| l.contains(cidr.as_str()))
                .map_or(0, |i| i + 1);
            let label = label
                .as_str()
                .ok_or_else(|| format!("{line}: the label of {cidr:?} is not a string"))?;
            t.insert(cidr, label).map_err(|e| format!("{line}: {e}"))?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_v4_and_v6() {
        let t = LabelTable::parse_csv(
            "# sites\n10.0.0.0/8,site-a\n10.1.0.0/16, lab # comment\n10.1.2.3,host\n\n0.0.0.0/0,internet\n2001:db8::/32,cloud\n2001:db8:1::/48,cloud-eu\n",
        )
        .unwrap();
        assert_eq!(t.len(), 6);
        let l = |s: &str| t.lookup(ip(s)).map(|l| l.to_string());
        assert_eq!(l("10.9.9.9").as_deref(), Some("site-a"));
        assert_eq!(l("10.1.9.9").as_deref(), Some("lab"));
        assert_eq!(l("10.1.2.3").as_deref(), Some("host"));
        assert_eq!(l("192.0.2.1").as_deref(), Some("internet"));
        // v4-mapped IPv6 is looked up as IPv4.
        assert_eq!(l("::ffff:10.1.2.3").as_deref(), Some("host"));
        assert_eq!(l("2001:db8:1::5").as_deref(), Some("cloud-eu"));
        assert_eq!(l("2001:db8:2::5").as_deref(), Some("cloud"));
        // The IPv4 default route does not cover IPv6.
        assert_eq!(l("2002::1"), None);
    }

    #[test]
    fn toml_plain_and_in_a_table() {
        for text in [
            "\"10.0.0.0/8\" = \"a\"\n\"10.1.0.0/16\" = \"b\"\n",
            "[labels]\n\"10.0.0.0/8\" = \"a\"\n\"10.1.0.0/16\" = \"b\"\n",
        ] {
            let t = LabelTable::parse_toml(text).unwrap();
            assert_eq!(t.lookup(ip("10.1.0.1")).map(|l| &**l), Some("b"));
            assert_eq!(t.lookup(ip("10.2.0.1")).map(|l| &**l), Some("a"));
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let e = LabelTable::parse_csv("10.0.0.0/8,a\n10.0.0.0/33,b\n").unwrap_err();
        assert_eq!(e, "2: prefix length \"33\" is not 0..=32");
        let e = LabelTable::parse_csv("\n\nnot-an-ip/8,x\n").unwrap_err();
        assert!(
            e.starts_with("3: \"not-an-ip\" is not an IP address"),
            "{e}"
        );
        let e = LabelTable::parse_csv("10.0.0.0/8\n").unwrap_err();
        assert!(e.starts_with("1: expected CIDR,LABEL"), "{e}");
        let e = LabelTable::parse_csv("10.0.0.0/8,\n").unwrap_err();
        assert!(e.starts_with("1: label must be"), "{e}");
        let e = LabelTable::parse_toml("\"10.0.0.0/8\" = \"a\"\n\"10.0.0.0/99\" = \"b\"\n")
            .unwrap_err();
        assert!(e.starts_with("2: prefix length"), "{e}");
        let e = LabelTable::parse_toml("\"10.0.0.0/8\" = 5\n").unwrap_err();
        assert!(e.starts_with("1: the label"), "{e}");
        let e = LabelTable::parse_toml("\"10.0.0.0/8\" = \n").unwrap_err();
        assert!(e.starts_with("1: "), "{e}");
    }

    #[test]
    fn file_size_is_bounded_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("flowlens-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.csv");
        let line = "10.0.0.0/8,a\n";
        let n = (MAX_FILE_BYTES as usize / line.len()) + 1;
        std::fs::write(&big, line.repeat(n)).unwrap();
        let e = LabelTable::from_file(&big).unwrap_err();
        assert!(e.contains("big.csv") && e.contains("more than the"), "{e}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "\"10.0.0.0/8\" = \"a\"\n\"x\" = \"b\"\n").unwrap();
        let e = LabelTable::from_file(&bad).unwrap_err();
        assert!(e.contains("bad.toml:2: "), "{e}");
        assert_eq!(e.lines().count(), 1);
        let ok = dir.join("ok.csv");
        std::fs::write(&ok, line.repeat(10)).unwrap();
        assert_eq!(LabelTable::from_file(&ok).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
