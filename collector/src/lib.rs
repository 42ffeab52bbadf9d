//! flowlens collector.
//!
//! Data flows one way: [`probe`] (kernel maps) → [`drain`] → [`flow_table`] (merging, timeouts)
//! → [`export`] (records) → sinks. [`run`] wires the stages together on a timer.

pub mod check;
pub mod config;
pub mod drain;
pub mod export;
pub mod flow_table;
pub mod ifaces;
pub mod kernel_support;
pub mod metrics;
pub mod netfilter;
pub mod privileges;
pub mod probe;
pub mod run;
pub mod sys;
pub mod timebase;

/// `flowlens report` and `flowlens top` live in their own crate (no eBPF, no sinks); re-exported
/// at their old paths.
pub use flowlens_report as report;
pub use flowlens_report::top;
