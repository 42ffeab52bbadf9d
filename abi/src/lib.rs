//! The flowlens kernel ABI: everything the eBPF probe (`probe-ebpf`) is compiled from besides
//! aya-ebpf, and nothing else, so that editing user-space code never rebuilds the probe.
//!
//! * [`flow`]: the `#[repr(C)]` key and value the kernel probe writes into its LRU map, the
//!   per-CPU counter slots ([`stats`]) and the kernel struct offsets the netfilter probe reads.
//!   Shared byte-for-byte with `probe-ebpf`.
//! * [`parse`]: the packet parser. The same source is compiled into the eBPF program and into
//!   user space (its "twin"), so the kernel's decisions can be unit-tested on the host.
//!
//! `no_std`; feature `aya` adds the `aya::Pod` impls user space needs to read the maps.
//! `flowlens-schema` re-exports both modules at their old paths (`flowlens_schema::FlowKey`,
//! `flowlens_schema::parse::…`).
#![cfg_attr(not(feature = "aya"), no_std)]

pub mod flow;
pub mod parse;
#[cfg(test)]
mod parse_tests;

pub use flow::*;
