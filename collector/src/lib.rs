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
pub mod report;
pub mod run;
pub mod sys;
pub mod timebase;
pub mod top;
