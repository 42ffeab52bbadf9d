//! Loading the embedded eBPF object and attaching its programs.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use flowlens_schema::{FlowKey, FlowValue};

use crate::drain::{KernelStats, PerKeyDrainer, SwapDrainer};

/// The probe object built by `build.rs` from `probe-ebpf/`.
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlens-probe"));

pub const XDP_PROGRAM: &str = "flowlens_xdp";
pub const XDP_NOOP_PROGRAM: &str = "flowlens_xdp_noop";
/// The two flow buffers (see `drain.rs`).
pub const FLOW_MAPS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];

/// How XDP programs are attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver supports it, generic otherwise (kernel's choice).
    #[default]
    Auto,
    /// Driver mode only; fails on interfaces without native XDP.
    Native,
    /// Generic (SKB) mode: works everywhere, runs after the skb is built.
    Skb,
}

impl XdpAttachMode {
    fn aya(self) -> XdpMode {
        match self {
            XdpAttachMode::Auto => XdpMode::Default,
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// The loaded probe. Dropping it detaches every program and frees the maps.
pub struct Probe {
    ebpf: Ebpf,
    attached: Vec<String>,
    max_flows: u32,
}

impl Probe {
    /// Loads the probe with two flow buffers of `max_flows` entries each. Programs are loaded
    /// lazily.
    pub fn load(max_flows: u32) -> Result<Probe> {
        if max_flows == 0 {
            return Err(anyhow!("max-flows must be at least 1"));
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries(FLOW_MAPS[0], max_flows)
            .map_max_entries(FLOW_MAPS[1], max_flows)
            .load(PROBE_OBJECT)
            .context(
                "loading the eBPF probe (needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)",
            )?;
        Ok(Probe {
            ebpf,
            attached: Vec::new(),
            max_flows,
        })
    }

    /// The XDP program (or the no-op twin), loaded into the kernel on first use.
    pub fn xdp_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the probe object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifying/loading {name}"))?;
        }
        Ok(prog)
    }

    /// Attaches the XDP flow program to `iface`.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpAttachMode) -> Result<()> {
        let index = crate::ifaces::index_of(iface)?;
        let prog = self.xdp_program(XDP_PROGRAM)?;
        prog.attach(index, mode.aya())
            .with_context(|| format!("attaching XDP ({mode:?} mode) to {iface}"))?;
        self.attached.push(iface.to_string());
        Ok(())
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    fn take_flow_map(
        &mut self,
        name: &str,
    ) -> Result<HashMap<aya::maps::MapData, FlowKey, FlowValue>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("{name} map already taken"))?;
        Ok(HashMap::try_from(map)?)
    }

    fn take_stats(&mut self) -> Result<KernelStats> {
        let map = self
            .ebpf
            .take_map("STATS")
            .ok_or_else(|| anyhow!("STATS map already taken"))?;
        Ok(KernelStats::new(PerCpuArray::try_from(map)?))
    }

    /// Takes the flow buffers, the active-buffer switch and the counters out for the
    /// exactly-once drain (once).
    pub fn take_drainer(&mut self) -> Result<SwapDrainer> {
        let flows = [
            self.take_flow_map(FLOW_MAPS[0])?,
            self.take_flow_map(FLOW_MAPS[1])?,
        ];
        let active = self
            .ebpf
            .take_map("ACTIVE")
            .ok_or_else(|| anyhow!("ACTIVE map already taken"))?;
        let stats = self.take_stats()?;
        SwapDrainer::new(
            flows,
            Array::try_from(active)?,
            stats,
            self.max_flows as u64,
        )
        .context("setting up the flow-map drain")
    }

    /// Benchmarks and tests only: the other agents' per-key drain on the live first buffer
    /// (programs keep writing `FLOWS_0` because nobody flips the buffers), and the counters.
    pub fn take_per_key_drainer(&mut self) -> Result<(PerKeyDrainer, KernelStats)> {
        let map = self.take_flow_map(FLOW_MAPS[0])?;
        Ok((PerKeyDrainer::new(map), self.take_stats()?))
    }
}
