//! Human-readable records on standard output, one line each.

use std::io::Write;

use flowlens_schema::record::{FlowRecord, observation_point_name, transport_name};

use crate::{Result, Sink, SinkError};

/// Writes each batch whole or not at all, as far as the sink can tell: the batch is formatted
/// into one buffer and handed over in one `write_all`, so no other output of the process lands
/// between its lines. If the write fails part-way (a closed pipe, a full disk), the whole batch
/// counts as failed (the collector reports its records lost) and none of it as sent; the torn
/// last line is ended before the next batch, so every later line is whole. A batch counts as
/// sent and acknowledged once it reached the file descriptor (`sent` = `acknowledged`).
pub struct StdoutSink {
    out: Box<dyn Write + Send>,
    written: u64,
    /// The last failed write ended in the middle of a line.
    torn: bool,
    buf: Vec<u8>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::with_writer(Box::new(std::io::stdout()))
    }
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink")
            .field("written", &self.written)
            .field("torn", &self.torn)
            .finish_non_exhaustive()
    }
}

impl StdoutSink {
    /// The sink on another writer (tests).
    pub fn with_writer(out: Box<dyn Write + Send>) -> Self {
        StdoutSink {
            out,
            written: 0,
            torn: false,
            buf: Vec::new(),
        }
    }
}

/// Writes all of `buf`; on error, also returns how many bytes were written before it.
fn write_all_counted(
    w: &mut dyn Write,
    buf: &[u8],
) -> std::result::Result<(), (usize, std::io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err((done, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
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
    let mut line = format!(
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
    );
    end_fields(&mut line, "src", &r.ends.source);
    end_fields(&mut line, "dst", &r.ends.destination);
    line
}

/// Appends ` src_container=... src_pod=...` for the identity fields that are set (issue 12),
/// then ` src_ns=... src_pod_name=... src_owner_kind=... src_owner=... src_node=...
/// src_service=... src_zone=...` for the Kubernetes names that are set (issue 13).
fn end_fields(line: &mut String, prefix: &str, e: &flowlens_schema::record::EndIdentity) {
    use std::fmt::Write as _;
    let texts = [
        ("cgroup", &e.cgroup),
        ("container", &e.container_id),
        ("pod", &e.k8s_pod_uid),
        ("process", &e.process_name),
    ];
    for (name, v) in texts {
        if let Some(v) = v {
            let _ = write!(line, " {prefix}_{name}={v}");
        }
    }
    if let Some(pid) = e.process_pid {
        let _ = write!(line, " {prefix}_pid={pid}");
    }
    if let Some(l) = &e.label {
        let _ = write!(line, " {prefix}_label={l}");
    }
    // Kubernetes names (issue 13), `K8S_END_FIELDS` order.
    let names = [
        "ns",
        "pod_name",
        "owner_kind",
        "owner",
        "node",
        "service",
        "zone",
    ];
    for (name, v) in names.into_iter().zip(e.k8s_fields()) {
        if let Some(v) = v {
            let _ = write!(line, " {prefix}_{name}={v}");
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }
    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if self.torn {
            buf.push(b'\n');
        }
        for r in records {
            buf.extend_from_slice(format_record(r).as_bytes());
            buf.push(b'\n');
        }
        let r = write_all_counted(&mut *self.out, &buf)
            .and_then(|()| self.out.flush().map_err(|e| (buf.len(), e)));
        let result = match r {
            Ok(()) => {
                self.torn = false;
                self.written += records.len() as u64;
                Ok(())
            }
            Err((done, e)) => {
                if done > 0 {
                    self.torn = buf[done - 1] != b'\n';
                }
                Err(SinkError::io(
                    format!(
                        "stdout: batch of {} records not written whole",
                        records.len()
                    ),
                    e,
                ))
            }
        };
        self.buf = buf;
        result
    }
    fn metrics(&self) -> crate::SinkMetrics {
        crate::SinkMetrics {
            sent: self.written,
            acknowledged: self.written,
            ..Default::default()
        }
    }
    fn close(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| SinkError::io("stdout", e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that takes at most 64 bytes per call (short writes) and fails with EPIPE once
    /// `budget` bytes are used up (`None`: no limit).
    #[derive(Clone, Default)]
    struct Flaky {
        got: Arc<Mutex<Vec<u8>>>,
        budget: Arc<Mutex<Option<usize>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut budget = self.budget.lock().unwrap();
            let n = buf.len().min(64).min(budget.unwrap_or(usize::MAX));
            if n == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            if let Some(b) = budget.as_mut() {
                *b -= n;
            }
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write that fails part-way counts the whole batch as failed (none of it sent), and the
    /// next batch starts on a line of its own.
    #[test]
    fn a_batch_that_fails_part_way_counts_whole_and_leaves_later_lines_whole() {
        let recs = flowlens_testkit::records::conversations(15); // 30 records
        let (a, b, c) = (&recs[..10], &recs[10..20], &recs[20..]);
        let w = Flaky::default();
        let mut s = StdoutSink::with_writer(Box::new(w.clone()));
        s.write(a).unwrap();
        assert_eq!((s.metrics().sent, s.metrics().acknowledged), (10, 10));

        // Room for about one and a half lines of the next batch, then EPIPE.
        let line = format_record(&b[0]).len() + 1;
        *w.budget.lock().unwrap() = Some(line + line / 2);
        let e = s.write(b).unwrap_err().to_string();
        assert!(e.contains("not written whole"), "{e}");
        let m = s.metrics();
        assert_eq!(
            (m.sent, m.acknowledged),
            (10, 10),
            "failed batch counted: {m:?}"
        );

        *w.budget.lock().unwrap() = None;
        s.write(c).unwrap();
        s.close().unwrap();
        assert_eq!(s.metrics().sent, 20);

        let got = String::from_utf8(w.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        let whole = |rs: &[FlowRecord]| rs.iter().map(format_record).collect::<Vec<_>>();
        assert_eq!(lines[..10], whole(a)[..]);
        // What reached the writer of the failed batch: one whole line and a torn one.
        assert_eq!(lines[10], whole(b)[0]);
        assert!(
            whole(b)[1].starts_with(lines[11]) && lines[11].len() < whole(b)[1].len(),
            "{:?}",
            lines[11]
        );
        // The next batch is whole, each record on its own line.
        assert_eq!(lines[12..], whole(c)[..]);
    }

    /// A real pipe whose reader goes away in the middle of a batch (bigger than the pipe's
    /// buffer): EPIPE part-way, the whole batch fails and nothing of it counts as sent.
    #[test]
    fn a_reader_that_goes_away_mid_batch_fails_the_whole_batch() {
        use std::io::Read;
        let recs = flowlens_testkit::records::conversations(1000); // 2000 records, ~300 KB
        let (mut r, w) = std::io::pipe().unwrap();
        let mut s = StdoutSink::with_writer(Box::new(w));
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 100_000];
            r.read_exact(&mut buf).unwrap();
            buf // dropping `r` closes the read end
        });
        let e = s.write(&recs).unwrap_err().to_string();
        assert!(e.contains("Broken pipe"), "{e}");
        assert_eq!((s.metrics().sent, s.metrics().acknowledged), (0, 0));
        let got = String::from_utf8(reader.join().unwrap()).unwrap();
        // The reader saw the batch's first lines, whole, and the start of the next one.
        let lines: Vec<&str> = got.split('\n').collect();
        let (last, whole) = lines.split_last().unwrap();
        for (l, r) in whole.iter().zip(&recs) {
            assert_eq!(*l, format_record(r));
        }
        assert!(format_record(&recs[whole.len()]).starts_with(last));
    }

    #[test]
    fn identity_fields_are_appended_when_set() {
        let recs = flowlens_testkit::records::conversations(8);
        // Conversation 2 names its local end (source of the first record) and labels none;
        // conversation 6 names it and labels both ends.
        let named = format_record(&recs[4]);
        assert!(
            named.contains(" src_cgroup=/kubepods.slice/")
                && named.contains(&format!(" src_container={:064x}", 2))
                && named.contains(" src_pod=0b5a9f6e-1c2d-4e5f-8a9b-000000000002")
                && named.contains(" src_process=nginx src_pid=1002")
                && named.contains(
                    " src_ns=shop src_pod_name=checkout-2 src_owner_kind=Deployment src_owner=checkout src_node=node-2 src_zone=eu-west-1a"
                )
                && named.ends_with(
                    " dst_ns=db dst_pod_name=postgres-0 dst_owner_kind=StatefulSet dst_owner=postgres dst_node=node-9 dst_service=postgres dst_zone=eu-west-1b"
                )
                && !named.contains(" dst_container"),
            "{named}"
        );
        let reply = format_record(&recs[5]);
        assert!(
            reply.contains(" dst_container=")
                && !reply.contains(" src_container")
                && reply.contains(" src_ns=db ")
                && reply.contains(" dst_owner=checkout "),
            "{reply}"
        );
        let labelled = format_record(&recs[12]);
        assert!(
            labelled.contains(" src_label=site-a src_ns=shop ")
                && labelled.ends_with(" src_zone=eu-west-1a dst_label=cloud ü"),
            "{labelled}"
        );
        // A Service ClusterIP destination: its namespace and name only.
        assert!(
            format_record(&recs[0]).ends_with(" dst_ns=shop dst_service=frontend"),
            "{}",
            format_record(&recs[0])
        );
        assert!(!format_record(&recs[0]).contains("src_"));
    }
}
