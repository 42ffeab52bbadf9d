//! Test hosts, traffic and an independent observer for flowlens tests.
//!
//! Everything here needs root (network namespaces, veth, raw and packet sockets).
//!
//! * [`Netns`]: a uniquely named network namespace (`fl-{tag}-{pid}-{n}`), deleted on drop.
//! * [`veth_pair`]: two namespaces joined by a veth pair with IPv4 + IPv6 addresses and
//!   permanent neighbour entries (so no ARP / neighbour discovery traffic disturbs counts);
//!   [`Link::disable_gso`] makes TCP travel as MTU-sized frames instead of GSO super-packets.
//! * [`routed`]: host A — router R — host B (two veth pairs, forwarding on in R, routes in A
//!   and B), for forwarded traffic.
//! * [`udp_exchange`], [`tcp_transfer`], [`icmp_echo`]: bounded traffic generators.
//! * [`syn_flood`]: a random-source SYN flood over a link, bounded in packets and time.
//! * [`Capture`]: an AF_PACKET observer of the frames an interface receives.
//! * [`temp_dir`], [`unique_path`], [`Tmpfs`]: test directories and a small mounted tmpfs (to
//!   fill a disk).
//! * [`flows_of`]: per-flow packet / byte totals of captured frames, computed with
//!   `etherparse` (deliberately not with flowlens' own parser).
//!
//! With the default feature `peers` (off for xtask, to keep its build small):
//! * `otlp`: an OTLP/gRPC logs receiver that records what it gets; `moto`: an S3-compatible
//!   server (moto) on loopback.
//! * `kube_api`: an in-test Kubernetes API server (list/watch, 410, faults) for the real
//!   `kube` client.
//! * `kafka`: a real Kafka-compatible broker process (tansu) and a consumer that reads a
//!   topic back; `records`: synthetic flow records (both directions of each conversation).
//!
//! Traffic only ever goes to addresses inside namespaces created by this crate (or to
//! loopback inside them); every wait is bounded in time and every loop in count.

mod capture;
mod child;
mod flood;
mod flows;
mod fs;
#[cfg(feature = "peers")]
pub mod kafka;
#[cfg(feature = "peers")]
pub mod kube_api;
mod link;
#[cfg(feature = "peers")]
pub mod moto;
mod netns;
#[cfg(feature = "peers")]
pub mod otlp;
mod procfs;
#[cfg(feature = "peers")]
pub mod records;
mod router;
mod sys;
mod traffic;

pub use capture::{Capture, MAX_FRAME};
pub use child::assert_child_entry_is_not_a_test;
pub use flood::{FLOOD_IP_LEN, FloodReport, FloodSpec, is_flood_source, syn_flood};
pub use flows::{FlowTuple, flows_of};
pub use fs::{Tmpfs, temp_dir, unique_path};
pub use link::{Link, ifindex, veth_pair};
pub use netns::{Netns, NsThread};
pub use procfs::{log_field, log_line, netfilter_links};
pub use router::{Routed, routed};
pub use traffic::{icmp_echo, tcp_transfer, udp_exchange};

/// Pins the calling thread to `cpu` (tests that need work on every CPU at once).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity(0) pins
    // the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        r,
        0,
        "sched_setaffinity to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}
