//! `flowlens run`: start and stop. Validates everything that can fail before attaching
//! anything, builds the sinks (`flowlens_sinks::build`), loads and attaches the probe, then
//! runs the [`Pipeline`] on a timer (and early when the kernel buffer fills up) until
//! SIGINT/SIGTERM or `--duration`; at the end detaches, drains the last flows, closes the
//! sinks and logs the conservation line.
//!
//! Data flows one way: probe → [`crate::drain`] → [`crate::flow_table`] → [`crate::export`] →
//! sinks, all inside [`Pipeline::cycle`]; [`crate::observe`] reports each cycle to the
//! metrics endpoint.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::{
    config::RunConfig,
    conservation,
    drain::Drainer,
    export::Exporter,
    flow_table::FlowTable,
    identity, ifaces, kernel_support, metrics,
    observe::{observed_cycle, observer_for},
    pipeline::Pipeline,
    probe::Probe,
    stats::Totals,
};

/// How often `flowlens run` checks whether the kernel buffer needs an early drain.
const FILL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs until SIGINT/SIGTERM or `cfg.duration`.
pub fn run(cfg: RunConfig) -> Result<Totals> {
    let host: Arc<str> = ifaces::hostname().into();
    // Validate everything that can fail before attaching anything.
    // XDP: the named interfaces; with neither --xdp nor --netfilter, the default set; with only
    // --netfilter, none.
    let ifaces_list = ifaces::xdp_targets(&cfg.xdp, !cfg.netfilter.is_empty())?;
    for i in &ifaces_list {
        ifaces::index_of(i).context("--xdp")?;
    }
    crate::privileges::check()?;
    // Metrics endpoint: bound first, so a taken port fails before anything is attached.
    let metrics_listener = cfg.metrics_listen.map(metrics::bind).transpose()?;
    let labels = cfg
        .label_cidrs
        .as_deref()
        .map(identity::LabelTable::from_file)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Kubernetes names: the client configuration is checked now (a bad kubeconfig stops the
    // start); the watchers start at once on their own thread, an API server that is down is
    // retried there.
    let k8s = if cfg.kubernetes {
        let c = flowlens_k8s::client_config(cfg.kubeconfig.as_deref())?;
        Some(flowlens_k8s::start(c, identity::K8S_GRACE)?)
    } else {
        None
    };
    let sinks = flowlens_sinks::build::build(&cfg.sinks, &cfg.sink_options(host.clone()))?;

    // Signal listeners exist before anything is attached: a SIGTERM that arrives while the
    // probe is loading stops flowlens cleanly right after (the default action would kill it
    // mid-start).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_rt = rt.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };

    let (nf_hooks, nf_offsets) = if cfg.netfilter.is_empty() {
        (Vec::new(), None)
    } else {
        match kernel_support::netfilter_offsets() {
            Ok(o) => (cfg.netfilter.clone(), Some(o)),
            Err(e) if e.is_unavailable() && !ifaces_list.is_empty() => {
                tracing::warn!(
                    error = %e,
                    hooks = ?cfg.netfilter.iter().map(|h| h.name()).collect::<Vec<_>>(),
                    "netfilter hooks unavailable on this kernel: continuing with XDP only"
                );
                (Vec::new(), None)
            }
            Err(e) => return Err(anyhow::Error::new(e).context("--netfilter")),
        }
    };

    // Served from here on (its own thread): /readyz fails until the probes are attached.
    let (observer, _metrics_server) = match metrics_listener {
        Some(l) => {
            let o = observer_for(&cfg, &sinks, !ifaces_list.is_empty(), &nf_hooks);
            let server = o.serve(l)?;
            (Some(o), Some(server))
        }
        None => (None, None),
    };

    let mut probe = Probe::load_opts(cfg.max_flows, nf_offsets, cfg.precise_timestamps)?;
    for i in &ifaces_list {
        probe.attach_xdp(i, cfg.xdp_mode)?;
    }
    for h in &nf_hooks {
        probe.attach_netfilter(*h, cfg.netfilter_priority)?;
    }
    let mut drainer = probe.take_drainer()?;
    if !nf_hooks.is_empty() {
        tracing::info!(
            hooks = ?nf_hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
            priority = cfg.netfilter_priority,
            link_ids = ?probe.netfilter_links().iter().map(|l| l.id).collect::<Vec<_>>(),
            "netfilter hooks attached (IPv4 and IPv6)"
        );
    }
    if let Some(o) = &observer {
        let mut what = Vec::new();
        if !ifaces_list.is_empty() {
            what.push(format!("xdp: {}", ifaces_list.join(",")));
        }
        if !nf_hooks.is_empty() {
            let names: Vec<&str> = nf_hooks.iter().map(|h| h.name()).collect();
            what.push(format!("netfilter: {}", names.join(",")));
        }
        o.attached(what.join("; "));
    }
    tracing::info!(interfaces = ?ifaces_list, mode = ?cfg.xdp_mode, sinks = ?cfg.sinks.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "flowlens running");

    // --max-memory: validated with the config; the flow cap is what is left for the table.
    let budget = cfg.memory_budget().map_err(anyhow::Error::msg)?;
    tracing::info!(
        max_memory = budget.max_memory,
        flow_cap = budget.flow_cap,
        table_bytes = budget.table,
        drain_bytes = budget.drain,
        sink_queue_bytes = budget.sink_queues,
        kernel_map_bytes = crate::memory::kernel_map_bytes(cfg.max_flows),
        "memory budget (--max-memory): past flow_cap open flows, the least recently seen end early (lack_of_resources)"
    );
    let mut pipe = Pipeline::new(
        FlowTable::new(cfg.active_timeout, cfg.idle_timeout)
            .with_max_flows(usize::try_from(budget.flow_cap).unwrap_or(usize::MAX)),
        Exporter::new(host),
        sinks,
    );
    pipe.reserve_drain(crate::memory::drain_entries(cfg.max_flows));
    // Only the netfilter programs capture sockets' cgroups: an XDP-only run has none to resolve
    // (and no reason to look for, or warn about, the cgroup2 hierarchy).
    let cgroups = if nf_hooks.is_empty() {
        identity::CgroupResolver::with_root(None)
    } else {
        identity::CgroupResolver::from_system()
    };
    pipe.identity = identity::IdentityStage::new(cgroups, labels);
    pipe.identity.k8s = k8s;
    // Containers behind veth interfaces of this namespace (XDP and netfilter alike).
    pipe.identity.peers = identity::PeerMap::from_system();

    let result: Result<()> = rt.block_on(async {
        let mut tick = tokio::time::interval(cfg.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_after = async {
            match cfg.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_after);
        let mut n: u64 = 0;
        // Early drains: the buffer's fill level is checked this often (a few syscalls).
        let mut fill_check = tokio::time::interval(FILL_CHECK_INTERVAL.min(cfg.drain_interval));
        fill_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let early_at = (cfg.max_flows as u64 * cfg.early_drain_fill as u64 / 100).max(1);
        loop {
            tokio::select! {
                biased;
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = &mut stop_after => { tracing::info!("duration reached: stopping"); break; }
                _ = tick.tick() => {
                    observed_cycle(&mut pipe, &mut drainer, observer.as_ref())?;
                    n += 1;
                    if n.is_multiple_of(60) {
                        pipe.exporter.names.clear();
                    }
                }
                _ = fill_check.tick(), if cfg.early_drain_fill > 0 || observer.is_some() => {
                    let fill = drainer.fill();
                    if let (Some(o), Some((inserted, _))) = (&observer, fill) {
                        o.fill(inserted);
                    }
                    if let Some((inserted, _)) = fill
                        && cfg.early_drain_fill > 0
                        && inserted >= early_at
                    {
                        tracing::debug!(inserted, early_at, "kernel flow buffer filling up: draining early");
                        pipe.totals.early_drains += 1;
                        observed_cycle(&mut pipe, &mut drainer, observer.as_ref())?;
                        tick.reset();
                    }
                }
            }
        }
        Ok(())
    });
    if let Some(o) = &observer {
        o.stopping();
    }
    // Stop observing first, then take the last counts. Dropping the probe closes the netfilter
    // link fds (unhooking them) and detaches XDP; the final drain swaps buffers twice, waiting
    // out runs still in flight after the detach, so nothing arrives after it.
    drop(probe);
    let last = pipe.cycle(&mut drainer, true);
    conservation::report_shutdown(&pipe.totals);
    let closed = pipe.close();
    result?;
    last?;
    closed?;
    let t = pipe.totals;
    tracing::info!(
        records = t.records,
        packets = t.packets,
        bytes = t.bytes,
        sink_errors = t.sink_errors,
        records_lost_in_sinks = t.records_lost_in_sinks,
        records_spooled = t.records_spooled,
        drain_failures = t.drain_failures,
        flows_ended_lack_of_resources = t.flows_ended_lack_of_resources,
        lack_of_resources_packets = t.lack_of_resources_packets,
        peak_rss_bytes = crate::memory::peak_rss_bytes().unwrap_or(0),
        max_memory = cfg.max_memory,
        "flowlens stopped"
    );
    Ok(t)
}
