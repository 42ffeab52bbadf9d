//! Human-readable records on standard output, one line each.

use std::io::Write as _;

use flowlens_schema::record::{FlowRecord, observation_point_name, transport_name};

use crate::{Result, Sink, SinkError};

/// Counts the lines it wrote: standard output is line-buffered, so a written line has reached
/// the file descriptor (`sent` = `acknowledged`).
#[derive(Debug, Default)]
pub struct StdoutSink {
    written: u64,
}

/// Formats one record as a line (no trailing newline).
pub fn format_record(r: &FlowRecord) -> String {
    let k = &r.key;
    let ts = |us: i64| {
        humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64),
        )
    };
    let ep = |a: std::net::IpAddr, p: u16| match a {
        std::net::IpAddr::V6(_) => format!("[{a}]:{p}"),
        _ => format!("{a}:{p}"),
    };
    let vlan = r
        .vlan_id()
        .map(|v| format!(" vlan={v}"))
        .unwrap_or_default();
    let what = if matches!(k.protocol, 1 | 58) {
        format!(
            "{} -> {} type={} code={}",
            r.source_address(),
            r.destination_address(),
            k.icmp_type,
            k.icmp_code
        )
    } else {
        format!(
            "{} -> {}",
            ep(r.source_address(), k.src_port),
            ep(r.destination_address(), k.dst_port)
        )
    };
    format!(
        "{} {} {}@{}{} {} {} packets={} bytes={} tcp_flags={:#x} dscp={} end={}",
        ts(r.flow_end_us),
        observation_point_name(k.observation_point),
        r.interface_name,
        k.ifindex,
        vlan,
        transport_name(k.protocol),
        what,
        r.packets,
        r.bytes,
        r.tcp_flags,
        r.dscp,
        r.end_reason.as_str()
    )
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }
    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for r in records {
            writeln!(out, "{}", format_record(r)).map_err(|e| SinkError::io("stdout", e))?;
            self.written += 1;
        }
        Ok(())
    }
    fn metrics(&self) -> crate::SinkMetrics {
        crate::SinkMetrics {
            sent: self.written,
            acknowledged: self.written,
            ..Default::default()
        }
    }
    fn close(&mut self) -> Result<()> {
        std::io::stdout()
            .flush()
            .map_err(|e| SinkError::io("stdout", e))
    }
}
