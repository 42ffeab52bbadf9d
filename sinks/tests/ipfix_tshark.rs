//! IPFIX identity (issue 12) and Kubernetes name (issue 13) enterprise elements, read back by an
//! independent decoder: the encoder's messages go into a pcap (UDP on loopback addresses, no
//! traffic is sent) that Wireshark's dissector (`tshark`) decodes; every enterprise element of
//! every data record must carry the record's value ("" for null). Needs tshark
//! (`cargo xtask setup`).

use std::{path::Path, process::Command};

use flowlens_schema::record::FlowRecord;
use flowlens_sinks::ipfix::encode::{
    DEFAULT_ENTERPRISE_NUMBER, ENTERPRISE_FIELDS, Encoder, EncoderConfig,
};

const PORT: u16 = 4739;

/// A classic pcap (Ethernet) of one UDP datagram per message, 127.0.0.1 → 127.0.0.1:PORT.
fn pcap(path: &Path, msgs: &[Vec<u8>]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, m) in msgs.iter().enumerate() {
        let udp_len = 8 + m.len();
        let ip_len = 20 + udp_len;
        let mut p = Vec::with_capacity(14 + ip_len);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&ip);
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&PORT.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(m);
        f.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&p);
    }
    std::fs::write(path, f).unwrap();
}

/// The value a record's enterprise element must carry, as tshark prints it.
fn want(r: &FlowRecord, column: &str) -> String {
    let e = if column.starts_with("source_") {
        &r.ends.source
    } else {
        &r.ends.destination
    };
    match column {
        "community_id" => return r.community_id.clone(),
        "observation_point" => {
            return flowlens_schema::record::observation_point_name(r.key.observation_point).into();
        }
        "interface_name" => return r.interface_name.to_string(),
        "host" => return r.host.to_string(),
        _ => {}
    }
    let f = column.split_once('_').unwrap().1;
    let t = |v: &Option<std::sync::Arc<str>>| v.as_deref().unwrap_or("").to_string();
    match f {
        "cgroup" => t(&e.cgroup),
        "container_id" => t(&e.container_id),
        "k8s_pod_uid" => t(&e.k8s_pod_uid),
        "process_name" => t(&e.process_name),
        "process_pid" => e.process_pid.unwrap_or(0).to_string(),
        "label" => t(&e.label),
        "k8s_namespace" => t(&e.k8s_namespace),
        "k8s_pod_name" => t(&e.k8s_pod_name),
        "k8s_owner_kind" => t(&e.k8s_owner_kind),
        "k8s_owner_name" => t(&e.k8s_owner_name),
        "k8s_node_name" => t(&e.k8s_node_name),
        "k8s_service_name" => t(&e.k8s_service_name),
        "zone" => t(&e.zone),
        _ => unreachable!("{column}"),
    }
}

#[test]
fn enterprise_identity_and_kubernetes_elements_decode_in_tshark() {
    let recs = flowlens_testkit::records::conversations(40);
    let mut enc = Encoder::new(EncoderConfig {
        domain_id: 7,
        max_message: 1400,
        enterprise: Some(DEFAULT_ENTERPRISE_NUMBER),
    });
    enc.templates(1_700_000_000);
    enc.records(&recs, 1_700_000_001);
    let msgs = enc.take();
    let dir = flowlens_testkit::temp_dir("k8sout-ipfix-tshark").unwrap();
    let path = dir.join("ipfix.pcap");
    pcap(&path, &msgs);
    let o = Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-d",
            &format!("udp.port=={PORT},cflow"),
            "-T",
            "pdml",
        ])
        .output()
        .expect("tshark (run `cargo xtask setup`)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!text.contains("Malformed"), "tshark: malformed");
    // Every enterprise element tshark shows, in capture order: (element id, value bytes in hex).
    // tshark leaves out zero-length strings (null identity), so expect only non-empty ones.
    let mut got: Vec<(u16, String)> = Vec::new();
    for line in text.lines() {
        if !line.contains("name=\"cflow.enterprise_private_entry\"") {
            continue;
        }
        let attr = |a: &str| {
            let at = line.find(&format!(" {a}=\"")).unwrap() + a.len() + 3;
            line[at..at + line[at..].find('"').unwrap()].to_string()
        };
        let show = attr("showname");
        let ty = show.split("Type ").nth(1).unwrap();
        let ty: u16 = ty[..ty.find(':').unwrap()].parse().unwrap();
        got.push((ty, attr("value")));
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut want_all: Vec<(u16, String)> = Vec::new();
    for r in &recs {
        for f in ENTERPRISE_FIELDS {
            let v = want(r, f.column);
            let bytes = if f.column.ends_with("_pid") {
                v.parse::<u32>().unwrap().to_be_bytes().to_vec()
            } else {
                v.into_bytes()
            };
            if !bytes.is_empty() {
                want_all.push((f.id, hex(&bytes)));
            }
        }
    }
    assert_eq!(
        got.len(),
        want_all.len(),
        "enterprise elements decoded by tshark"
    );
    assert_eq!(got, want_all);
    // The Kubernetes elements (30-36, 40-46) are all there with values.
    for id in (30..=36).chain(40..=46) {
        assert!(
            got.iter().any(|(t, _)| *t == id),
            "element {id} never decoded"
        );
    }
}
