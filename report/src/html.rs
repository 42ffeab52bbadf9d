//! The HTML rendering of a [`Report`]: one self-contained file. Charts are inline SVG generated
//! here (readable without JavaScript); a small inline script adds hover read-outs. Nothing is
//! fetched from the network.

use std::fmt::Write as _;

use super::{
    Report,
    compute::{Ranking, SeriesOut},
    text::{dur, pct, si},
};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
:root{--bg:#f6f7fb;--card:#fff;--ink:#1f2937;--mute:#6b7280;--line:#e5e7eb;--in:#2563eb;--out:#db2777;--cap:#dc2626}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#111827;color:#f9fafb;padding:20px 32px}header h1{margin:0 0 4px;font-size:22px}header p{margin:0;color:#d1d5db}
main{padding:20px 32px;max-width:1280px;margin:0 auto}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:14px;margin-bottom:18px}
.card{background:var(--card);border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 18px}
.card .v{font-size:24px;font-weight:650}.card .l{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
section{background:var(--card);border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin-bottom:18px}
h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px;color:#374151}
.legend span{display:inline-block;margin-right:16px;font-size:12px;color:var(--mute)}.legend i{display:inline-block;width:18px;height:4px;border-radius:2px;margin-right:6px;vertical-align:middle}
svg.ts{width:100%;height:auto;display:block}svg text{font-size:11px;fill:#6b7280}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px}
.bar{display:grid;grid-template-columns:minmax(140px,38%) 1fr 130px;gap:8px;align-items:center;margin:3px 0;font-size:13px}
.bar .k{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-family:ui-monospace,Menlo,monospace;font-size:12px}
.bar .t{background:#eef2ff;border-radius:4px;height:16px;overflow:hidden}.bar .f{height:100%;background:linear-gradient(90deg,#6366f1,#3b82f6);border-radius:4px}
.bar .n{text-align:right;color:#374151;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right}th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}th{color:var(--mute);font-weight:600;font-size:12px}
.warn{color:#b45309}.bad{color:#b91c1c;font-weight:600}.ok{color:#047857}
#tip{position:fixed;pointer-events:none;background:#111827;color:#f9fafb;padding:6px 9px;border-radius:6px;font-size:12px;display:none;white-space:pre;z-index:9}
footer{color:var(--mute);font-size:12px;padding:0 32px 24px;max-width:1280px;margin:0 auto}
"#;

/// Client-side hover read-outs. The charts are complete without it.
const JS: &str = r#"
(function(){
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var tip = document.createElement('div'); tip.id = 'tip'; document.body.appendChild(tip);
  function fmt(v){var u=['','k','M','G','T'],i=0;while(Math.abs(v)>=1000&&i<4){v/=1000;i++}return (i?v.toFixed(2):v.toFixed(0))+' '+u[i];}
  document.querySelectorAll('svg.ts').forEach(function(svg){
    var s = data.charts[+svg.dataset.chart]; if(!s) return;
    var guide = svg.querySelector('.guide');
    svg.addEventListener('mousemove', function(ev){
      var r = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
      var x = (ev.clientX - r.left) * vb.width / r.width;
      var i = Math.floor((x - s.x0) / s.dx); if(i<0||i>=s.n){tip.style.display='none';guide.setAttribute('visibility','hidden');return;}
      var t = new Date(s.start_ms + i*s.bucket_ms).toISOString().replace('.000Z','Z');
      var lines = [t];
      s.lines.forEach(function(l){lines.push(l.name+': '+fmt(l.bits[i])+'bit/s, '+fmt(l.pkts[i])+'pkt/s');});
      tip.textContent = lines.join('\n'); tip.style.display='block';
      tip.style.left=(ev.clientX+14)+'px'; tip.style.top=(ev.clientY+14)+'px';
      var gx = s.x0 + (i+0.5)*s.dx; guide.setAttribute('x1',gx); guide.setAttribute('x2',gx); guide.setAttribute('visibility','visible');
    });
    svg.addEventListener('mouseleave', function(){tip.style.display='none';guide.setAttribute('visibility','hidden');});
  });
  document.documentElement.setAttribute('data-ready','1');
})();
"#;

/// Axis label: up to 3 significant digits, no trailing zeros (`150 kbit/s`, `2.5 Mbit/s`).
fn tick(v: f64) -> String {
    let full = si(v, "bit/s");
    match full.split_once(' ') {
        Some((num, unit)) if num.contains('.') => {
            format!("{} {unit}", num.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => full,
    }
}

fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn color(dir: &str, i: usize) -> &'static str {
    match dir {
        "ingress" => "#2563eb",
        "egress" => "#db2777",
        _ => ["#059669", "#d97706", "#7c3aed", "#0891b2"][i % 4],
    }
}

fn time_label(us: i64, long: bool) -> String {
    let t = super::fmt_time(us - us.rem_euclid(60_000_000));
    // 2026-11-26T07:05:00Z
    if long {
        format!("{} {}", &t[5..10], &t[11..16])
    } else {
        t[11..16].to_string()
    }
}

/// One interface's chart (all its directions), bits per second.
fn chart(
    r: &Report,
    idx: usize,
    ifname: &str,
    series: &[&SeriesOut],
    js: &mut Vec<String>,
) -> String {
    let (w, h) = (1200.0, 300.0);
    let (x0, x1, y0, y1) = (84.0, w - 20.0, 16.0, h - 34.0);
    let n = r.series.buckets.max(1);
    let dx = (x1 - x0) / n as f64;
    let peak = series
        .iter()
        .map(|s| s.bytes_per_sec_stats.peak * 8.0)
        .fold(0.0, f64::max);
    let cap = r
        .capacity
        .iter()
        .find(|c| c.interface == ifname)
        .map(|c| (c.capacity_bits_per_sec, c.threshold));
    let mut ymax = peak;
    if let Some((c, t)) = cap
        && c * t <= peak * 4.0
    {
        ymax = ymax.max(c * t).max(if c <= peak * 1.5 { c } else { 0.0 });
    }
    let step = nice_step(ymax.max(1.0), 4.0);
    let ytop = (ymax / step).ceil().max(1.0) * step;
    let y = |v: f64| y1 - (v / ytop) * (y1 - y0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="ts" data-chart="{idx}" viewBox="0 0 {w} {h}" role="img" aria-label="throughput of {}">"#,
        esc(ifname)
    );
    // Edge buckets outside the range's whole buckets hold partial traffic: shade them.
    let (sf, sn) = (r.series.stats_first, r.series.stats_buckets);
    for i in (0..n).filter(|i| *i < sf || *i >= sf + sn) {
        let _ = write!(
            s,
            r##"<rect class="partial" x="{:.1}" y="{y0}" width="{:.1}" height="{:.1}" fill="#e5e7eb" fill-opacity="0.6"><title>partial bucket (edge of the range)</title></rect>"##,
            x0 + i as f64 * dx,
            dx,
            y1 - y0
        );
    }
    // Grid and y labels.
    let mut v = 0.0;
    while v <= ytop + step * 0.01 {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{x0}" x2="{x1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e7eb"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            yy + 4.0,
            esc(&tick(v))
        );
        v += step;
    }
    // x labels: about 6.
    let long = r.range.seconds > 86_400.0;
    let every = (n / 6).max(1);
    for i in (0..n).step_by(every) {
        let xx = x0 + i as f64 * dx;
        let us = r.series.start_us + i as i64 * r.series.bucket_seconds as i64 * 1_000_000;
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{y1}" y2="{}" stroke="#9ca3af"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y1 + 4.0,
            y1 + 18.0,
            time_label(us, long)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}" stroke="#9ca3af"/>"##
    );
    // Capacity and threshold (a note when they are far above the traffic).
    if let Some((c, t)) = cap
        && c * t > ytop
    {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" style="fill:#dc2626">capacity {} · threshold {} (above the scale)</text>"##,
            x1 - 4.0,
            y0 + 12.0,
            esc(&tick(c)),
            esc(&tick(c * t))
        );
    }
    if let Some((c, t)) = cap {
        for (val, label, dash) in [(c, "capacity", "8 4"), (c * t, "threshold", "3 3")] {
            if val <= ytop {
                let yy = y(val);
                let _ = write!(
                    s,
                    r##"<line x1="{x0}" x2="{x1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#dc2626" stroke-dasharray="{dash}"/><text x="{}" y="{:.1}" text-anchor="end" style="fill:#dc2626">{label} {}</text>"##,
                    x1 - 4.0,
                    yy - 4.0,
                    esc(&tick(val))
                );
            }
        }
    }
    let mut lines_js = Vec::new();
    for (i, sr) in series.iter().enumerate() {
        let col = color(&sr.direction, i);
        let pts: Vec<String> = sr
            .bytes_per_sec
            .iter()
            .enumerate()
            .map(|(k, b)| format!("{:.1},{:.1}", x0 + (k as f64 + 0.5) * dx, y(b * 8.0)))
            .collect();
        if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
            let fx = first.split(',').next().unwrap_or("0");
            let lx = last.split(',').next().unwrap_or("0");
            let _ = write!(
                s,
                r#"<polygon points="{fx},{y1} {} {lx},{y1}" fill="{col}" fill-opacity="0.10"/>"#,
                pts.join(" ")
            );
            let _ = write!(
                s,
                r#"<polyline class="series" points="{}" fill="none" stroke="{col}" stroke-width="2" stroke-linejoin="round"/>"#,
                pts.join(" ")
            );
        }
        let p95 = sr.bytes_per_sec_stats.p95 * 8.0;
        let yy = y(p95);
        let _ = write!(
            s,
            r#"<line x1="{x0}" x2="{x1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{col}" stroke-dasharray="6 4" stroke-opacity="0.8"/><text x="{}" y="{:.1}" style="fill:{col}">p95 {} {}</text>"#,
            x0 + 6.0,
            yy - 4.0,
            esc(&sr.direction),
            esc(&si(p95, "bit/s"))
        );
        let bits: Vec<String> = sr
            .bytes_per_sec
            .iter()
            .map(|b| format!("{:.3}", b * 8.0))
            .collect();
        let pk: Vec<String> = sr
            .packets_per_sec
            .iter()
            .map(|p| format!("{p:.3}"))
            .collect();
        lines_js.push(format!(
            r#"{{"name":{},"bits":[{}],"pkts":[{}]}}"#,
            json_str(&sr.direction),
            bits.join(","),
            pk.join(",")
        ));
    }
    let _ = write!(
        s,
        r##"<line class="guide" x1="0" x2="0" y1="{y0}" y2="{y1}" stroke="#111827" stroke-opacity="0.35" visibility="hidden"/></svg>"##
    );
    js.push(format!(
        r#"{{"x0":{x0},"dx":{dx},"n":{n},"start_ms":{},"bucket_ms":{},"lines":[{}]}}"#,
        r.series.start_us / 1000,
        r.series.bucket_seconds * 1000,
        lines_js.join(",")
    ));
    s
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn bars(title: &str, r: &Ranking) -> String {
    let mut s = format!(
        "<div><h3>{} <span style=\"color:#9ca3af;font-weight:400\">({} distinct)</span></h3>",
        esc(title),
        r.distinct
    );
    let max = r.by_bytes.first().map_or(1, |e| e.bytes.max(1)) as f64;
    for e in &r.by_bytes {
        let _ = write!(
            s,
            r#"<div class="bar" title="{}: {} packets ({}), {} records"><span class="k">{}</span><span class="t"><span class="f" style="width:{:.1}%;display:block"></span></span><span class="n">{} · {}</span></div>"#,
            esc(&e.key),
            e.packets,
            pct(e.packets_share),
            e.records,
            esc(&e.key),
            (e.bytes as f64 / max * 100.0).max(0.5),
            esc(&si(e.bytes as f64, "B")),
            pct(e.bytes_share)
        );
    }
    s.push_str("</div>");
    s
}

pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>flowlens report {} .. {}</title><style>{CSS}</style></head><body>",
        esc(&r.range.from),
        esc(&r.range.to)
    );
    let _ = write!(
        h,
        "<header><h1>flowlens capacity report</h1><p>{} .. {} ({}) · observation point <b>{}</b> · {} · bucket {}</p></header><main>",
        esc(&r.range.from),
        esc(&r.range.to),
        dur(r.range.seconds),
        esc(&r.observation_point),
        esc(&r.input),
        dur(r.series.bucket_seconds as f64)
    );
    let peak = r
        .series
        .interfaces
        .iter()
        .map(|s| s.bytes_per_sec_stats.peak * 8.0)
        .fold(0.0, f64::max);
    h.push_str("<div class=\"cards\">");
    for (v, l) in [
        (si(r.totals.bytes as f64, "B"), "bytes"),
        (si(r.totals.packets as f64, ""), "packets"),
        (r.totals.records.to_string(), "flow records"),
        (si(peak, "bit/s"), "highest bucket rate"),
        (
            r.series.interfaces.len().to_string(),
            "interface · direction series",
        ),
    ] {
        let _ = write!(
            h,
            "<div class=\"card\"><div class=\"v\">{}</div><div class=\"l\">{}</div></div>",
            esc(&v),
            l
        );
    }
    h.push_str("</div>");
    let others: Vec<String> = r
        .observation_points
        .iter()
        .filter(|o| !o.selected)
        .map(|o| {
            format!(
                "{} ({} records, {})",
                o.name,
                o.records,
                si(o.bytes as f64, "B")
            )
        })
        .collect();
    if !others.is_empty() {
        let _ = write!(
            h,
            "<p class=\"warn\">Not counted, to avoid double counting packets seen at several points: {}</p>",
            esc(&others.join(", "))
        );
    }

    // Time series, one chart per interface.
    h.push_str("<section><h2>Throughput over time</h2><div class=\"legend\"><span><i style=\"background:#2563eb\"></i>ingress</span><span><i style=\"background:#db2777\"></i>egress</span><span>dashed: p95 of the bucket rates (nearest rank)</span><span><i style=\"background:#e5e7eb;height:10px\"></i>edge bucket, partial traffic</span><span style=\"color:#dc2626\">red: capacity / threshold</span></div>");
    let mut ifaces: Vec<&str> = r
        .series
        .interfaces
        .iter()
        .map(|s| s.interface.as_str())
        .collect();
    ifaces.dedup();
    let mut js_charts = Vec::new();
    for (i, ifn) in ifaces.iter().enumerate() {
        let ss: Vec<&SeriesOut> = r
            .series
            .interfaces
            .iter()
            .filter(|s| s.interface == *ifn)
            .collect();
        let _ = write!(h, "<h3>{}</h3>", esc(ifn));
        h.push_str(&chart(r, i, ifn, &ss, &mut js_charts));
    }
    h.push_str("<h3>Bucket rates</h3><table><tr><th>interface</th><th>direction</th><th>bytes</th><th>mean</th><th>p95</th><th>p99</th><th>peak</th><th>p95 packets/s</th><th>trend per day</th></tr>");
    for s in &r.series.interfaces {
        let st = &s.bytes_per_sec_stats;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.interface),
            esc(&s.direction),
            si(s.bytes as f64, "B"),
            si(st.mean * 8.0, "bit/s"),
            si(st.p95 * 8.0, "bit/s"),
            si(st.p99 * 8.0, "bit/s"),
            si(st.peak * 8.0, "bit/s"),
            si(s.packets_per_sec_stats.p95, "pkt/s"),
            si(s.trend.bytes_per_sec_slope_per_day * 8.0, "bit/s")
        );
    }
    h.push_str("</table></section>");

    // Capacity and growth.
    if !r.capacity.is_empty() {
        h.push_str("<section><h2>Capacity</h2><table><tr><th>interface</th><th>direction</th><th>capacity</th><th>p95</th><th>p95 utilisation</th><th>peak utilisation</th><th>projection</th></tr>");
        for c in &r.capacity {
            if c.directions.is_empty() {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>-</td><td>{}</td><td>-</td><td>-</td><td>-</td><td class=\"warn\">no traffic in range</td></tr>",
                    esc(&c.interface),
                    si(c.capacity_bits_per_sec, "bit/s")
                );
            }
            for d in &c.directions {
                let (cls, proj) = match (
                    d.status.as_str(),
                    &d.reaches_threshold_at,
                    d.days_to_threshold,
                ) {
                    ("above_threshold", _, _) => {
                        ("bad", format!("already above {}", pct(c.threshold)))
                    }
                    ("growing", at, Some(days)) => (
                        if days < 90.0 { "warn" } else { "ok" },
                        format!(
                            "{} in {:.0} days{}",
                            pct(c.threshold),
                            days,
                            at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default()
                        ),
                    ),
                    _ => ("ok", "not growing".into()),
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{}</td></tr>",
                    esc(&c.interface),
                    esc(&d.direction),
                    si(c.capacity_bits_per_sec, "bit/s"),
                    si(d.p95_bits_per_sec, "bit/s"),
                    pct(d.utilisation_p95),
                    pct(d.utilisation_peak),
                    esc(&proj)
                );
            }
        }
        h.push_str("</table></section>");
    }
    h.push_str("<section><h2>Growth</h2>");
    match &r.growth.previous {
        Some(p) => {
            let chg = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{:+.1}%", c * 100.0));
            let _ = write!(
                h,
                "<p>Compared with {} .. {}: bytes {} → {} (<b>{}</b>), packets {}.</p><table><tr><th>interface</th><th>direction</th><th>previous p95</th><th>change of p95</th></tr>",
                esc(&p.from),
                esc(&p.to),
                si(p.totals.bytes as f64, "B"),
                si(r.totals.bytes as f64, "B"),
                chg(p.bytes_change),
                chg(p.packets_change)
            );
            for s in &p.interfaces {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s.interface),
                    esc(&s.direction),
                    si(s.p95_bytes_per_sec * 8.0, "bit/s"),
                    chg(s.p95_change)
                );
            }
            h.push_str("</table>");
        }
        None => h.push_str("<p>No previous period with data (give <code>--from</code> and keep data from before it). The trend column above is the least-squares slope over this range.</p>"),
    }
    h.push_str("</section>");

    // Top talkers.
    let _ = write!(
        h,
        "<section><h2>Top talkers (by bytes, top {})</h2><div class=\"grid\">",
        r.top.n
    );
    let t = &r.top;
    for (title, rk) in [
        ("Sources", &t.sources),
        ("Destinations", &t.destinations),
        ("Source subnets", &t.source_subnets),
        ("Destination subnets", &t.destination_subnets),
        ("Conversations", &t.conversations),
        ("Services (transport/destination port)", &t.services),
        ("Transports", &t.transports),
    ] {
        h.push_str(&bars(title, rk));
    }
    h.push_str("</div></section>");
    if let Some(g) = &r.groups {
        let by = g.by.as_str();
        let _ = write!(
            h,
            "<section><h2>By {} (top {})</h2><div class=\"grid\">",
            esc(by),
            r.top.n
        );
        for (title, rk) in [
            ("Sources", &g.sources),
            ("Destinations", &g.destinations),
            ("Conversations", &g.conversations),
        ] {
            h.push_str(&bars(&format!("{title} by {by}"), rk));
        }
        h.push_str("</div><table><tr><th>");
        h.push_str(&esc(by));
        h.push_str("</th><th>dir</th><th>bytes</th><th>mean bit/s</th><th>p95 bit/s</th><th>peak bit/s</th></tr>");
        for s in &g.series {
            let st = &s.bytes_per_sec_stats;
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.interface),
                esc(&s.direction),
                esc(&si(s.bytes as f64, "B")),
                esc(&si(st.mean * 8.0, "bit/s")),
                esc(&si(st.p95 * 8.0, "bit/s")),
                esc(&si(st.peak * 8.0, "bit/s"))
            );
        }
        h.push_str("</table></section>");
    }
    h.push_str("</main>");
    let _ = write!(
        h,
        "<footer>Generated by flowlens {} · {} files, {} rows read · partitions pruned: {} · row groups pruned: {}</footer>",
        env!("CARGO_PKG_VERSION"),
        r.scan.files,
        r.scan.rows_read,
        r.scan.partitions_pruned,
        r.scan.row_groups_pruned
    );
    let data = format!(r#"{{"charts":[{}]}}"#, js_charts.join(",")).replace("</", "<\\/");
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"report-data\">{data}</script><script>{JS}</script></body></html>"
    );
    h
}
