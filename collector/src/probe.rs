//! Loading the embedded eBPF object and attaching its programs.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use flowlens_schema::{FlowKey, FlowValue, NfOffsets};

use crate::{
    drain::{FlowCache, KernelStats, PerKeyDrainer, SwapDrainer},
    kernel_support,
    netfilter::{Family, Hook, NetfilterLink, NetfilterProgram},
};

/// The probe object built by `build.rs` from `probe-ebpf/`, or the stub `build.rs` embeds where
/// the eBPF toolchain is missing (use [`probe_object`], which refuses the stub).
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlens-probe"));

/// The embedded probe object, or a one-line error when this binary was built with the stub.
pub fn probe_object() -> Result<&'static [u8]> {
    check_object(PROBE_OBJECT)
}

fn check_object(object: &[u8]) -> Result<&[u8]> {
    if object.starts_with(b"\x7fELF") {
        return Ok(object);
    }
    let text = String::from_utf8_lossy(object);
    let why = text
        .trim()
        .strip_prefix("flowlens-probe stub:")
        .map_or("not an ELF object", str::trim);
    Err(anyhow!(
        "this flowlens binary was built without its eBPF probe ({why}): rebuild it with \
         `cargo xtask build` (or FLOWLENS_BUILD_EBPF=1 cargo build --release -p flowlens)"
    ))
}

pub const XDP_PROGRAM: &str = "flowlens_xdp";
pub const XDP_NOOP_PROGRAM: &str = "flowlens_xdp_noop";
/// Benchmark twin of [`XDP_PROGRAM`] whose every run opens a new flow (`cargo xtask bench`).
pub const XDP_BENCH_NEW_FLOW_PROGRAM: &str = "flowlens_xdp_bench_new_flow";
/// The two flow buffers (see `drain.rs`).
pub const FLOW_MAPS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];
/// The flow caches in front of them (`flowlens_abi::CacheSlot`): the slots of both buffers and
/// their states.
pub const CACHE_MAPS: [&str; 2] = ["CACHE", "CACHE_STATE"];
/// The netfilter-hook program (any inet hook, IPv4 and IPv6).
pub const NF_PROGRAM: &str = "flowlens_nf";
/// Benchmark twin of [`NF_PROGRAM`] that reads kernel structs with direct BTF-typed loads
/// instead of `bpf_probe_read_kernel` (docs/ARCHITECTURE.md, "Kernel struct offsets").
pub const NF_DIRECT_PROGRAM: &str = "flowlens_nf_direct";
/// Benchmark counterpart of [`NF_PROGRAM`]: returns NF_ACCEPT and nothing else.
pub const NF_NOOP_PROGRAM: &str = "flowlens_nf_noop";
/// The probe's global holding kernel struct offsets for [`NF_PROGRAM`].
const NF_OFFSETS_GLOBAL: &str = "NF_OFFSETS";
/// The probe's global choosing the clock of packets after a flow's first.
const PRECISE_TIMESTAMPS_GLOBAL: &str = "PRECISE_TIMESTAMPS";
/// The probe's global holding the flow caches' slot count.
const CACHE_SLOTS_GLOBAL: &str = "CACHE_SLOTS";
/// The probe's global choosing how TCP flags are OR-ed into a flow.
const PLAIN_FLAGS_OR_GLOBAL: &str = "PLAIN_FLAGS_OR";
/// The probe's global saying the CPU keeps loads and stores in order (x86), so the flow cache
/// publishes slots with plain stores.
const TSO_PUBLISH_GLOBAL: &str = "TSO_PUBLISH";

/// The flavour of the probe loaded, chosen at load time from what the kernel accepts: every
/// optimisation newer than the oldest kernel flowlens supports has a portable fallback, so an
/// older kernel costs a little speed, never the run (README, "Minimum kernel").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVariant {
    /// Coarse clock for packets after a flow's first (`bpf_ktime_get_coarse_ns`, Linux 5.11+,
    /// unless `--precise-timestamps`) and TCP flags OR-ed with a BPF atomic OR (Linux 5.12+).
    Fast,
    /// `bpf_ktime_get_ns` for every packet and a plain read-modify-write of the TCP flags (two
    /// CPUs adding different new flags to one flow at the same instant can lose one; packet and
    /// byte counts stay exact). Loads on every kernel from 5.10.
    Compatible,
}

impl ProbeVariant {
    /// What the variant does, for the log.
    pub fn describe(self, precise_timestamps: bool) -> &'static str {
        match (self, precise_timestamps) {
            (ProbeVariant::Fast, false) => "fast (coarse clock, atomic TCP-flag OR)",
            (ProbeVariant::Fast, true) => "fast (precise clock as asked, atomic TCP-flag OR)",
            (ProbeVariant::Compatible, _) => {
                "compatible (precise clock, non-atomic TCP-flag OR: for kernels before 5.12)"
            }
        }
    }
}

/// How XDP programs are attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode; generic (skb) mode where the driver refuses native XDP (no
    /// support, MTU too large, too few queues), with a warning naming the reason.
    #[default]
    Auto,
    /// Driver mode only; fails on interfaces without native XDP.
    Native,
    /// Generic (SKB) mode: works everywhere, runs after the skb is built.
    Skb,
}

/// How an XDP program ended up attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode, as asked (`--xdp-mode skb`).
    Generic,
    /// Generic (skb) mode because `--xdp-mode auto` found native mode refused, for this reason.
    GenericFallback { native_refused: String },
}

/// The loaded probe. Dropping it detaches every program (XDP and netfilter links) and frees the
/// maps.
pub struct Probe {
    /// Declared first: links close (netfilter hooks detach) before anything else is dropped.
    nf_links: Vec<NetfilterLink>,
    nf_programs: Vec<NetfilterProgram>,
    ebpf: Ebpf,
    attached: Vec<String>,
    /// (interface, program, link) of every XDP attachment.
    xdp_links: Vec<(String, String, XdpLinkId)>,
    /// Whether `NF_OFFSETS` was filled in (netfilter flow programs need it).
    has_nf_offsets: bool,
    max_flows: u32,
    variant: ProbeVariant,
}

/// The verifier's complaint in a load error: the log line before its statistics ("verification
/// time ...", "processed N insns ..."), or the error's first line.
fn verifier_reason(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().collect();
    lines
        .iter()
        .position(|l| l.starts_with("verification time") || l.starts_with("processed "))
        .and_then(|i| i.checked_sub(1))
        .map(|i| lines[i])
        .or(lines.first().copied())
        .unwrap_or_default()
}

/// The fd of an aya map, whatever its type.
fn map_fd(m: &Map) -> BorrowedFd<'_> {
    let data: &MapData = match m {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd()
}

impl Probe {
    /// Loads the probe with two flow buffers of `max_flows` entries each. Programs are loaded
    /// lazily.
    pub fn load(max_flows: u32) -> Result<Probe> {
        Self::load_with(max_flows, None)
    }

    /// Like [`Probe::load`]; `nf_offsets` (from [`crate::netfilter::nf_offsets`]) are written
    /// into the read-only global the netfilter program reads, and are required before
    /// [`Probe::load_netfilter`] of [`NF_PROGRAM`].
    pub fn load_with(max_flows: u32, nf_offsets: Option<NfOffsets>) -> Result<Probe> {
        Self::load_opts(max_flows, nf_offsets, false)
    }

    /// Like [`Probe::load_with`]; `precise_timestamps` makes every program stamp every packet
    /// with `bpf_ktime_get_ns` (`--precise-timestamps`) instead of a clock read once per tick
    /// per CPU (the coarse one for XDP, the precise one for netfilter programs).
    ///
    ///
    /// The XDP flow program is verified here to choose the [`ProbeVariant`]: the fast one if
    /// this kernel accepts it, else the compatible one (logged as a warning with the
    /// verifier's reason). If neither verifies, the fast variant is returned unverified, and
    /// the verifier's error comes with the first XDP attach (a netfilter-only run still works).
    pub fn load_opts(
        max_flows: u32,
        nf_offsets: Option<NfOffsets>,
        precise_timestamps: bool,
    ) -> Result<Probe> {
        let mut fast = Self::load_variant(
            max_flows,
            nf_offsets,
            precise_timestamps,
            ProbeVariant::Fast,
        )?;
        let verified = fast.xdp_program(XDP_PROGRAM).map(|_| ());
        let refused = match verified {
            Ok(()) => {
                let v = ProbeVariant::Fast.describe(precise_timestamps);
                tracing::info!("probe variant: {v}");
                return Ok(fast);
            }
            Err(e) => e,
        };
        let mut compat = Self::load_variant(
            max_flows,
            nf_offsets,
            precise_timestamps,
            ProbeVariant::Compatible,
        )?;
        if compat.xdp_program(XDP_PROGRAM).is_err() {
            tracing::debug!(error = %format!("{refused:#}"), "no probe variant verifies");
            return Ok(fast);
        }
        tracing::warn!(
            reason = verifier_reason(&format!("{refused:#}")),
            "this kernel refused the fast probe; probe variant: {}",
            ProbeVariant::Compatible.describe(precise_timestamps)
        );
        Ok(compat)
    }

    /// Loads the probe's maps for `variant` as it is (no fallback; tests and benchmarks).
    /// Programs are loaded lazily.
    pub fn load_variant(
        max_flows: u32,
        nf_offsets: Option<NfOffsets>,
        precise_timestamps: bool,
        variant: ProbeVariant,
    ) -> Result<Probe> {
        let object = probe_object()?;
        if max_flows == 0 {
            return Err(anyhow!("max-flows must be at least 1"));
        }
        let mut loader = EbpfLoader::new();
        let slots = flowlens_schema::cache::slots_for(max_flows);
        loader
            .map_max_entries(FLOW_MAPS[0], max_flows)
            .map_max_entries(FLOW_MAPS[1], max_flows)
            .map_max_entries(CACHE_MAPS[0], 2 * slots)
            .map_max_entries(CACHE_MAPS[1], 2 * slots);
        loader.override_global(CACHE_SLOTS_GLOBAL, &slots, true);
        // x86 keeps stores in order and loads in order (TSO); the probe's programs run on the
        // CPU this collector was built for.
        let tso = u8::from(cfg!(any(target_arch = "x86_64", target_arch = "x86")));
        loader.override_global(TSO_PUBLISH_GLOBAL, &tso, true);
        let compatible = u8::from(variant == ProbeVariant::Compatible);
        let precise = u8::from(precise_timestamps) | compatible;
        loader.override_global(PRECISE_TIMESTAMPS_GLOBAL, &precise, true);
        loader.override_global(PLAIN_FLAGS_OR_GLOBAL, &compatible, true);
        let offsets;
        if let Some(o) = nf_offsets {
            offsets = o;
            loader.override_global(NF_OFFSETS_GLOBAL, &offsets, true);
        }
        let ebpf = loader.load(object).context(
            "loading the eBPF probe (needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)",
        )?;
        Ok(Probe {
            nf_links: Vec::new(),
            nf_programs: Vec::new(),
            ebpf,
            attached: Vec::new(),
            xdp_links: Vec::new(),
            has_nf_offsets: nf_offsets.is_some(),
            max_flows,
            variant,
        })
    }

    /// The variant loaded.
    pub fn variant(&self) -> ProbeVariant {
        self.variant
    }

    /// Loads netfilter program `name` of the probe object (once; later calls return the loaded
    /// one). Its maps are the ones this probe already created, resolved by name: one set of
    /// maps, one drain. Call before taking maps out with [`Probe::take_drainer`] /
    /// [`Probe::take_stats`].
    pub fn load_netfilter(&mut self, name: &str) -> Result<&NetfilterProgram> {
        let i = match self.nf_programs.iter().position(|p| p.name() == name) {
            Some(i) => i,
            None => {
                if name != NF_NOOP_PROGRAM && !self.has_nf_offsets {
                    return Err(anyhow!(
                        "{name} needs kernel struct offsets: load the probe with Probe::load_with(.., Some(nf_offsets))"
                    ));
                }
                let maps = self.ebpf.maps().map(|(n, m)| (n, map_fd(m)));
                let prog = NetfilterProgram::load(probe_object()?, name, maps)?;
                self.nf_programs.push(prog);
                self.nf_programs.len() - 1
            }
        };
        Ok(&self.nf_programs[i])
    }

    /// Attaches the netfilter flow program to `hook` for IPv4 and IPv6 at `priority`.
    ///
    /// The direct-load variant ([`NF_DIRECT_PROGRAM`], about half the cost per packet) is used
    /// where the verifier accepts it; otherwise [`NF_PROGRAM`], whose kernel reads go through
    /// `bpf_probe_read_kernel` and load whatever the offsets.
    pub fn attach_netfilter(&mut self, hook: Hook, priority: i32) -> Result<()> {
        let name = self.netfilter_flow_program()?;
        let prog = self
            .nf_programs
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| anyhow!("{name} not loaded"))?;
        for family in Family::BOTH {
            let link = prog.attach(hook, family, priority)?;
            tracing::debug!(%hook, %family, priority, link_id = link.id, "netfilter hook attached");
            self.nf_links.push(link);
        }
        Ok(())
    }

    /// Loads (once) the netfilter flow program to attach and returns its name.
    fn netfilter_flow_program(&mut self) -> Result<&'static str> {
        if self
            .nf_programs
            .iter()
            .any(|p| p.name() == NF_DIRECT_PROGRAM)
        {
            return Ok(NF_DIRECT_PROGRAM);
        }
        if self.nf_programs.iter().any(|p| p.name() == NF_PROGRAM) {
            return Ok(NF_PROGRAM);
        }
        match self.load_netfilter(NF_DIRECT_PROGRAM) {
            Ok(_) => Ok(NF_DIRECT_PROGRAM),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}").lines().next().unwrap_or_default(), "the verifier refused the direct-load netfilter program; using the bpf_probe_read_kernel variant (slower)");
                self.load_netfilter(NF_PROGRAM)?;
                Ok(NF_PROGRAM)
            }
        }
    }

    /// The attached netfilter links.
    pub fn netfilter_links(&self) -> &[NetfilterLink] {
        &self.nf_links
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

    /// Attaches the XDP flow program to `iface`. When `--xdp-mode auto` had to fall back to
    /// generic mode, logs one warning naming the interface and the driver's reason.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpAttachMode) -> Result<XdpAttached> {
        let attached = self.attach_xdp_program(XDP_PROGRAM, iface, mode)?;
        if let XdpAttached::GenericFallback { native_refused } = &attached {
            tracing::warn!(
                interface = iface,
                reason = %native_refused,
                "native XDP refused on {iface}; attached in generic (skb) mode instead"
            );
        }
        Ok(attached)
    }

    /// Attaches XDP program `name` (the flow program or, for benchmarks, the no-op twin).
    ///
    /// `Auto` tries native (driver) mode first and falls back to generic (skb) mode when the
    /// driver refuses native XDP for a reason generic mode does not have (no native support,
    /// MTU too large, too few queues: [`kernel_support::NATIVE_ONLY_ERRNOS`]); any other error
    /// (another program attached, no permission) is returned. `Native` fails with the driver's
    /// reason; `Skb` attaches in generic mode only.
    pub fn attach_xdp_program(
        &mut self,
        name: &str,
        iface: &str,
        mode: XdpAttachMode,
    ) -> Result<XdpAttached> {
        let index = crate::ifaces::index_of(iface)?;
        let prog = self.xdp_program(name)?;
        let (link, attached) = match mode {
            XdpAttachMode::Skb => (
                prog.attach(index, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP (skb mode) to {iface}"))?,
                XdpAttached::Generic,
            ),
            XdpAttachMode::Native => match prog.attach(index, XdpMode::Driver) {
                Ok(link) => (link, XdpAttached::Native),
                Err(e) => {
                    return Err(match kernel_support::native_xdp_refusal(iface, &e) {
                        Some(why) => anyhow!(
                            "attaching XDP (native mode) to {iface}: {why} (--xdp-mode auto or skb attaches in generic mode)"
                        ),
                        None => anyhow::Error::new(e)
                            .context(format!("attaching XDP (native mode) to {iface}")),
                    });
                }
            },
            XdpAttachMode::Auto => match prog.attach(index, XdpMode::Driver) {
                Ok(link) => (link, XdpAttached::Native),
                Err(e) => {
                    let Some(why) = kernel_support::native_xdp_refusal(iface, &e) else {
                        return Err(anyhow::Error::new(e)
                            .context(format!("attaching XDP (native mode) to {iface}")));
                    };
                    let link = prog.attach(index, XdpMode::Skb).with_context(|| {
                        format!(
                            "attaching XDP to {iface}: native mode refused ({why}), then generic (skb) mode"
                        )
                    })?;
                    (
                        link,
                        XdpAttached::GenericFallback {
                            native_refused: why,
                        },
                    )
                }
            },
        };
        self.attached.push(iface.to_string());
        self.xdp_links
            .push((iface.to_string(), name.to_string(), link));
        Ok(attached)
    }

    /// Detaches program `name` from `iface` (`flowlens check` tries an attach and takes it
    /// back); dropping the probe detaches everything anyway.
    pub fn detach_xdp_program(&mut self, name: &str, iface: &str) -> Result<()> {
        let i = self
            .xdp_links
            .iter()
            .position(|(f, n, _)| f == iface && n == name)
            .ok_or_else(|| anyhow!("{name} is not attached to {iface}"))?;
        let (_, _, link) = self.xdp_links.swap_remove(i);
        if let Some(j) = self.attached.iter().position(|f| f == iface) {
            self.attached.swap_remove(j);
        }
        self.xdp_program(name)?
            .detach(link)
            .with_context(|| format!("detaching {name} from {iface}"))
    }

    /// Detaches every netfilter link (`flowlens check`); dropping the probe does too.
    pub fn detach_netfilter(&mut self) {
        self.nf_links.clear();
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

    /// The two buffers' flow caches (once).
    fn take_caches(&mut self) -> Result<[FlowCache; 2]> {
        let mut take = |name: &str| -> Result<MapData> {
            match self.ebpf.take_map(name) {
                Some(Map::Array(data)) => Ok(data),
                Some(_) => Err(anyhow!("{name} is not an array map")),
                None => Err(anyhow!("{name} map already taken")),
            }
        };
        let cache = take(CACHE_MAPS[0])?;
        let states = take(CACHE_MAPS[1])?;
        let slots = flowlens_schema::cache::slots_for(self.max_flows);
        FlowCache::pair(cache, states, slots).context("memory-mapping the flow cache")
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
        let caches = self.take_caches()?;
        let active = self
            .ebpf
            .take_map("ACTIVE")
            .ok_or_else(|| anyhow!("ACTIVE map already taken"))?;
        let stats = self.take_stats()?;
        SwapDrainer::new(
            flows,
            caches,
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
        let [cache, _] = self.take_caches()?;
        Ok((PerKeyDrainer::new(map, cache), self.take_stats()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary built with `build.rs`'s stub refuses to load it, with one line that says why
    /// and how to get the real probe.
    #[test]
    fn stub_object_is_refused_with_one_line() {
        let stub = b"flowlens-probe stub: bpf-linker not found on PATH\n";
        let e = format!("{:#}", check_object(stub).unwrap_err());
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with(
                "this flowlens binary was built without its eBPF probe (bpf-linker not found on PATH)"
            ),
            "{e}"
        );
        assert!(e.contains("cargo xtask build"), "{e}");
        let e = format!("{:#}", check_object(b"").unwrap_err());
        assert!(e.contains("(not an ELF object)"), "{e}");
        // An ELF object is passed through untouched (aya then parses it).
        let elf = b"\x7fELF\x02\x01\x01";
        assert_eq!(check_object(elf).unwrap(), elf);
    }

    /// Loading a stub-built binary's probe fails before any bpf(2) call (no root needed).
    #[test]
    fn load_fails_cleanly_or_uses_an_elf_object() {
        match probe_object() {
            Ok(obj) => assert!(obj.starts_with(b"\x7fELF")),
            Err(_) => {
                let e = format!("{:#}", Probe::load(16).err().expect("a stub cannot load"));
                assert!(
                    e.starts_with("this flowlens binary was built without"),
                    "{e}"
                );
            }
        }
    }
}
