//! The report in each output format: an aligned text table, JSON, CSV and a
//! self-contained HTML page (inline CSS and SVG bar charts; no script, no
//! external resource).

use std::fmt::Write as _;

use super::stats::Report;

fn share(n: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", n as f64 * 100.0 / total as f64)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Columns separated by two spaces; `right[i]` right-aligns column `i`.
fn table(out: &mut String, head: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width[i].saturating_sub(c.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The first lines of every format: what was read.
fn summary_line(r: &Report) -> String {
    format!(
        "{} in {}, {} not understood",
        plural(r.requests, "request", "requests"),
        plural(r.lines, "line", "lines"),
        plural(r.not_understood, "line", "lines"),
    )
}

/// `--format table`.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", summary_line(r));
    if !r.presets.is_empty() {
        let f: Vec<String> = r.presets.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let _ = writeln!(out, "formats: {}", f.join(", "));
    }
    let _ = writeln!(
        out,
        "distinct clients: {}, distinct hosts: {} ({} without a host)",
        r.distinct_clients,
        r.distinct_hosts,
        plural(r.requests_without_host, "request", "requests")
    );

    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .tls
        .iter()
        .map(|t| {
            vec![
                t.version.clone(),
                t.requests.to_string(),
                share(t.requests, r.requests),
                t.clients.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["TLS version", "requests", "share", "clients"],
        &[false, true, true, true],
        &rows,
    );

    if !r.ciphers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .ciphers
            .iter()
            .map(|c| {
                vec![
                    c.version.clone(),
                    c.cipher.clone(),
                    c.requests.to_string(),
                    share(c.requests, r.requests),
                ]
            })
            .collect();
        table(
            &mut out,
            &["TLS version", "cipher", "requests", "share"],
            &[false, false, true, true],
            &rows,
        );
    }

    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .status
        .iter()
        .map(|(c, n)| vec![c.to_string(), n.to_string(), share(*n, r.requests)])
        .collect();
    table(&mut out, &["status", "requests", "share"], &[false, true, true], &rows);

    for (what, total, list) in [
        ("host", r.distinct_hosts, &r.top_hosts),
        ("client", r.distinct_clients, &r.top_clients),
    ] {
        out.push('\n');
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|(k, n)| vec![k.clone(), n.to_string(), share(*n, r.requests)])
            .collect();
        let head = format!("{what} (top {} of {total})", list.len());
        table(&mut out, &[&head, "requests", "share"], &[false, true, true], &rows);
    }

    out.push('\n');
    let d = &r.durations;
    table(
        &mut out,
        &["response time (ms)", "requests", "p50", "p90", "p99", "max"],
        &[false, true, true, true, true, true],
        &[vec![
            "all".into(),
            d.count.to_string(),
            opt(d.p50),
            opt(d.p90),
            opt(d.p99),
            opt(d.max),
        ]],
    );
    out
}

/// `--format json`: one object (see the README for its keys).
pub fn render_json(r: &Report) -> String {
    use serde_json::{Map, Value, json};
    let formats: Map<String, Value> = r.presets.iter().map(|(p, n)| (p.to_string(), json!(n))).collect();
    let status: Map<String, Value> = r.status.iter().map(|(c, n)| (c.to_string(), json!(n))).collect();
    let v = json!({
        "inputs": r.inputs,
        "lines": r.lines,
        "requests": r.requests,
        "not_understood": r.not_understood,
        "formats": formats,
        "distinct_clients": r.distinct_clients,
        "distinct_hosts": r.distinct_hosts,
        "requests_without_host": r.requests_without_host,
        "tls": r.tls.iter().map(|t| json!({"version": t.version, "requests": t.requests, "clients": t.clients})).collect::<Vec<_>>(),
        "ciphers": r.ciphers.iter().map(|c| json!({"version": c.version, "cipher": c.cipher, "requests": c.requests})).collect::<Vec<_>>(),
        "status": status,
        "top": r.top,
        "top_hosts": r.top_hosts.iter().map(|(h, n)| json!({"host": h, "requests": n})).collect::<Vec<_>>(),
        "top_clients": r.top_clients.iter().map(|(c, n)| json!({"client": c, "requests": n})).collect::<Vec<_>>(),
        "duration_ms": {
            "count": r.durations.count,
            "p50": r.durations.p50,
            "p90": r.durations.p90,
            "p99": r.durations.p99,
            "max": r.durations.max,
        },
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// One CSV field (RFC 4180 quoting when needed).
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// `--format csv`: `section,key,detail,value,clients`, one row per figure.
pub fn render_csv(r: &Report) -> String {
    let mut out = String::from("section,key,detail,value,clients\n");
    let mut row = |section: &str, key: &str, detail: &str, value: String, clients: String| {
        for (i, f) in [section, key, detail, &value, &clients].into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, f);
        }
        out.push('\n');
    };
    let none = String::new;
    for (k, v) in [
        ("lines", r.lines),
        ("requests", r.requests),
        ("not_understood", r.not_understood),
        ("distinct_clients", r.distinct_clients),
        ("distinct_hosts", r.distinct_hosts),
        ("requests_without_host", r.requests_without_host),
    ] {
        row("summary", k, "", v.to_string(), none());
    }
    for (p, n) in &r.presets {
        row("format", p, "", n.to_string(), none());
    }
    for t in &r.tls {
        row("tls", &t.version, "", t.requests.to_string(), t.clients.to_string());
    }
    for c in &r.ciphers {
        row("cipher", &c.version, &c.cipher, c.requests.to_string(), none());
    }
    for (c, n) in &r.status {
        row("status", c, "", n.to_string(), none());
    }
    for (h, n) in &r.top_hosts {
        row("host", h, "", n.to_string(), none());
    }
    for (c, n) in &r.top_clients {
        row("client", c, "", n.to_string(), none());
    }
    let d = &r.durations;
    let cell = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    row("duration_ms", "count", "", d.count.to_string(), none());
    for (k, v) in [("p50", d.p50), ("p90", d.p90), ("p99", d.p99), ("max", d.max)] {
        row("duration_ms", k, "", cell(v), none());
    }
    out
}

/// Text made safe for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A horizontal bar chart as inline SVG: one bar per row, scaled to the largest.
fn bars(rows: &[(String, u64)], label: &str) -> String {
    const W: u64 = 760;
    const LABEL: u64 = 260;
    const BAR: u64 = 400;
    const ROW: u64 = 24;
    if rows.is_empty() {
        return String::from("<p class=\"none\">nothing to show</p>\n");
    }
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let h = ROW * rows.len() as u64 + 4;
    let mut s = format!(
        "<svg class=\"bars\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{}\">\n",
        esc(label)
    );
    for (i, (k, n)) in rows.iter().enumerate() {
        let y = ROW * i as u64 + 2;
        let w = if *n == 0 { 0 } else { (BAR * n / max).max(1) };
        let _ = writeln!(
            s,
            "<g><title>{}: {n}</title><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL}\" y=\"{}\" width=\"{w}\" height=\"{}\" rx=\"2\"></rect>\
             <text x=\"{}\" y=\"{}\">{n}</text></g>",
            esc(k),
            LABEL - 8,
            y + 16,
            esc(&clip(k, 34)),
            y + 3,
            ROW - 6,
            LABEL + w + 6,
            y + 16,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An HTML table; `right[i]` right-aligns column `i`.
fn html_table(head: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let cls = |i: usize| {
        if right.get(i).copied().unwrap_or(false) {
            " class=\"n\""
        } else {
            ""
        }
    };
    let mut s = String::from("<table>\n<tr>");
    for (i, h) in head.iter().enumerate() {
        let _ = write!(s, "<th{}>{}</th>", cls(i), esc(h));
    }
    s.push_str("</tr>\n");
    for r in rows {
        s.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let _ = write!(s, "<td{}>{}</td>", cls(i), esc(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;padding:0 1em;color:#1d2430;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #d5dae1;padding-bottom:.2em}
.sub{color:#5b6573;margin-top:0}table{border-collapse:collapse;margin:.6em 0}
th,td{padding:.2em .8em;border-bottom:1px solid #e6e9ee;text-align:left}th{background:#f3f5f8}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
svg.bars{display:block;margin:.6em 0;font:12px system-ui,sans-serif}svg.bars rect{fill:#3b73b9}
svg.bars text{fill:#1d2430}.none{color:#5b6573}.warn{color:#a33}";

/// `--html`: the whole report as one page.
pub fn render_html(r: &Report) -> String {
    let mut s = String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str("<title>sekisho logstats</title>\n<style>\n");
    s.push_str(CSS);
    s.push_str("\n</style>\n</head>\n<body>\n<h1>sekisho logstats</h1>\n");
    let inputs: Vec<String> = r.inputs.iter().map(|i| esc(i)).collect();
    let _ = writeln!(s, "<p class=\"sub\">{}</p>", inputs.join(", "));
    let _ = writeln!(s, "<p>{}</p>", esc(&summary_line(r)));
    if r.not_understood > 0 {
        let _ = writeln!(
            s,
            "<p class=\"warn\">{} could not be read as a sekisho access-log line.</p>",
            plural(r.not_understood, "line", "lines")
        );
    }
    let mut summary = vec![
        vec!["requests".to_string(), r.requests.to_string()],
        vec!["distinct clients".into(), r.distinct_clients.to_string()],
        vec!["distinct hosts".into(), r.distinct_hosts.to_string()],
        vec!["requests without a host".into(), r.requests_without_host.to_string()],
    ];
    for (p, n) in &r.presets {
        summary.push(vec![format!("format {p}"), n.to_string()]);
    }
    s.push_str(&html_table(&["", "count"], &[false, true], &summary));

    s.push_str("<h2>TLS versions</h2>\n<h3>Requests</h3>\n");
    let rows: Vec<(String, u64)> = r.tls.iter().map(|t| (t.version.clone(), t.requests)).collect();
    s.push_str(&bars(&rows, "requests by TLS version"));
    s.push_str("<h3>Distinct clients</h3>\n");
    let rows: Vec<(String, u64)> = r.tls.iter().map(|t| (t.version.clone(), t.clients)).collect();
    s.push_str(&bars(&rows, "distinct clients by TLS version"));
    let rows: Vec<Vec<String>> = r
        .tls
        .iter()
        .map(|t| {
            vec![
                t.version.clone(),
                t.requests.to_string(),
                share(t.requests, r.requests),
                t.clients.to_string(),
            ]
        })
        .collect();
    s.push_str(&html_table(
        &["TLS version", "requests", "share", "clients"],
        &[false, true, true, true],
        &rows,
    ));
    s.push_str(
        "<p class=\"sub\"><b>none</b>: the line's format records TLS and the client used none; \
         <b>unknown</b>: the line's format does not record TLS.</p>\n",
    );

    s.push_str("<h2>TLS versions and ciphers</h2>\n");
    let rows: Vec<(String, u64)> = r
        .ciphers
        .iter()
        .map(|c| (format!("{} {}", c.version, c.cipher), c.requests))
        .collect();
    s.push_str(&bars(&rows, "requests by TLS version and cipher"));
    let rows: Vec<Vec<String>> = r
        .ciphers
        .iter()
        .map(|c| {
            vec![
                c.version.clone(),
                c.cipher.clone(),
                c.requests.to_string(),
                share(c.requests, r.requests),
            ]
        })
        .collect();
    s.push_str(&html_table(
        &["TLS version", "cipher", "requests", "share"],
        &[false, false, true, true],
        &rows,
    ));

    s.push_str("<h2>Status classes</h2>\n");
    let rows: Vec<(String, u64)> = r.status.iter().map(|(c, n)| (c.to_string(), *n)).collect();
    s.push_str(&bars(&rows, "requests by status class"));

    for (title, total, list) in [
        ("Top hosts", r.distinct_hosts, &r.top_hosts),
        ("Top clients", r.distinct_clients, &r.top_clients),
    ] {
        let _ = writeln!(s, "<h2>{title} ({} of {total})</h2>", list.len());
        s.push_str(&bars(list, title));
    }

    s.push_str("<h2>Response time (ms)</h2>\n");
    let d = &r.durations;
    let rows: Vec<(String, u64)> = [("p50", d.p50), ("p90", d.p90), ("p99", d.p99), ("max", d.max)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    s.push_str(&bars(&rows, "response time percentiles in milliseconds"));
    let _ = writeln!(
        s,
        "<p class=\"sub\">{} with a time; percentiles are exact below 1024 ms and within 1 % above.</p>",
        plural(d.count, "request", "requests")
    );
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::logstats::stats::{CipherRow, Durations, TlsRow};

    fn report() -> Report {
        Report {
            inputs: vec!["a.log".into(), "<b>.gz".into()],
            lines: 12,
            requests: 10,
            not_understood: 2,
            presets: vec![("httplog-tls", 7), ("json", 3)],
            distinct_clients: 3,
            distinct_hosts: 2,
            requests_without_host: 1,
            tls: vec![
                TlsRow {
                    version: "TLSv1.0".into(),
                    requests: 6,
                    clients: 2,
                },
                TlsRow {
                    version: "none".into(),
                    requests: 4,
                    clients: 1,
                },
            ],
            ciphers: vec![CipherRow {
                version: "TLSv1.0".into(),
                cipher: "AES,\"odd\"".into(),
                requests: 6,
            }],
            status: vec![
                ("1xx", 0),
                ("2xx", 8),
                ("3xx", 0),
                ("4xx", 1),
                ("5xx", 1),
                ("other", 0),
                ("none", 0),
            ],
            top: 10,
            top_hosts: vec![("<script>x</script>".into(), 6), ("b.example".into(), 3)],
            top_clients: vec![("10.0.0.1".into(), 5)],
            durations: Durations {
                count: 10,
                p50: Some(12),
                p90: Some(80),
                p99: Some(99),
                max: Some(5000),
            },
        }
    }

    #[test]
    fn table_is_aligned() {
        let t = render_table(&report());
        assert!(
            t.starts_with("10 requests in 12 lines, 2 lines not understood\n"),
            "{t}"
        );
        assert!(t.contains("formats: httplog-tls 7, json 3\n"), "{t}");
        assert!(t.contains("TLS version  requests  share  clients\nTLSv1.0             6  60.0%        2\nnone                4  40.0%        1\n"), "{t}");
        assert!(t.contains("2xx            8  80.0%\n"), "{t}");
        assert!(t.contains("host (top 2 of 2)   requests  share\n"), "{t}");
        assert!(t.contains("all                       10   12   80   99  5000\n"), "{t}");
        assert!(t.lines().all(|l| l == l.trim_end()), "{t}");
    }

    #[test]
    fn json_keys() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&report())).unwrap();
        assert_eq!(
            v["tls"][0],
            serde_json::json!({"version": "TLSv1.0", "requests": 6, "clients": 2})
        );
        assert_eq!(v["status"]["2xx"], 8);
        assert_eq!(v["formats"]["json"], 3);
        assert_eq!(v["duration_ms"]["max"], 5000);
        assert_eq!(
            v["top_hosts"][1],
            serde_json::json!({"host": "b.example", "requests": 3})
        );
        assert_eq!(v["not_understood"], 2);
    }

    #[test]
    fn csv_quotes() {
        let c = render_csv(&report());
        assert!(
            c.starts_with("section,key,detail,value,clients\nsummary,lines,,12,\n"),
            "{c}"
        );
        assert!(c.contains("\ncipher,TLSv1.0,\"AES,\"\"odd\"\"\",6,\n"), "{c}");
        assert!(c.contains("\ntls,TLSv1.0,,6,2\n"), "{c}");
        assert!(c.ends_with("duration_ms,max,,5000,\n"), "{c}");
        assert!(c.lines().all(|l| l.split(',').count() >= 5), "{c}");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = render_html(&report());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("<svg"));
        assert!(!h.contains("<script>"), "log text is escaped");
        assert!(h.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(h.contains("&lt;b&gt;.gz"));
        for bad in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!h.contains(bad), "{bad}");
        }
        let mut empty = report();
        empty.tls.clear();
        empty.durations = Durations {
            count: 0,
            p50: None,
            p90: None,
            p99: None,
            max: None,
        };
        assert!(render_html(&empty).contains("nothing to show"));
        assert!(render_table(&empty).contains("all                        0    -    -    -    -"));
    }
}
