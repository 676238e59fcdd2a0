//! The access log: the seed's Squid line, every code of both styles, JSON,
//! and each output.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;

fn with_log(log: &str) -> String {
    basic_config("").replace("[[access_log]]\noutput = \"stdout\"\nformat = \"squid\"\n", log)
}

#[test]
fn squid_preset_is_the_seed_line() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let (code, _) = curl_status(&p.proxy(), &origin.url("/echo?q=1"), &["-d", "abc"]);
    assert_eq!(code, 200);
    let line = p.log_lines(1).remove(0);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 12, "{line}");
    // %{%Y/%m/%d %H:%M:%S}tl
    assert_eq!(f[0].len(), 10);
    assert_eq!(&f[0][4..5], "/");
    assert_eq!(f[1].len(), 8);
    // %ts.%03tu close to now
    let (secs, ms) = f[2].split_once('.').unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now - secs.parse::<u64>().unwrap() < 30, "{line}");
    assert_eq!(ms.len(), 3);
    // %6tr: right-aligned duration in ms
    assert!(line.contains(&format!(" {:>6} ", f[3])), "{line}");
    assert_eq!(f[4], "127.0.0.1");
    assert_eq!(f[5], "TCP_MISS/200");
    assert!(f[6].parse::<u64>().unwrap() > 100, "bytes sent: {line}");
    assert_eq!(f[7], "POST");
    assert_eq!(f[8], origin.url("/echo?q=1"));
    assert_eq!(f[9], "-", "no user");
    assert_eq!(f[10], "HIER_DIRECT/127.0.0.1");
    assert_eq!(f[11], "text/plain", "%mt: {line}");
}

#[test]
fn every_squid_code() {
    let origin = Origin::start();
    let fmt = "%>a|%>p|%la|%lp|%<a|%<p|%ts|%03tu|%{%Y}tl|%{%Y}tg|%tr|%Ss|%Sh|%>Hs|%<st|%>st|%st|%rm|%ru|%rp|%rv|%un|%mt|%ft|%%";
    let p = start(&with_log(&format!("[[access_log]]\nformat = \"{fmt}\"\n")));
    let (code, _) = curl_status(&p.proxy(), &origin.url("/echo?a=b"), &["-d", "0123456789"]);
    assert_eq!(code, 200);
    let line = p.log_lines(1).remove(0);
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 25, "{line}");
    let year = chrono_year();
    let expect: [(usize, &str); 17] = [
        (0, "127.0.0.1"),
        (2, "127.0.0.1"),
        (3, &p.port.to_string()),
        (4, "127.0.0.1"),
        (5, &origin.port.to_string()),
        (8, &year),
        (9, &year),
        (11, "TCP_MISS"),
        (12, "HIER_DIRECT"),
        (13, "200"),
        (17, "POST"),
        (18, &origin.url("/echo?a=b")),
        (19, "/echo?a=b"),
        (20, "1.1"),
        (21, "-"),
        (22, "text/plain"),
        (23, "fwd"),
    ];
    for (i, want) in expect {
        assert_eq!(f[i], want, "field {i} of {line}");
    }
    assert_eq!(f[24], "%");
    assert!(f[1].parse::<u16>().unwrap() > 0, "client port: {line}");
    assert_eq!(f[7].len(), 3, "%03tu: {line}");
    let sent: u64 = f[14].parse().unwrap();
    let received: u64 = f[15].parse().unwrap();
    assert!(received >= 10 + 50, "request head and 10-byte body: {line}");
    assert_eq!(f[16].parse::<u64>().unwrap(), sent + received);
}

fn chrono_year() -> String {
    let o = std::process::Command::new("date").arg("+%Y").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn every_haproxy_code() {
    let origin = Origin::start();
    let fmt =
        "%ci|%cp|%fi|%fp|%t|%tr|%ft|%b|%s|%si|%sp|%TR|%Tw|%Tc|%Tr|%Ta|%Tt|%ST|%B|%U|%HM|%HU|%HV|%ts|%tsc|%{+Q}r|%u";
    let p = start(&with_log(&format!(
        "[[access_log]]\nstyle = \"haproxy\"\nformat = \"{fmt}\"\n"
    )));
    let (code, _) = curl_status(&p.proxy(), &origin.url("/slow?ms=200"), &[]);
    assert_eq!(code, 200);
    let line = p.log_lines(1).remove(0);
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 27, "{line}");
    assert_eq!(f[0], "127.0.0.1");
    assert!(f[1].parse::<u16>().is_ok());
    assert_eq!((f[2], f[3]), ("127.0.0.1", p.port.to_string().as_str()));
    // %t and %tr: 21/Nov/2026:17:25:27.123
    for d in [f[4], f[5]] {
        assert_eq!(d.len(), 24, "{d}");
        assert_eq!(&d[2..3], "/");
        assert_eq!(&d[20..21], ".");
    }
    assert_eq!(f[6], "fwd");
    assert_eq!(f[8], format!("127.0.0.1:{}", origin.port));
    assert_eq!((f[9], f[10]), ("127.0.0.1", origin.port.to_string().as_str()));
    let tr: i64 = f[14].parse().unwrap();
    let ta: i64 = f[15].parse().unwrap();
    assert!(tr >= 190, "%Tr covers the origin's 200 ms: {line}");
    assert!(ta >= tr, "{line}");
    assert!(f[16].parse::<i64>().unwrap() >= ta, "{line}");
    assert!(
        f[11].parse::<i64>().unwrap() >= 0 && f[12] == "0" && f[13].parse::<i64>().unwrap() >= 0,
        "{line}"
    );
    assert_eq!(f[17], "200");
    assert!(f[18].parse::<u64>().unwrap() > 9, "{line}");
    assert!(f[19].parse::<u64>().unwrap() > 20, "{line}");
    assert_eq!(f[20], "GET");
    assert_eq!(f[21], origin.url("/slow?ms=200"));
    assert_eq!(f[22], "HTTP/1.1");
    assert_eq!(f[23], "--");
    assert_eq!(f[24], "----");
    assert_eq!(f[25], format!("\"GET {} HTTP/1.1\"", origin.url("/slow?ms=200")));
    assert_eq!(f[26], "-");
}

#[test]
fn httplog_preset_and_termination_state() {
    let origin = Origin::start();
    let p = start(&with_log(
        "[[access_log]]\nformat = \"httplog\"\n[timeouts]\nserver_response = \"1s\"\n",
    ));
    assert_eq!(curl_status(&p.proxy(), &origin.url("/hang"), &[]).0, 504);
    let line = p.log_lines(1).remove(0);
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert!(line.contains(" fwd -/127.0.0.1:"), "{line}");
    assert!(line.contains(" 504 "), "{line}");
    assert!(
        line.contains(" sH-- "),
        "server timeout while waiting for headers: {line}"
    );
    assert!(
        line.ends_with(&format!("\"GET {} HTTP/1.1\"", origin.url("/hang"))),
        "{line}"
    );
}

#[test]
fn json_preset() {
    let origin = Origin::start();
    let p = start(&with_log("[[access_log]]\nformat = \"json\"\n"));
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo"), &[]).0, 200);
    let line = p.log_lines(1).remove(0);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], origin.url("/echo"));
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["result"], "TCP_MISS");
    assert_eq!(v["upstream"], format!("127.0.0.1:{}", origin.port));
    assert_eq!(v["user"], serde_json::Value::Null);
    assert!(v["bytes_sent"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].is_u64());
}

#[test]
fn file_and_stderr_outputs() {
    let origin = Origin::start();
    let p = start(&with_log(
        "[[access_log]]\noutput = \"{DIR}/access.log\"\nformat = \"common\"\n[[access_log]]\noutput = \"stderr\"\nformat = \"squid\"\n",
    ));
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo"), &[]).0, 200);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut file = String::new();
    while file.is_empty() && std::time::Instant::now() < end {
        file = std::fs::read_to_string(p.dir.path("access.log")).unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(file.starts_with("127.0.0.1 - - ["), "{file}");
    assert!(
        file.contains(&format!("\"GET {} HTTP/1.1\" 200", origin.url("/echo"))),
        "{file}"
    );
    assert!(p.stderr().contains("TCP_MISS/200"), "{}", p.stderr());
    assert!(p.stdout().is_empty());
}

#[test]
fn bad_requests_are_logged_too() {
    let p = start(&basic_config(""));
    let resp = raw(p.port, b"THIS IS NOT HTTP\r\n\r\n", std::time::Duration::from_secs(3));
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let line = p.log_lines(1).remove(0);
    assert!(line.contains("NONE/400"), "{line}");
    assert!(line.contains("error:invalid-request"), "{line}");
}

#[test]
fn client_abort_is_logged_with_its_phase() {
    let origin = Origin::start();
    let p = start(&with_log("[[access_log]]\nformat = \"httplog\"\n"));
    let o = curl(&["-s", "-x", &p.proxy(), "--max-time", "1", &origin.url("/hang")]);
    assert!(!o.status.success(), "curl gave up");
    let line = p.log_lines(1).remove(0);
    assert!(
        line.contains(" CH-- "),
        "client aborted while waiting for the response headers: {line}"
    );
    assert!(line.contains(" -1 "), "no status was sent: {line}");
}
