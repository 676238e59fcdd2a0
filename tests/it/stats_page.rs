//! The stats page, `/stats.json`, `/metrics` and the operator actions on the
//! admin server: figures after known traffic through an `http` listener,
//! the Prometheus exposition read by the Prometheus project's own parser,
//! drain / disable / enable / weight and their survival across a reload,
//! and the page drawn by headless Chromium (its DOM and a screenshot).

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Origin, Sekisho, TempDir, curl, require_tool, start, start_env};

const TOKEN: &str = "test-actions-token-0123456789";

/// Pool `web` over `origins` (servers `s0`, `s1`...), an `http` listener
/// `front` on {PORT}, the admin server with `admin_extra` keys.
fn config(origins: &[&Origin], pool_extra: &str, admin_extra: &str) -> String {
    let mut s = format!("[pool.web]\n{pool_extra}\n");
    for (i, o) in origins.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.web.server]]\nname = \"s{i}\"\naddress = \"127.0.0.1:{}\"\n",
            o.port
        ));
    }
    s.push_str(&format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:{{PORT}}"
mode = "http"
default_pool = "web"
[admin]
bind = "127.0.0.1:{{ADMIN}}"
{admin_extra}
[[access_log]]
output = "stdout"
style = "haproxy"
format = "%b/%s %ST"
"#
    ));
    s
}

/// GET through the balancer; the status code.
fn get(p: &Sekisho, path: &str, extra: &[&str]) -> u16 {
    let url = format!("http://127.0.0.1:{}{path}", p.port);
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let o = curl(&args);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
}

fn stats(p: &Sekisho) -> Value {
    let (code, body) = p.admin_get("/stats.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in {s}"))
}

/// POST /stats/action: (status, JSON answer).
fn action(p: &Sekisho, token: Option<&str>, body: &str, json: bool) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}/stats/action", p.admin_port);
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", body];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    if json {
        args.extend(["-H", "Content-Type: application/json"]);
    }
    args.push(&url);
    let o = curl(&args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code.parse().unwrap(), v)
}

fn counts(os: &[Origin]) -> Vec<usize> {
    os.iter().map(|o| o.requests.load(SeqCst)).collect()
}

fn delta(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[test]
fn stats_json_counts_per_server_statuses_percentiles_and_history() {
    let os = [Origin::start(), Origin::start()];
    let p = start(&config(&[&os[0], &os[1]], "", ""));
    for _ in 0..10 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    for _ in 0..4 {
        assert_eq!(get(&p, "/status?code=503", &[]), 503);
    }
    for _ in 0..2 {
        assert_eq!(get(&p, "/status?code=404", &[]), 404);
    }
    // a record is counted as the transaction ends, a moment after the response
    wait_until("16 requests counted", || stats(&p)["pools"][0]["requests"] == 16);
    let s = stats(&p);
    for key in [
        "connections",
        "active_connections",
        "transactions",
        "denied",
        "errors",
        "upstream_connects",
        "upstream_reused",
        "tunnels",
        "log_written",
        "log_dropped",
        "generation",
        "reloads",
        "reloads_failed",
        "last_reload_error",
        "open_connections",
        "maxconn",
    ] {
        assert!(s.get(key).is_some(), "key {key} kept: {s}");
    }
    let l = &s["listeners"][0];
    for key in ["name", "bind", "current", "max", "total", "refused"] {
        assert!(l.get(key).is_some(), "listener key {key}: {l}");
    }
    assert_eq!(l["requests"], 16, "{l}");
    assert_eq!(l["status"]["2xx"], 10);
    assert_eq!(l["status"]["4xx"], 2);
    assert_eq!(l["status"]["5xx"], 4);
    assert_eq!(l["errors"]["5xx"], 4);
    assert!(l["bytes_in"].as_u64().unwrap() > 16 * 20, "{l}");
    assert!(l["bytes_out"].as_u64().unwrap() > 16 * 20, "{l}");

    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "web");
    for key in ["active", "queued", "max_queued", "requests", "servers"] {
        assert!(pool.get(key).is_some(), "pool key {key}: {pool}");
    }
    let mut fives = 0;
    let mut fours = 0;
    for name in ["s0", "s1"] {
        let sv = server(&s, name);
        // round robin over two equal servers
        assert_eq!(sv["requests"], 8, "{sv}");
        assert_eq!(sv["state"], "up");
        assert_eq!(sv["admin_state"], "ready");
        assert_eq!(sv["weight"], 1);
        assert_eq!(sv["active"], 0);
        assert_eq!(sv["max"], 1, "one request at a time");
        assert!(sv["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        fives += sv["errors"]["5xx"].as_u64().unwrap();
        fours += sv["errors"]["4xx"].as_u64().unwrap();
        let (p50, p90, p99) = (
            sv["p50_ms"].as_f64().unwrap(),
            sv["p90_ms"].as_f64().unwrap(),
            sv["p99_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99, "{sv}");
        assert!(sv["bytes_out"].as_u64().unwrap() > 0);
    }
    assert_eq!((fives, fours), (4, 2));
    assert_eq!(s["access_logs"][0]["name"], "stdout");

    // the sampler adds a point every 2 s, to every object
    let len = |s: &Value| server(s, "s0")["history"]["requests"].as_array().unwrap().len();
    wait_until("a first history point", || len(&stats(&p)) >= 1);
    let first = len(&stats(&p));
    wait_until("the history to grow", || len(&stats(&p)) > first);
    let s = stats(&p);
    let h = &s["pools"][0]["history"];
    assert_eq!(h["interval_s"], 2);
    for k in ["requests", "bytes_in", "bytes_out", "errors", "sessions"] {
        assert!(!h[k].as_array().unwrap().is_empty(), "{k}: {h}");
    }
    let total: f64 = h["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(total > 0.0, "the traffic shows in the rates: {h}");
    assert!(s["listeners"][0]["history"]["requests"].is_array());

    let (_, lean) = p.admin_get("/stats.json?history=0");
    let lean: Value = serde_json::from_str(&lean).unwrap();
    assert!(lean["pools"][0].get("history").is_none());
    assert!(lean["pools"][0]["servers"][0].get("history").is_none());
    assert_eq!(lean["pools"][0]["requests"], 16);
    wait_until("16 records written", || stats(&p)["access_logs"][0]["written"] == 16);
}

/// The exposition as the Prometheus project's Python parser reads it:
/// `[{name, type, help, samples: [{name, labels, value}]}]` (NaN as null).
fn parse_exposition(text: &str, dir: &TempDir) -> Vec<Value> {
    let path = dir.path("metrics.txt");
    std::fs::write(&path, text).unwrap();
    let script = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels,
                             "value": s.value if math.isfinite(s.value) else None}
                            for s in f.samples]})
print(json.dumps(out))
"#;
    // Debian's interpreter, which sees Debian's python3-prometheus-client
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("the tests need /usr/bin/python3 with python3-prometheus-client (script/test installs it)");
    assert!(
        o.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

/// The value of the sample `name` with exactly these labels.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| {
            s["name"] == name
                && s["labels"].as_object().unwrap().len() == labels.len()
                && labels.iter().all(|(k, v)| s["labels"][*k] == *v)
        })
        .map(|s| s["value"].as_f64().unwrap_or(f64::NAN))
}

#[test]
fn metrics_parse_with_the_prometheus_parser() {
    let os = [Origin::start(), Origin::start()];
    // a second access log whose name (its path) needs escaping in a label value
    let mut cfg = config(&[&os[0], &os[1]], "", "");
    cfg.push_str("[[access_log]]\noutput = \"{DIR}/a\\\"b\\\\c.log\"\nformat = \"squid\"\n");
    let p = start(&cfg);
    let odd = format!("{}/a\"b\\c.log", p.dir.0.display());
    for _ in 0..6 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&p, "/status?code=503", &[]), 503);
    }
    wait_until("8 requests counted", || stats(&p)["pools"][0]["requests"] == 8);
    let url = format!("http://127.0.0.1:{}/metrics", p.admin_port);
    let o = curl(&["-s", "-D", "-", &url]);
    let raw = String::from_utf8_lossy(&o.stdout).to_string();
    let (head, text) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(text.contains(r#"a\"b\\c.log""#), "the label is escaped: {text}");
    let dir = TempDir::new();
    let fams = parse_exposition(text, &dir);

    // every family declared once, typed, documented; counters end in _total
    let mut names = HashSet::new();
    for f in &fams {
        let name = f["name"].as_str().unwrap();
        assert!(names.insert(name.to_string()), "family {name} declared twice");
        assert!(
            ["counter", "gauge", "summary"].contains(&f["type"].as_str().unwrap()),
            "untyped family (a sample outside its declaration?): {f}"
        );
        assert!(!f["help"].as_str().unwrap().is_empty(), "{f}");
        if f["type"] == "counter" {
            for s in f["samples"].as_array().unwrap() {
                assert!(s["name"].as_str().unwrap().ends_with("_total"), "{s}");
            }
        }
    }
    let srv = |name: &'static str| [("pool", "web"), ("server", name)];
    let s0 = srv("s0");
    assert_eq!(sample(&fams, "sekisho_server_requests_total", &s0), Some(4.0));
    assert_eq!(sample(&fams, "sekisho_server_requests_total", &srv("s1")), Some(4.0));
    let with = |base: &[(&'static str, &'static str)], k: &'static str, v: &'static str| {
        let mut l = base.to_vec();
        l.push((k, v));
        l
    };
    assert_eq!(
        sample(&fams, "sekisho_server_responses_total", &with(&s0, "class", "5xx")),
        Some(1.0)
    );
    assert_eq!(
        sample(&fams, "sekisho_server_responses_total", &with(&s0, "class", "2xx")),
        Some(3.0)
    );
    assert_eq!(sample(&fams, "sekisho_server_up", &s0), Some(1.0));
    assert_eq!(sample(&fams, "sekisho_server_weight", &s0), Some(1.0));
    assert_eq!(
        sample(&fams, "sekisho_server_admin_state", &with(&s0, "state", "ready")),
        Some(1.0)
    );
    assert_eq!(
        sample(&fams, "sekisho_server_admin_state", &with(&s0, "state", "maint")),
        Some(0.0)
    );
    assert_eq!(
        sample(&fams, "sekisho_server_errors_total", &with(&s0, "kind", "connect")),
        Some(0.0)
    );
    assert_eq!(sample(&fams, "sekisho_server_response_seconds_count", &s0), Some(4.0));
    let p50 = sample(&fams, "sekisho_server_response_seconds", &with(&s0, "quantile", "0.5")).unwrap();
    assert!(p50 > 0.0 && p50 < 5.0, "{p50}");
    assert_eq!(
        sample(&fams, "sekisho_pool_requests_total", &[("pool", "web")]),
        Some(8.0)
    );
    assert_eq!(sample(&fams, "sekisho_pool_queued", &[("pool", "web")]), Some(0.0));
    assert_eq!(
        sample(&fams, "sekisho_listener_requests_total", &[("listener", "front")]),
        Some(8.0)
    );
    assert_eq!(
        sample(
            &fams,
            "sekisho_listener_responses_total",
            &[("listener", "front"), ("class", "5xx")]
        ),
        Some(2.0)
    );
    assert!(sample(&fams, "sekisho_log_dropped_total", &[("output", "stdout")]) == Some(0.0));
    assert!(sample(&fams, "sekisho_log_written_total", &[("output", "stdout")]).is_some());
    wait_until("8 records in the second log", || {
        stats(&p)["access_logs"][1]["written"] == 8
    });
    let text = curl(&["-s", &url]).stdout;
    let fams = parse_exposition(&String::from_utf8_lossy(&text), &dir);
    assert_eq!(
        sample(&fams, "sekisho_log_written_total", &[("output", odd.as_str())]),
        Some(8.0),
        "the escaped label reads back as the path"
    );
    assert_eq!(sample(&fams, "sekisho_reloads_total", &[]), Some(0.0));
    assert!(sample(&fams, "sekisho_maxconn", &[]).unwrap() > 0.0);
    assert!(sample(&fams, "sekisho_open_connections", &[]).is_some());
}

#[test]
fn actions_are_refused_without_a_configured_token() {
    let o = Origin::start();
    let p = start(&config(&[&o], "", ""));
    let (code, v) = action(&p, Some(TOKEN), "pool=web&server=s0&action=drain", false);
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("admin.actions_token_file"),
        "a clear message: {v}"
    );
    let (code, _) = p.admin_get("/stats/action");
    assert_eq!(code, 405);
    assert_eq!(stats(&p)["actions"], false);
    assert_eq!(server(&stats(&p), "s0")["admin_state"], "ready");
}

#[test]
fn drain_disable_enable_and_weight_and_they_survive_a_reload() {
    let os = [Origin::start(), Origin::start()];
    let p = start_env(
        &config(
            &[&os[0], &os[1]],
            "[pool.web.stick]\ntype = \"learn\"\ncookie = \"JSESSIONID\"",
            "actions_token_env = \"SEKISHO_ACTIONS_TOKEN\"",
        ),
        &[("SEKISHO_ACTIONS_TOKEN", TOKEN)],
    );
    assert_eq!(stats(&p)["actions"], true);
    let drain = "pool=web&server=s0&action=drain";

    // refused: no token, a wrong one, bad bodies, unknown names
    let (code, v) = action(&p, None, drain, false);
    assert_eq!(code, 401, "{v}");
    let (code, v) = action(&p, Some("not-the-token-at-all"), drain, false);
    assert_eq!(code, 401, "{v}");
    for (body, json, want) in [
        ("pool=web&server=s0&action=explode", false, 400),
        ("pool=web&server=s0&action=weight&weight=999", false, 400),
        ("pool=web&server=s0", false, 400),
        ("{not json", true, 400),
        ("pool=web&server=nope&action=drain", false, 404),
        ("pool=nope&server=s0&action=drain", false, 404),
    ] {
        let (code, v) = action(&p, Some(TOKEN), body, json);
        assert_eq!(code, want, "{body}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
    assert_eq!(server(&stats(&p), "s0")["admin_state"], "ready", "nothing changed");

    // a client sticks to the server that set its cookie
    let before = counts(&os);
    assert_eq!(get(&p, "/setcookie?v=abc", &[]), 200);
    let d = delta(&counts(&os), &before);
    let x = d.iter().position(|&n| n == 1).unwrap();
    let (xname, other) = (format!("s{x}"), 1 - x);

    // drain: new requests avoid it, the sticky client still gets there
    let (code, v) = action(&p, Some(TOKEN), &format!("pool=web&server={xname}&action=drain"), false);
    assert_eq!(
        (code, &v["state"], &v["admin_state"]),
        (200, &Value::from("draining"), &Value::from("drain"))
    );
    let before = counts(&os);
    for _ in 0..10 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    let d = delta(&counts(&os), &before);
    assert_eq!((d[x], d[other]), (0, 10), "a draining server takes no new requests");
    let before = counts(&os);
    for _ in 0..3 {
        assert_eq!(get(&p, "/", &["-H", "Cookie: JSESSIONID=abc"]), 200);
    }
    assert_eq!(delta(&counts(&os), &before)[x], 3, "sticky requests still go");
    let sv = server(&stats(&p), &xname).clone();
    assert_eq!(
        (&sv["state"], &sv["admin_state"]),
        (&Value::from("draining"), &Value::from("drain"))
    );

    // disable: no traffic at all, not even the sticky client
    let body = format!(r#"{{"pool":"web","server":"{xname}","action":"disable"}}"#);
    let (code, v) = action(&p, Some(TOKEN), &body, true);
    assert_eq!((code, &v["state"]), (200, &Value::from("maint")), "{v}");
    let before = counts(&os);
    for _ in 0..4 {
        assert_eq!(get(&p, "/", &["-H", "Cookie: JSESSIONID=abc"]), 200);
        assert_eq!(get(&p, "/", &[]), 200);
    }
    assert_eq!(delta(&counts(&os), &before)[x], 0);
    assert_eq!(server(&stats(&p), &xname)["state"], "maint");

    // enable: back in the rotation
    let (code, _) = action(
        &p,
        Some(TOKEN),
        &format!("pool=web&server={xname}&action=enable"),
        false,
    );
    assert_eq!(code, 200);
    let before = counts(&os);
    for _ in 0..10 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    let d = delta(&counts(&os), &before);
    assert!(d[x] >= 4 && d[other] >= 4, "{d:?}");
    assert_eq!(server(&stats(&p), &xname)["state"], "up");

    // weight: s0 3, s1 1 -> three quarters of the requests on s0
    let (code, v) = action(
        &p,
        Some(TOKEN),
        r#"{"pool":"web","server":"s0","action":"weight","weight":3}"#,
        true,
    );
    assert_eq!((code, &v["weight"]), (200, &Value::from(3)), "{v}");
    let before = counts(&os);
    for _ in 0..16 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    let d = delta(&counts(&os), &before);
    assert!(
        (11..=13).contains(&d[0]) && d[0] + d[1] == 16,
        "3:1 over 16 requests: {d:?}"
    );
    let s0 = server(&stats(&p), "s0").clone();
    assert_eq!(
        (&s0["weight"], &s0["configured_weight"]),
        (&Value::from(3), &Value::from(1))
    );

    // both survive a reload of the unchanged file
    let (code, _) = action(&p, Some(TOKEN), "pool=web&server=s1&action=drain", false);
    assert_eq!(code, 200);
    p.signal(libc::SIGHUP);
    wait_until("generation 2", || stats(&p)["generation"] == 2);
    let s = stats(&p);
    assert_eq!(server(&s, "s0")["weight"], 3, "{s}");
    assert_eq!(server(&s, "s1")["state"], "draining", "{s}");
    assert_eq!(server(&s, "s1")["admin_state"], "drain");
    assert!(
        server(&s, "s0")["requests"].as_u64().unwrap() > 10,
        "figures are kept: {s}"
    );
    let before = counts(&os);
    for _ in 0..4 {
        assert_eq!(get(&p, "/", &[]), 200);
    }
    assert_eq!(delta(&counts(&os), &before), [4, 0], "s1 still drains after the reload");
    let log = p.stderr();
    assert!(
        log.contains("operator action: drain") && log.contains("client=127.0.0.1"),
        "actions are logged with who did them: {log}"
    );
}

/// Runs headless Chromium on `url` with `args`; its standard output.
fn chromium(dir: &TempDir, args: &[&str], url: &str) -> String {
    require_tool("chromium");
    let profile = dir.path("chromium-profile");
    let o = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// RGB pixels of a PNG file: (width, height, pixels row by row).
fn decode_png(path: &std::path::Path) -> (usize, usize, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).unwrap();
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let px = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width as usize, info.height as usize, px)
}

#[test]
fn the_stats_page_draws_tables_and_charts_in_chromium() {
    require_tool("chromium");
    let os = [Origin::start(), Origin::start()];
    let p = start_env(
        &config(&[&os[0], &os[1]], "", "actions_token_env = \"SEKISHO_ACTIONS_TOKEN\""),
        &[("SEKISHO_ACTIONS_TOKEN", TOKEN)],
    );
    // traffic over a few samples, so the charts have something to draw
    let nonzero = |s: &Value| {
        s["pools"][0]["history"]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.as_f64().unwrap() > 0.0)
            .count()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while nonzero(&stats(&p)) < 3 {
        assert!(Instant::now() < end, "no history: {}", stats(&p));
        for _ in 0..5 {
            assert_eq!(get(&p, "/", &[]), 200);
        }
        get(&p, "/status?code=503", &[]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, _) = action(&p, Some(TOKEN), "pool=web&server=s1&action=drain", false);
    assert_eq!(code, 200);

    // the page itself, as served
    let (code, page) = p.admin_get("/stats");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..100.min(page.len())]);
    for outside in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(outside), "no external resource ({outside})");
    }

    let dir = TempDir::new();
    let url = format!("http://127.0.0.1:{}/stats", p.admin_port);
    let dom = chromium(&dir, &["--virtual-time-budget=5000", "--dump-dom"], &url);
    assert!(dom.contains("data-listener=\"front\""), "a row per listener: {dom}");
    for s in ["s0", "s1"] {
        assert!(dom.contains(&format!("data-server=\"{s}\"")), "a row for {s}: {dom}");
    }
    assert!(dom.contains("class=\"badge s-up\""), "{dom}");
    assert!(
        dom.contains("class=\"badge s-draining\""),
        "the drained server's state: {dom}"
    );
    assert!(dom.contains("<svg class=\"spark\""), "{dom}");
    // the request-rate areas have path data (not the empty "M0 0")
    let areas: Vec<&str> = dom
        .split("fill=\"#9ecae1\"")
        .skip(1)
        .filter_map(|rest| rest.split("d=\"").nth(1)?.split('"').next())
        .collect();
    assert!(areas.len() >= 4, "an area per listener, pool and server: {areas:?}");
    assert!(
        areas.iter().filter(|d| d.starts_with('M') && d.contains(" L")).count() >= 3,
        "{areas:?}"
    );

    let shot = dir.path("stats.png");
    chromium(
        &dir,
        &[
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let (w, h, px) = decode_png(&shot);
    assert_eq!((w, h), (1280, 900));
    let at = |x: usize, y: usize| px[y * w + x];
    // the tables: below the header, many colours and much that is not white
    let mut colours = HashSet::new();
    let mut inked = 0usize;
    for y in 160..h {
        for x in 0..w {
            let c = at(x, y);
            colours.insert(c);
            if c != [255, 255, 255] {
                inked += 1;
            }
        }
    }
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(inked > w * (h - 160) / 20, "{inked} inked pixels");
    // the charts' area colour, the badges' green (up) and orange (draining)
    // below the header (whose "live" mark is green too)
    let count = |c: [u8; 3]| px[160 * w..].iter().filter(|&&p| p == c).count();
    assert!(
        count([0x9e, 0xca, 0xe1]) > 40,
        "chart areas: {}",
        count([0x9e, 0xca, 0xe1])
    );
    assert!(count([0x2e, 0x7d, 0x32]) > 100, "an up badge");
    assert!(count([0xef, 0x6c, 0x00]) > 100, "a draining badge");
}
