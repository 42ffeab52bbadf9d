//! Netfilter detection at start: does this kernel run netfilter programs, where are the
//! struct fields the probe reads, and what to do when it cannot (fall back to XDP only, or
//! fail).

use flowlens_schema::NfOffsets;

use super::{Hook, NetfilterError, btf::Btf, nf_offsets, probe_support};

/// Checks that this kernel runs netfilter programs and reads the struct offsets the probe needs.
pub fn offsets() -> Result<NfOffsets, NetfilterError> {
    probe_support()?;
    Ok(nf_offsets(&Btf::from_kernel()?)?)
}

/// Errors that mean "this kernel cannot run the netfilter probe at all" (as opposed to a hook
/// that fails to attach, or a program the verifier rejects): with XDP also requested, flowlens
/// warns and goes on with XDP only.
pub fn unavailable(e: &NetfilterError) -> bool {
    matches!(e, NetfilterError::Unsupported(_) | NetfilterError::Btf(_))
}

/// The hooks to attach and the offsets the probe needs for them: `requested` (`--netfilter`)
/// when the kernel supports them; none (with a warning) when it cannot run them at all and
/// `with_xdp` (XDP carries on alone); else the error.
pub fn hooks_to_attach(
    requested: &[Hook],
    with_xdp: bool,
) -> Result<(Vec<Hook>, Option<NfOffsets>), NetfilterError> {
    if requested.is_empty() {
        return Ok((Vec::new(), None));
    }
    match offsets() {
        Ok(o) => Ok((requested.to_vec(), Some(o))),
        Err(e) if unavailable(&e) && with_xdp => {
            tracing::warn!(
                error = %e,
                hooks = ?requested.iter().map(|h| h.name()).collect::<Vec<_>>(),
                "netfilter hooks unavailable on this kernel: continuing with XDP only"
            );
            Ok((Vec::new(), None))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::{Family, Hook, btf::BtfError};

    /// Only "the kernel cannot do it at all" falls back to XDP; a hook that fails to attach or a
    /// rejected program stays an error.
    #[test]
    fn netfilter_fallback_is_only_for_missing_kernel_support() {
        let errno = |n| std::io::Error::from_raw_os_error(n);
        assert!(unavailable(&NetfilterError::Unsupported(errno(
            libc::EINVAL
        ))));
        assert!(unavailable(&NetfilterError::Btf(BtfError::NoStruct(
            "bpf_nf_ctx".into()
        ))));
        let attach = NetfilterError::Attach {
            program: "flowlens_nf".into(),
            hook: Hook::Forward,
            family: Family::Ipv6,
            priority: -450,
            source: errno(libc::EBUSY),
        };
        assert!(!unavailable(&attach));
        let msg = attach.to_string();
        assert!(
            msg.contains("hook forward") && msg.contains("ipv6") && msg.contains("busy"),
            "{msg}"
        );
        assert!(!unavailable(&NetfilterError::Load {
            program: "flowlens_nf".into(),
            source: errno(libc::EACCES),
            log: "R1 invalid mem access".into(),
        }));
        let unsupported = NetfilterError::Unsupported(errno(libc::EINVAL)).to_string();
        assert!(unsupported.contains("Linux >= 6.4"), "{unsupported}");
    }
}
