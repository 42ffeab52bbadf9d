//! Builds the eBPF probe (probe-ebpf) with the pinned nightly and embeds it into the collector.
//! The nightly name is shared with xtask through `../probe-ebpf/NIGHTLY`.

fn main() -> anyhow::Result<()> {
    let nightly = std::fs::read_to_string("../probe-ebpf/NIGHTLY")?;
    let nightly = nightly.trim();
    println!("cargo::rerun-if-changed=../probe-ebpf/NIGHTLY");
    println!("cargo::rerun-if-changed=../schema/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "flowlens-probe",
            root_dir: "../probe-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(nightly),
    )
}
