//! Code generation options of the probe, passed to bpf-linker (which runs LLVM's BPF backend
//! for the whole program at link time).
//!
//! `allows-misaligned-mem-access`: packet headers sit at any byte offset (the IPv4 header of an
//! Ethernet frame starts at 14), so without it LLVM reads every multi-byte header field and
//! copies every address one byte at a time. With it, LLVM uses 2-, 4- and 8-byte loads. The
//! verifier checks packet and map-value access alignment only with `BPF_F_STRICT_ALIGNMENT` or on
//! architectures without efficient unaligned access; stack accesses stay aligned (LLVM keeps stack
//! slots aligned).
///
/// Only for the BPF target: `cargo test --workspace` also builds this crate for the host, whose
/// linker (cc) does not know the option.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
}
