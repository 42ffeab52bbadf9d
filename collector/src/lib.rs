//! flowlens collector.
//!
//! Data flows one way: [`probe`] (kernel maps) → [`drain`] → [`flow_table`] (merging, timeouts)
//! → [`export`] (records) → [`identity`] (who is talking at each local end) → sinks (built by `flowlens_sinks::build`). [`pipeline`] runs those
//! stages once per cycle and accumulates the [`stats`]; [`run`] starts and stops everything
//! (validation, [`netfilter::detect`], attaching, the timer loop, shutdown).
//!
//! Around the pipeline, each reading it and never the other way round:
//! * [`stats`]: the run's counters (a leaf: imports no other collector module);
//! * [`conservation`]: per-drain and shutdown accounting logs;
//! * [`metrics`]: the HTTP endpoint, fed a copy of [`stats`] each cycle by [`observe`].
//!
//! `tests/module_graph.rs` fails if a `use crate::…` cycle between these modules reappears.

pub mod check;
pub mod config;
pub mod conservation;
pub mod drain;
pub mod export;
pub mod flow_table;
pub mod identity;
pub mod ifaces;
pub mod kernel_support;
pub mod memory;
pub mod metrics;
pub mod netfilter;
pub mod observe;
pub mod pipeline;
pub mod privileges;
pub mod probe;
pub mod run;
pub mod stats;
pub mod sys;
pub mod timebase;

/// `flowlens report` and `flowlens top` live in their own crate (no eBPF, no sinks); re-exported
/// at their old paths.
pub use flowlens_report as report;
pub use flowlens_report::top;
