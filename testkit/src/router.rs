use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, ensure};

use crate::{Link, Netns, veth_pair};

/// Three namespaces, host A — router R — host B: two veth pairs (see [`routed`]).
///
/// Field order is drop order: the links go first, then the namespaces.
#[derive(Debug)]
pub struct Routed {
    /// A (`a_if`, in A) to R (`b_if`, in R).
    pub ar: Link,
    /// R (`a_if`, in R) to B (`b_if`, in B).
    pub rb: Link,
    pub a: Netns,
    pub r: Netns,
    pub b: Netns,
}

impl Routed {
    /// A's address (v4 or v6) on its only link.
    pub fn a_addr(&self, v6: bool) -> std::net::IpAddr {
        if v6 {
            self.ar.a_v6.into()
        } else {
            self.ar.a_v4.into()
        }
    }

    /// B's address (v4 or v6) on its only link.
    pub fn b_addr(&self, v6: bool) -> std::net::IpAddr {
        if v6 {
            self.rb.b_v6.into()
        } else {
            self.rb.b_v4.into()
        }
    }
}

fn net_v4(a: Ipv4Addr) -> String {
    let o = a.octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

fn net_v6(a: Ipv6Addr) -> String {
    let s = a.segments();
    let p = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
    format!("{p}/64")
}

/// Writes `value` to the sysctl file `path` (under /proc/sys/net) as seen from inside `ns`, and
/// reads it back.
fn ns_sysctl(ns: &Netns, path: &'static str, value: &'static str) -> Result<()> {
    let got = ns
        .run_in(move || -> std::io::Result<String> {
            std::fs::write(path, value)?;
            std::fs::read_to_string(path)
        })?
        .with_context(|| format!("setting {path} in {}", ns.name()))?;
    ensure!(
        got.trim() == value,
        "{path} in {} reads {got:?} after writing {value}",
        ns.name()
    );
    Ok(())
}

/// Hosts A and B on two different subnets, joined through router R: namespaces
/// `fl-{tag}a-…`, `fl-{tag}r-…`, `fl-{tag}b-…`, a veth pair A–R and a veth pair R–B (each with
/// its own IPv4 /24 and IPv6 /64 and permanent neighbour entries, as [`veth_pair`] makes them),
/// IPv4 and IPv6 forwarding on in R, and routes in A and B to the other host's subnet via R.
/// Nothing else is forwarded or routed: traffic stays inside the three namespaces.
pub fn routed(tag: &str) -> Result<Routed> {
    let a = Netns::new(&format!("{tag}a"))?;
    let r = Netns::new(&format!("{tag}r"))?;
    let b = Netns::new(&format!("{tag}b"))?;
    let ar = veth_pair(&a, &r).context("veth A–R")?;
    let rb = veth_pair(&r, &b).context("veth R–B")?;
    ns_sysctl(&r, "/proc/sys/net/ipv4/ip_forward", "1")?;
    ns_sysctl(&r, "/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    a.ip(&[
        "route",
        "add",
        &net_v4(rb.b_v4),
        "via",
        &ar.b_v4.to_string(),
    ])?;
    a.ip(&[
        "-6",
        "route",
        "add",
        &net_v6(rb.b_v6),
        "via",
        &ar.b_v6.to_string(),
    ])?;
    b.ip(&[
        "route",
        "add",
        &net_v4(ar.a_v4),
        "via",
        &rb.a_v4.to_string(),
    ])?;
    b.ip(&[
        "-6",
        "route",
        "add",
        &net_v6(ar.a_v6),
        "via",
        &rb.a_v6.to_string(),
    ])?;
    Ok(Routed { ar, rb, a, r, b })
}
