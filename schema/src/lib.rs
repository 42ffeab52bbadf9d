//! One definition of what flowlens measures.
//!
//! * [`flow`]: the `#[repr(C)]` key and value the kernel probe writes into its LRU map, and the
//!   per-CPU counter slots. `no_std`, shared byte-for-byte with `probe-ebpf`.
//! * [`parse`]: the packet parser. The same source is compiled into the eBPF program and into
//!   user space (its "twin"), so the kernel's decisions can be unit-tested on the host.
//! * [`record`] (feature `record`): the exported flow record and its Arrow schema, which every
//!   sink derives its columns from, and [`community_id`].
//! * [`layout`] (feature `record`): the Hive layout of Parquet output (`date=…/hour=…/` and
//!   file names), written by the sinks and parsed by the report.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod flow;
pub mod parse;
#[cfg(test)]
mod parse_tests;

#[cfg(feature = "record")]
pub mod community_id;
#[cfg(feature = "record")]
pub mod layout;
#[cfg(feature = "record")]
pub mod record;

pub use flow::*;
