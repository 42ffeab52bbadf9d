use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{Netns, sys};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// How long `veth_pair` waits for the link to come up and IPv6 addresses to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by a veth pair (see [`veth_pair`]). Dropping it deletes the pair
/// (deleting the namespaces does too).
#[derive(Debug)]
pub struct Link {
    /// Interface in namespace `a`.
    pub a_if: String,
    /// Interface in namespace `b`.
    pub b_if: String,
    pub a_v4: Ipv4Addr,
    pub b_v4: Ipv4Addr,
    pub a_v6: Ipv6Addr,
    pub b_v6: Ipv6Addr,
    /// MAC address of `a_if` / `b_if`.
    pub a_mac: [u8; 6],
    pub b_mac: [u8; 6],
    a_ns: String,
    b_ns: String,
}

impl Link {
    /// Makes both ends hand the wire one MTU-sized packet per frame (`gso_max_segs 1`):
    /// by default the veth carries TCP GSO super-packets of up to 64 KiB, which a capture
    /// (and an XDP program) sees as one frame each (1 MiB of TCP is then about 40 frames
    /// instead of about 730).
    pub fn disable_gso(&self) -> Result<()> {
        for (ns, ifname) in [(&self.a_ns, &self.a_if), (&self.b_ns, &self.b_if)] {
            crate::netns::ip_in(ns, &["link", "set", "dev", ifname, "gso_max_segs", "1"])?;
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes its peer. Fails harmlessly if the namespace is gone.
        let _ = crate::netns::ip_in(&self.a_ns, &["link", "del", "dev", &self.a_if]);
    }
}

/// Creates a veth pair between `a` and `b`: `a_if` in `a` with 10.X.Y.1/24 and
/// fd66:6c00:0:XXYY::1/64, `b_if` in `b` with .2 / ::2, where X.Y is derived from the pid and a
/// per-process counter (unique per pair within a process). Both ends are up, IPv6 addresses
/// are added with `nodad`, and permanent neighbour entries are installed both ways so that
/// neither ARP nor neighbour discovery traffic appears on the link. Returns once both ends
/// report `LOWER_UP` and no IPv6 address is tentative (at most 5 s).
///
/// Interface names are `fl{pid:x}v{n:x}a` / `...b` (at most 15 bytes).
pub fn veth_pair(a: &Netns, b: &Netns) -> Result<Link> {
    ensure!(
        a.name() != b.name(),
        "veth_pair needs two different namespaces"
    );
    let pid = std::process::id();
    let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let a_if = format!("fl{pid:x}v{n:x}a");
    let b_if = format!("fl{pid:x}v{n:x}b");
    ensure!(
        a_if.len() <= IFNAME_MAX,
        "interface name {a_if} longer than {IFNAME_MAX} bytes (too many links in one process)"
    );

    // A pid-dependent base plus the counter: distinct for the first 65536 pairs of a process,
    // and different processes usually start far apart.
    let idx = (pid.wrapping_mul(2_654_435_761) >> 16).wrapping_add(n) as u16;
    let [x, y] = idx.to_be_bytes();
    let a_v4 = Ipv4Addr::new(10, x, y, 1);
    let b_v4 = Ipv4Addr::new(10, x, y, 2);
    let a_v6 = Ipv6Addr::new(0xfd66, 0x6c00, 0, idx, 0, 0, 0, 1);
    let b_v6 = Ipv6Addr::new(0xfd66, 0x6c00, 0, idx, 0, 0, 0, 2);
    // Locally administered unicast addresses.
    let a_mac = [0x02, 0x66, 0x6c, x, y, 0x01];
    let b_mac = [0x02, 0x66, 0x6c, x, y, 0x02];

    a.ip(&[
        "link",
        "add",
        &a_if,
        "address",
        &mac_str(a_mac),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "address",
        &mac_str(b_mac),
        "netns",
        b.name(),
    ])
    .context("creating the veth pair")?;
    let link = Link {
        a_if,
        b_if,
        a_v4,
        b_v4,
        a_v6,
        b_v6,
        a_mac,
        b_mac,
        a_ns: a.name().to_owned(),
        b_ns: b.name().to_owned(),
    };

    for (ns, ifname, v4, v6, peer_v4, peer_v6, peer_mac) in [
        (a, &link.a_if, a_v4, a_v6, b_v4, b_v6, b_mac),
        (b, &link.b_if, b_v4, b_v6, a_v4, a_v6, a_mac),
    ] {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ])?;
        ns.ip(&["link", "set", "dev", ifname, "up"])?;
        let mac = mac_str(peer_mac);
        for peer in [peer_v4.to_string(), peer_v6.to_string()] {
            ns.ip(&[
                "neigh",
                "replace",
                &peer,
                "lladdr",
                &mac,
                "dev",
                ifname,
                "nud",
                "permanent",
            ])?;
        }
    }

    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for (ns, ifname) in [(a, &link.a_if), (b, &link.b_if)] {
        loop {
            let state = ns.ip_output(&["-o", "link", "show", "dev", ifname])?;
            let tentative =
                ns.ip_output(&["-6", "-o", "addr", "show", "dev", ifname, "tentative"])?;
            if state.contains("LOWER_UP") && tentative.trim().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{ifname} in {} not ready after {SETTLE_TIMEOUT:?}: {} / tentative: {}",
                    ns.name(),
                    state.trim(),
                    tentative.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(link)
}

/// The interface index of `ifname` inside `ns`.
pub fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let name = ifname.to_owned();
    ns.run_in(move || sys::if_nametoindex(&name))?
        .with_context(|| format!("if_nametoindex({ifname}) in {}", ns.name()))
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
