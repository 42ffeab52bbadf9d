//! Ended flows → [`FlowRecord`]s: wall-clock times, interface names, Community ID.

use std::sync::Arc;

use flowlens_schema::{
    community_id::community_id_v1,
    record::{FlowRecord, key_addr},
};

use crate::{flow_table::Ended, ifaces::NameCache, timebase::Timebase};

pub struct Exporter {
    pub host: Arc<str>,
    pub names: NameCache,
}

impl Exporter {
    pub fn new(host: impl Into<Arc<str>>) -> Self {
        Exporter {
            host: host.into(),
            names: NameCache::default(),
        }
    }

    pub fn record(&mut self, e: &Ended, tb: &Timebase) -> FlowRecord {
        let k = &e.key;
        let community_id = community_id_v1(
            0,
            key_addr(k.ip_version, &k.src_addr),
            key_addr(k.ip_version, &k.dst_addr),
            k.protocol,
            k.src_port,
            k.dst_port,
            k.icmp_type,
            k.icmp_code,
        );
        FlowRecord {
            flow_start_us: tb.to_unix_us(e.state.first_seen_ns),
            flow_end_us: tb.to_unix_us(e.state.last_seen_ns),
            key: *k,
            interface_name: self.names.get(k.ifindex),
            packets: e.state.packets,
            bytes: e.state.bytes,
            tcp_flags: e.state.tcp_flags,
            dscp: e.state.dscp,
            end_reason: e.reason,
            host: self.host.clone(),
            community_id,
            ends: Default::default(),
        }
    }
}
