//! Observer wiring: what the metrics endpoint is told about this run (observation points,
//! each sink's stall window) and the timing of each cycle. The endpoint itself
//! ([`crate::metrics`]) knows only the counters of [`crate::stats`].

use std::time::Instant;

use anyhow::Result;
use flowlens_sinks::Sink;

use crate::{
    config::RunConfig,
    drain::Drainer,
    metrics::{Observer, SinkInfo},
    netfilter::Hook,
    pipeline::Pipeline,
};

/// The metrics endpoint's view of this run: observation points in use and each sink's stall
/// window (`--sink-stall-timeout` plus the time the sink itself may take to acknowledge, e.g.
/// a Parquet sink's rotate interval).
pub fn observer_for(
    cfg: &RunConfig,
    sinks: &[Box<dyn Sink>],
    xdp: bool,
    nf_hooks: &[Hook],
) -> Observer {
    let mut points = Vec::new();
    if xdp {
        points.push(flowlens_schema::OBS_XDP);
    }
    for h in nf_hooks {
        points.push(flowlens_schema::OBS_NF_PRE_ROUTING + h.hooknum() as u8);
    }
    let infos = sinks
        .iter()
        .map(|s| SinkInfo {
            name: s.name().to_string(),
            stall_window: cfg.sink_stall_timeout + s.ack_latency(),
        })
        .collect();
    Observer::new(
        points,
        cfg.max_flows,
        Observer::loop_stall(cfg.drain_interval),
        infos,
    )
}

/// One timer or early cycle, reported to the metrics endpoint (if any).
pub fn observed_cycle(
    pipe: &mut Pipeline,
    drainer: &mut dyn Drainer,
    observer: Option<&Observer>,
) -> Result<()> {
    let Some(o) = observer else {
        return pipe.cycle(drainer, false);
    };
    o.cycle_start();
    let t0 = Instant::now();
    let r = pipe.cycle(drainer, false);
    o.cycle_end(pipe, t0.elapsed());
    r
}
