//! The terminal rendering of a [`Report`]: aligned plain-text tables.

use super::{Report, compute::Ranking};

/// `1.23 G` style (powers of 1000) with a unit suffix.
pub fn si(v: f64, unit: &str) -> String {
    let a = v.abs();
    let (d, p) = if a >= 1e12 {
        (1e12, "T")
    } else if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    if p.is_empty() {
        format!("{:.0} {unit}", v)
    } else {
        format!("{:.2} {p}{unit}", v / d)
    }
}

/// Percentage with one decimal, or three below 1% (so small shares do not all read 0.0%).
pub fn pct(f: f64) -> String {
    if f != 0.0 && f.abs() < 0.01 {
        format!("{:.3}%", f * 100.0)
    } else {
        format!("{:.1}%", f * 100.0)
    }
}

/// Human duration of seconds (`6h`, `2d 3h`, `90s`).
pub fn dur(secs: f64) -> String {
    let s = secs.round() as i64;
    if s % 86_400 == 0 && s >= 86_400 {
        format!("{}d", s / 86_400)
    } else if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    } else if s % 3600 == 0 && s >= 3600 {
        format!("{}h", s / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s % 60 == 0 && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Aligned table: first `left` columns left-aligned, the rest right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < left {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect();
        format!("  {}\n", s.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn ranking(out: &mut String, title: &str, r: &Ranking) {
    out.push_str(&format!("\n{title} ({} distinct), by bytes\n", r.distinct));
    let rows: Vec<Vec<String>> = r
        .by_bytes
        .iter()
        .map(|e| {
            vec![
                e.key.clone(),
                si(e.bytes as f64, "B"),
                pct(e.bytes_share),
                si(e.packets as f64, "pkt"),
                pct(e.packets_share),
            ]
        })
        .collect();
    out.push_str(&table(
        &["key", "bytes", "share", "packets", "share"],
        &rows,
        1,
    ));
    // The packet ranking only when it differs from the byte ranking.
    let same = r
        .by_bytes
        .iter()
        .map(|e| &e.key)
        .eq(r.by_packets.iter().map(|e| &e.key));
    if !same {
        out.push_str(&format!("{title}, by packets\n"));
        let rows: Vec<Vec<String>> = r
            .by_packets
            .iter()
            .map(|e| {
                vec![
                    e.key.clone(),
                    si(e.packets as f64, "pkt"),
                    pct(e.packets_share),
                    si(e.bytes as f64, "B"),
                    pct(e.bytes_share),
                ]
            })
            .collect();
        out.push_str(&table(
            &["key", "packets", "share", "bytes", "share"],
            &rows,
            1,
        ));
    }
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "flowlens report: {} .. {} ({}), observation point {}\n",
        r.range.from,
        r.range.to,
        dur(r.range.seconds),
        r.observation_point
    ));
    out.push_str(&format!(
        "input {}: {} files, {} rows read; pruned {} partitions by name, {} row groups by statistics\n",
        r.input, r.scan.files, r.scan.rows_read, r.scan.partitions_pruned, r.scan.row_groups_pruned
    ));
    for o in r.observation_points.iter().filter(|o| !o.selected) {
        out.push_str(&format!(
            "not counted (other observation point, would double count): {} {} records, {}\n",
            o.name,
            o.records,
            si(o.bytes as f64, "B")
        ));
    }
    out.push_str(&format!(
        "total: {}, {}, {} records\n",
        si(r.totals.bytes as f64, "B"),
        si(r.totals.packets as f64, "packets"),
        r.totals.records
    ));
    if r.hosts.len() > 1 {
        let rows: Vec<Vec<String>> = r
            .hosts
            .iter()
            .map(|h| {
                vec![
                    h.host.clone().unwrap_or_else(|| "(no host column)".into()),
                    si(h.bytes as f64, "B"),
                    si(h.packets as f64, "packets"),
                    h.records.to_string(),
                ]
            })
            .collect();
        out.push_str("\nPer host (exporter)\n");
        out.push_str(&table(&["host", "bytes", "packets", "records"], &rows, 1));
    }

    out.push_str(&format!(
        "\nThroughput per interface and direction ({} buckets of {}; bits/s; statistics over the {} whole buckets in the range, percentiles by nearest rank)\n",
        r.series.buckets,
        dur(r.series.bucket_seconds as f64),
        r.series.stats_buckets
    ));
    let rows: Vec<Vec<String>> = r
        .series
        .interfaces
        .iter()
        .map(|s| {
            let st = &s.bytes_per_sec_stats;
            vec![
                s.interface.clone(),
                s.direction.clone(),
                si(s.bytes as f64, "B"),
                si(st.mean * 8.0, "bit/s"),
                si(st.p95 * 8.0, "bit/s"),
                si(st.p99 * 8.0, "bit/s"),
                si(st.peak * 8.0, "bit/s"),
                si(s.packets_per_sec_stats.p95, "pkt/s"),
                si(s.trend.bytes_per_sec_slope_per_day * 8.0, "bit/s/d"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "interface",
            "dir",
            "bytes",
            "mean",
            "p95",
            "p99",
            "peak",
            "p95 pkt/s",
            "trend",
        ],
        &rows,
        2,
    ));

    if let Some(p) = &r.growth.previous {
        out.push_str(&format!(
            "\nGrowth vs previous period {} .. {}: bytes {} -> {} ({}), packets {}\n",
            p.from,
            p.to,
            si(p.totals.bytes as f64, "B"),
            si(r.totals.bytes as f64, "B"),
            p.bytes_change
                .map_or("n/a".into(), |c| format!("{:+.1}%", c * 100.0)),
            p.packets_change
                .map_or("n/a".into(), |c| format!("{:+.1}%", c * 100.0)),
        ));
        let rows: Vec<Vec<String>> = p
            .interfaces
            .iter()
            .map(|s| {
                vec![
                    s.interface.clone(),
                    s.direction.clone(),
                    si(s.p95_bytes_per_sec * 8.0, "bit/s"),
                    s.p95_change
                        .map_or("n/a".into(), |c| format!("{:+.1}%", c * 100.0)),
                ]
            })
            .collect();
        out.push_str(&table(
            &["interface", "dir", "previous p95", "change"],
            &rows,
            2,
        ));
    } else {
        out.push_str("\nGrowth: no previous period (give --from, and data before it); see the trend column\n");
    }

    if !r.capacity.is_empty() {
        out.push_str("\nCapacity (utilisation of each direction at p95; naive linear projection of the trend)\n");
        let mut rows = Vec::new();
        for c in &r.capacity {
            if c.directions.is_empty() {
                rows.push(vec![
                    c.interface.clone(),
                    "-".into(),
                    si(c.capacity_bits_per_sec, "bit/s"),
                    "-".into(),
                    "-".into(),
                    "no traffic in range".into(),
                ]);
            }
            for d in &c.directions {
                rows.push(vec![
                    c.interface.clone(),
                    d.direction.clone(),
                    si(c.capacity_bits_per_sec, "bit/s"),
                    pct(d.utilisation_p95),
                    pct(d.utilisation_peak),
                    match (
                        d.status.as_str(),
                        &d.reaches_threshold_at,
                        d.days_to_threshold,
                    ) {
                        ("above_threshold", _, _) => {
                            format!("already above {}", pct(c.threshold))
                        }
                        ("growing", Some(at), Some(days)) => {
                            format!("{} in {:.0} days ({at})", pct(c.threshold), days)
                        }
                        ("growing", None, Some(days)) => {
                            format!("{} in {:.0} days", pct(c.threshold), days)
                        }
                        _ => "not growing".into(),
                    },
                ]);
            }
        }
        out.push_str(&table(
            &[
                "interface",
                "dir",
                "capacity",
                "p95 util",
                "peak util",
                "reaches threshold",
            ],
            &rows,
            2,
        ));
    }

    let t = &r.top;
    ranking(&mut out, "Top sources", &t.sources);
    ranking(&mut out, "Top destinations", &t.destinations);
    ranking(&mut out, "Top source subnets", &t.source_subnets);
    ranking(&mut out, "Top destination subnets", &t.destination_subnets);
    ranking(&mut out, "Top conversations", &t.conversations);
    ranking(
        &mut out,
        "Top services (transport/destination port)",
        &t.services,
    );
    ranking(&mut out, "Transports", &t.transports);
    if let Some(g) = &r.groups {
        groups(&mut out, g);
    }
    out
}

/// The `--group-by` section: rankings by group, then the top groups' throughput.
fn groups(out: &mut String, g: &crate::compute::Groups) {
    let by = g.by.as_str();
    ranking(out, &format!("Top sources by {by}"), &g.sources);
    ranking(out, &format!("Top destinations by {by}"), &g.destinations);
    ranking(out, &format!("Top conversations by {by}"), &g.conversations);
    out.push_str(&format!(
        "\nThroughput per {by} (top {} by bytes sent + received; bits/s, same buckets and statistics as above)\n",
        g.series.iter().map(|s| &s.interface).collect::<std::collections::BTreeSet<_>>().len()
    ));
    let rows: Vec<Vec<String>> = g
        .series
        .iter()
        .map(|s| {
            let st = &s.bytes_per_sec_stats;
            vec![
                s.interface.clone(),
                s.direction.clone(),
                si(s.bytes as f64, "B"),
                si(st.mean * 8.0, "bit/s"),
                si(st.p95 * 8.0, "bit/s"),
                si(st.peak * 8.0, "bit/s"),
                si(s.trend.bytes_per_sec_slope_per_day * 8.0, "bit/s/d"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[by, "dir", "bytes", "mean", "p95", "peak", "trend"],
        &rows,
        2,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn units() {
        assert_eq!(si(1_234_567.0, "B"), "1.23 MB");
        assert_eq!(si(999.0, "B"), "999 B");
        assert_eq!(dur(21_600.0), "6h");
        assert_eq!(dur(90.0), "90s");
        assert_eq!(dur(300.0), "5m");
        assert_eq!(dur(93_600.0), "1d 2h");
    }
}
