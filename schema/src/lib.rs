//! One definition of what flowlens exports.
//!
//! * [`record`] (feature `record`): the exported flow record and its Arrow schema, which every
//!   sink derives its columns from, and [`community_id`].
//! * [`flow`] and [`parse`]: the kernel ABI and the packet parser, re-exported from the `no_std`
//!   crate `flowlens-abi` (the only crate the eBPF probe is built from), so editing the record
//!   never rebuilds the probe. Feature `aya` adds their `aya::Pod` impls.
#![cfg_attr(not(feature = "record"), no_std)]

pub use flowlens_abi::{flow, parse};

#[cfg(feature = "record")]
pub mod community_id;
#[cfg(feature = "record")]
pub mod record;

pub use flow::*;
