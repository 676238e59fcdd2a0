//! `sekisho logstats` on generated logs whose answers are known: 165 clients
//! on TLS 1.0, others on TLS 1.2/1.3 with several ciphers, plain clients, a
//! known status mix, hosts and times; written as httplog-tls and as JSON
//! lines, plain, gzip and bzip2, read from files and from standard input.
//! Then the lines the daemon itself writes for TLS clients.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// One generated request.
struct Req {
    client: String,
    tls: Option<(&'static str, &'static str)>,
    /// `None`: no status was sent.
    status: Option<u16>,
    method: &'static str,
    target: String,
    /// The Host header (captured by `%hr`; the SNI in JSON).
    host: &'static str,
    ms: u64,
}

/// 1500 requests: TLSv1.0 165 clients x 2, TLSv1.2 200 x 3, TLSv1.3 100
/// (IPv6) x 5, plain 10 x 7.
fn dataset() -> Vec<Req> {
    let mut who: Vec<(String, Option<(&str, &str)>)> = Vec::new();
    for i in 0..165 {
        for _ in 0..2 {
            who.push((format!("10.10.0.{}", i + 1), Some(("TLSv1.0", "ECDHE-RSA-AES256-SHA"))));
        }
    }
    for i in 0..200 {
        for j in 0..3 {
            let c = if j < 2 {
                "ECDHE-RSA-AES128-GCM-SHA256"
            } else {
                "ECDHE-ECDSA-CHACHA20-POLY1305"
            };
            who.push((format!("10.12.{}.{}", i / 100, i % 100 + 1), Some(("TLSv1.2", c))));
        }
    }
    for i in 0..100 {
        for j in 0..5 {
            let c = if j < 3 {
                "TLS_AES_128_GCM_SHA256"
            } else {
                "TLS_AES_256_GCM_SHA384"
            };
            who.push((format!("2001:db8::{:x}", i + 1), Some(("TLSv1.3", c))));
        }
    }
    for i in 0..10 {
        for _ in 0..7 {
            who.push((format!("192.0.2.{}", i + 1), None));
        }
    }
    who.into_iter()
        .enumerate()
        .map(|(n, (client, tls))| {
            let status = match n % 100 {
                0..80 => Some(200),
                80..85 => Some(301),
                85..95 => Some(404),
                95..98 => Some(503),
                98 => Some(101),
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let (method, target, host) = match n % 10 {
                0..5 => ("GET", format!("{scheme}://www.example.com/p?n={n}"), "www.example.com"),
                5..8 => ("POST", format!("{scheme}://API.example.com/v1"), "api.example.com"),
                // origin form: the host is in the Host header (and the SNI) only
                8 if tls.is_some() => ("GET", "/img/1.png".to_string(), "img.example.net"),
                8 => ("GET", "http://img.example.net/img/1.png".to_string(), "img.example.net"),
                _ => ("CONNECT", "tunnel.example.org:443".to_string(), "tunnel.example.org"),
            };
            let ms = if n == 699 { 5000 } else { n as u64 % 100 + 1 };
            Req {
                client,
                tls,
                status,
                method,
                target,
                host,
                ms,
            }
        })
        .collect()
}

fn httplog_tls_line(n: usize, r: &Req) -> String {
    let (v, c) = r.tls.unwrap_or(("-", "-"));
    let hr = if r.target.starts_with('/') {
        format!("{{{}:443|https://www.example.com/}}", r.host)
    } else {
        "-".to_string()
    };
    format!(
        "{}:{} [21/Nov/2026:17:25:27.{:03}] front web/s{} 0/0/1/{}/{} {} {} JSESSIONID=a b - ---- 3/3/2/1/0 0/0 {hr} {{text/html; q=1}} SSL:{{{v},{c}}} \"{} {} HTTP/1.1\"",
        r.client,
        40000 + n,
        n % 1000,
        n % 4,
        r.ms.saturating_sub(2),
        r.ms,
        r.status.map_or(-1, i32::from),
        100 + n,
        r.method,
        r.target,
    )
}

/// The seed's HAProxy `log-format` line for the same request, through syslog.
fn haproxy_line(n: usize, r: &Req) -> String {
    let line = httplog_tls_line(n, r)
        .replace(" {text/html; q=1}", "")
        .replace(" 0/0 - SSL:", " 0/0 SSL:");
    format!("Nov 21 17:25:27 lb1 haproxy[4242]: {line}")
}

fn json_line(n: usize, r: &Req) -> String {
    let (v, c) = r.tls.map_or((Value::Null, Value::Null), |(v, c)| (json!(v), json!(c)));
    json!({
        "time": "2026-11-21T17:25:27.123+00:00",
        "epoch": 1_795_281_927.123,
        "duration_ms": r.ms,
        "client_ip": r.client,
        "client_port": 40000 + n,
        "local_ip": "10.0.0.1",
        "local_port": 443,
        "listener": "front",
        "method": r.method,
        "uri": r.target,
        "version": "HTTP/1.1",
        "status": r.status.unwrap_or(0),
        "result": "TCP_MISS",
        "hierarchy": "HIER_DIRECT",
        "bytes_sent": 100 + n,
        "bytes_received": 80,
        "user": null,
        "upstream": "10.0.1.1:80",
        "backend": "web",
        "server": "s0",
        "retries": 0,
        "tls_version": v,
        "tls_cipher": c,
        "sni": if r.tls.is_some() { json!(r.host) } else { Value::Null },
        "alpn": null,
        "source": null,
        "parent": null,
        "content_type": "text/html",
        "termination": "--",
        "timers": {"TR": 0, "Tw": 0, "Tc": 1, "Tr": r.ms.saturating_sub(2)}
    })
    .to_string()
}

/// Lines that are not a sekisho log line, inserted after these line counts.
fn garbage(at: usize, line: &str) -> Option<Vec<u8>> {
    match at {
        100 => Some(b"this is not a log line".to_vec()),
        1000 => Some(b"\xff\xfe\x00 binary \x1b[31m garbage".to_vec()),
        // a line cut in the middle
        1499 => Some(line.as_bytes()[..line.len() / 2].to_vec()),
        _ => None,
    }
}

/// The log text: every request, three garbage lines and a blank line.
/// Returns the text and the line numbers of the garbage.
fn log_text(render: impl Fn(usize, &Req) -> String) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut lineno = 0;
    for (n, r) in dataset().iter().enumerate() {
        let line = render(n, r);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        lineno += 1;
        if let Some(g) = garbage(n + 1, &line) {
            out.extend_from_slice(&g);
            out.push(b'\n');
            lineno += 1;
            bad.push(lineno);
        }
        if n == 700 {
            out.extend_from_slice(b"  \r\n");
            lineno += 1;
        }
    }
    (out, bad)
}

fn logstats(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .arg("logstats")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sekisho logstats");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The report without what depends on the input's name and format.
fn answers(mut v: Value) -> Value {
    let m = v.as_object_mut().unwrap();
    m.remove("inputs");
    m.remove("formats");
    v
}

/// The answers the generated data must give with `--top 3`.
fn expected() -> Value {
    let mut times: Vec<u64> = dataset().iter().map(|r| r.ms).collect();
    times.sort_unstable();
    let rank = |q: f64| times[((q * times.len() as f64).ceil() as usize) - 1];
    assert_eq!((rank(0.5), rank(0.9), rank(0.99)), (50, 90, 99));
    json!({
        "lines": 1503,
        "requests": 1500,
        "not_understood": 3,
        "distinct_clients": 475,
        "distinct_hosts": 4,
        "requests_without_host": 0,
        "tls": [
            {"version": "TLSv1.0", "requests": 330, "clients": 165},
            {"version": "TLSv1.2", "requests": 600, "clients": 200},
            {"version": "TLSv1.3", "requests": 500, "clients": 100},
            {"version": "none", "requests": 70, "clients": 10},
        ],
        "ciphers": [
            {"version": "TLSv1.0", "cipher": "ECDHE-RSA-AES256-SHA", "requests": 330},
            {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256", "requests": 400},
            {"version": "TLSv1.2", "cipher": "ECDHE-ECDSA-CHACHA20-POLY1305", "requests": 200},
            {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "requests": 300},
            {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "requests": 200},
        ],
        "status": {"1xx": 15, "2xx": 1200, "3xx": 75, "4xx": 150, "5xx": 45, "other": 0, "none": 15},
        "top": 3,
        "top_hosts": [
            {"host": "www.example.com", "requests": 750},
            {"host": "api.example.com", "requests": 450},
            // a tie with tunnel.example.org: by name
            {"host": "img.example.net", "requests": 150},
        ],
        "top_clients": [
            {"client": "192.0.2.1", "requests": 7},
            {"client": "192.0.2.2", "requests": 7},
            {"client": "192.0.2.3", "requests": 7},
        ],
        "duration_ms": {"count": 1500, "p50": 50, "p90": 90, "p99": 99, "max": 5000},
    })
}

fn write(dir: &TempDir, name: &str, data: &[u8]) -> String {
    let p = dir.path(name);
    std::fs::write(&p, data).unwrap();
    p.display().to_string()
}

/// `gzip -c` or `bzip2 -c` of `file`, written to `out`.
fn compress(tool: &str, file: &str, out: &str) {
    require_tool(tool);
    let o = Command::new(tool).args(["-c", file]).output().unwrap();
    assert!(o.status.success());
    std::fs::write(out, o.stdout).unwrap();
}

#[test]
fn logstats_httplog_tls_known_answers() {
    let dir = TempDir::new();
    let (text, bad) = log_text(httplog_tls_line);
    let file = write(&dir, "access.log", &text);
    let o = logstats(&["--format", "json", "--top", "3", &file], None);
    let v = json_of(&o);
    assert_eq!(answers(v.clone()), expected());
    assert_eq!(v["formats"], json!({"httplog-tls": 1500}));
    assert_eq!(v["inputs"], json!([file]));
    // the places of the lines not understood, on stderr only
    let err = String::from_utf8_lossy(&o.stderr);
    let places: Vec<String> = bad.iter().map(|n| format!("{file}:{n}")).collect();
    assert_eq!(bad, [101, 1003, 1503]);
    assert!(
        err.contains(&format!("3 lines not understood, first at {}", places.join(", "))),
        "{err}"
    );
}

#[test]
fn logstats_json_lines_and_mixed_formats() {
    let dir = TempDir::new();
    let (text, _) = log_text(json_line);
    let file = write(&dir, "access.json", &text);
    let v = json_of(&logstats(&["--format", "json", "--top", "3", &file], None));
    assert_eq!(answers(v.clone()), expected());
    assert_eq!(v["formats"], json!({"json": 1500}));

    // one file with both formats, line by line, and HAProxy's form of the
    // httplog-tls line as syslog stores it (empty capture blocks left out)
    let (mixed, _) = log_text(|n, r| match n % 3 {
        0 => json_line(n, r),
        1 => httplog_tls_line(n, r),
        _ => haproxy_line(n, r),
    });
    let file = write(&dir, "mixed.log", &mixed);
    let v = json_of(&logstats(&["--format", "json", "--top", "3", &file], None));
    assert_eq!(answers(v.clone()), expected());
    assert_eq!(v["formats"], json!({"json": 500, "httplog-tls": 1000}));

    // a forced format reads the other format's lines as not understood
    let v = json_of(&logstats(&["--format", "json", "--log-format", "json", &file], None));
    assert_eq!(
        (v["requests"].as_u64(), v["not_understood"].as_u64()),
        (Some(500), Some(1003))
    );
}

#[test]
fn logstats_reads_gzip_bzip2_and_stdin() {
    let dir = TempDir::new();
    let (text, _) = log_text(httplog_tls_line);
    let plain = write(&dir, "access.log", &text);
    let gz = dir.path("access.log.gz").display().to_string();
    let bz = dir.path("access.log.bz2").display().to_string();
    // compressed, under a name that does not say so
    let hidden = dir.path("access.log.1").display().to_string();
    compress("gzip", &plain, &gz);
    compress("bzip2", &plain, &bz);
    compress("bzip2", &plain, &hidden);
    let args = ["--format", "json", "--top", "3"];
    for f in [&plain, &gz, &bz, &hidden] {
        let v = json_of(&logstats(&[&args[..], &[f.as_str()][..]].concat(), None));
        assert_eq!(answers(v), expected(), "{f}");
    }
    // standard input: no file, `-`, and compressed
    let v = json_of(&logstats(&args, Some(&text)));
    assert_eq!(answers(v.clone()), expected());
    assert_eq!(v["inputs"], json!(["-"]));
    let v = json_of(&logstats(
        &[&args[..], &["-"][..]].concat(),
        Some(&std::fs::read(&gz).unwrap()),
    ));
    assert_eq!(answers(v), expected());
    // several inputs add up
    let v = json_of(&logstats(&["--format", "json", &gz, "-", &bz], Some(&text)));
    assert_eq!(v["requests"], 4500);
    assert_eq!(
        v["tls"][0],
        json!({"version": "TLSv1.0", "requests": 990, "clients": 165})
    );
    assert_eq!(v["not_understood"], 9);
    assert_eq!(v["inputs"], json!([gz, "-", bz]));
}

#[test]
fn logstats_table_csv_and_html() {
    let dir = TempDir::new();
    let (text, _) = log_text(httplog_tls_line);
    let file = write(&dir, "access.log", &text);

    let o = logstats(&[&file], None);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    let has = |want: &[&str]| rows.iter().any(|r| r == want);
    assert!(
        table.starts_with("1500 requests in 1503 lines, 3 lines not understood\n"),
        "{table}"
    );
    assert!(has(&["TLS", "version", "requests", "share", "clients"]), "{table}");
    assert!(has(&["TLSv1.0", "330", "22.0%", "165"]), "{table}");
    assert!(has(&["TLSv1.3", "TLS_AES_128_GCM_SHA256", "300", "20.0%"]), "{table}");
    assert!(has(&["2xx", "1200", "80.0%"]), "{table}");
    assert!(has(&["www.example.com", "750", "50.0%"]), "{table}");
    assert!(has(&["all", "1500", "50", "90", "99", "5000"]), "{table}");
    assert!(table.contains("host (top 4 of 4)"), "{table}");
    assert!(table.contains("client (top 10 of 475)"), "{table}");

    let o = logstats(&["--format", "csv", "--top", "2", &file], None);
    assert!(o.status.success());
    let csv = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "section,key,detail,value,clients");
    assert!(lines.iter().all(|l| l.split(',').count() == 5), "{csv}");
    for want in [
        "summary,requests,,1500,",
        "summary,not_understood,,3,",
        "format,httplog-tls,,1500,",
        "tls,TLSv1.0,,330,165",
        "tls,none,,70,10",
        "cipher,TLSv1.2,ECDHE-ECDSA-CHACHA20-POLY1305,200,",
        "status,none,,15,",
        "host,www.example.com,,750,",
        "client,192.0.2.2,,7,",
        "duration_ms,p99,,99,",
        "duration_ms,max,,5000,",
    ] {
        assert!(lines.contains(&want), "{want}: {csv}");
    }
    let sections: Vec<&str> = lines[1..].iter().map(|l| l.split(',').next().unwrap()).collect();
    let mut order = sections.clone();
    order.dedup();
    assert_eq!(
        order,
        [
            "summary",
            "format",
            "tls",
            "cipher",
            "status",
            "host",
            "client",
            "duration_ms"
        ]
    );
    assert_eq!(sections.iter().filter(|s| **s == "host").count(), 2, "--top 2");

    // --html FILE: the page, and the usual report on stdout
    let page_path = dir.path("report.html");
    let o = logstats(
        &["--format", "json", "--html", page_path.to_str().unwrap(), &file],
        None,
    );
    assert_eq!(json_of(&o)["requests"], 1500);
    let page = std::fs::read_to_string(&page_path).unwrap();
    self_contained(&page);
    assert!(
        page.contains("TLSv1.0") && page.contains("<title>TLSv1.0: 330</title>"),
        "{page}"
    );
    assert!(page.contains("<title>TLSv1.0: 165</title>"), "clients chart: {page}");
    // --html -: the page alone on stdout
    let o = logstats(&["--html", "-", &file], None);
    assert!(o.status.success());
    self_contained(&String::from_utf8_lossy(&o.stdout));
}

fn self_contained(page: &str) {
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.trim_end().ends_with("</html>"));
    assert!(page.contains("<svg"), "{page}");
    assert!(page.contains("<style>"));
    for external in [
        "http://", "https://", "src=", "href=", "<script", "<link", "url(", "@import",
    ] {
        assert!(!page.contains(external), "{external} in the page");
    }
}

#[test]
fn logstats_garbage_missing_files_and_progress() {
    let dir = TempDir::new();
    // nothing but garbage: counted, not fatal
    let mut junk = Vec::new();
    for i in 0..50u32 {
        junk.extend(
            (0..200u32).map(|j| match (i.wrapping_mul(31).wrapping_add(j * 7) % 256) as u8 {
                b'\n' => 0,
                b => b,
            }),
        );
        junk.push(b'\n');
    }
    let file = write(&dir, "junk.bin", &junk);
    let o = logstats(&["--format", "json", &file], None);
    let v = json_of(&o);
    assert_eq!(
        (v["requests"].as_u64(), v["not_understood"].as_u64()),
        (Some(0), Some(50))
    );
    assert_eq!(
        v["duration_ms"],
        json!({"count": 0, "p50": null, "p90": null, "p99": null, "max": null})
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("50 lines not understood"));
    // a line far too long, and an empty input
    let long = write(&dir, "long.log", &vec![b'x'; 3 << 20]);
    let v = json_of(&logstats(&["--format", "json", &long, "-"], Some(b"")));
    assert_eq!((v["lines"].as_u64(), v["not_understood"].as_u64()), (Some(1), Some(1)));
    // a damaged gzip file: what was read is reported, the exit status says it
    let (text, _) = log_text(httplog_tls_line);
    let plain = write(&dir, "access.log", &text);
    let gz = dir.path("cut.gz").display().to_string();
    compress("gzip", &plain, &gz);
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let missing = dir.path("missing.log").display().to_string();
    let o = logstats(&["--format", "json", &missing, &gz], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{missing}: ")), "{err}");
    assert!(err.contains(&format!("{gz}: ")), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");

    // --progress: on stderr, never in the report
    let o = logstats(&["--format", "json", "--progress", &plain], None);
    let v = json_of(&o);
    assert_eq!(v["requests"], 1500);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("done: 1504 lines"), "{err}");
    assert!(err.contains("MB read"), "{err}");
}

/// The daemon's own httplog-tls and JSON lines for clients on TLS 1.2 and
/// 1.3 give the same answers.
#[test]
fn logstats_reads_the_daemons_tls_lines() {
    require_tool("openssl");
    let certs = TempDir::new();
    let (cert, key) = crate::lb::cert(&certs, "a", &["a.test"]);
    let origin = Origin::start();
    let cfg = format!(
        r#"
[pool.web]
[[pool.web.server]]
name = "s0"
address = "127.0.0.1:{}"
[[listener]]
name = "front"
bind = "127.0.0.1:{{PORT}}"
mode = "https"
default_pool = "web"
capture_request_headers = [{{ name = "Host", len = 32 }}]
[listener.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]
[admin]
bind = "127.0.0.1:{{ADMIN}}"
[[access_log]]
output = "{{DIR}}/tls.log"
format = "httplog-tls"
[[access_log]]
output = "{{DIR}}/json.log"
format = "json"
"#,
        origin.port
    );
    let p = start(&cfg);
    let resolve = format!("a.test:{}:127.0.0.1", p.port);
    let url = format!("https://a.test:{}/status?code=404", p.port);
    let versions: [(&[&str], usize); 2] = [(&["--tls-max", "1.2"], 3), (&["--tlsv1.3"], 2)];
    for (version, n) in versions {
        for _ in 0..n {
            let mut args = vec!["-s", "-k", "--http1.1", "--resolve", &resolve, "-o", "/dev/null"];
            args.extend_from_slice(version);
            args.extend_from_slice(&["-w", "%{http_code}", &url]);
            let o = curl(&args);
            assert_eq!(String::from_utf8_lossy(&o.stdout), "404");
        }
    }
    let logs = [p.dir.path("tls.log"), p.dir.path("json.log")];
    wait_lines(&logs, 5);
    let mut reports = Vec::new();
    for log in &logs {
        let v = json_of(&logstats(&["--format", "json", log.to_str().unwrap()], None));
        assert_eq!(v["requests"], 5, "{v}");
        assert_eq!(v["not_understood"], 0, "{v}");
        let tls = v["tls"].as_array().unwrap();
        assert_eq!(tls.len(), 2, "{v}");
        assert_eq!(tls[0], json!({"version": "TLSv1.2", "requests": 3, "clients": 1}));
        assert_eq!(tls[1], json!({"version": "TLSv1.3", "requests": 2, "clients": 1}));
        let ciphers = v["ciphers"].as_array().unwrap();
        assert!(
            ciphers[0]["cipher"].as_str().unwrap().starts_with("ECDHE-ECDSA-"),
            "{v}"
        );
        assert!(
            ciphers.last().unwrap()["cipher"].as_str().unwrap().starts_with("TLS_"),
            "{v}"
        );
        assert_eq!(v["status"]["4xx"], 5);
        // the request is in origin form: the host comes from the Host capture (httplog-tls) or the SNI (JSON)
        assert_eq!(v["top_hosts"], json!([{"host": "a.test", "requests": 5}]), "{v}");
        assert_eq!(v["top_clients"], json!([{"client": "127.0.0.1", "requests": 5}]));
        assert_eq!(v["duration_ms"]["count"], 5);
        reports.push(answers(v));
    }
    // the two formats differ only in which timer they log
    for r in &mut reports {
        r.as_object_mut().unwrap().remove("duration_ms");
    }
    assert_eq!(reports[0], reports[1]);
}

fn wait_lines(files: &[impl AsRef<Path>], n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    for f in files {
        while std::fs::read_to_string(f).unwrap_or_default().lines().count() < n {
            assert!(
                Instant::now() < end,
                "{} has fewer than {n} lines",
                f.as_ref().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
