//! The access log: the seed's Squid line, every code of both styles, JSON,
//! each output (stdout, stderr, files reopened on SIGUSR1, syslog over UDP
//! and a Unix socket).

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

/// Waits until the file at `path` holds at least `n` lines and returns them.
fn file_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n || std::time::Instant::now() > end {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn log_file_reopens_on_sigusr1() {
    let origin = Origin::start();
    let p = start(&with_log(
        "[[access_log]]\noutput = \"{DIR}/access.log\"\nformat = \"%ru\"\n",
    ));
    let path = p.dir.path("access.log");
    let rotated = p.dir.path("access.log.1");
    let urls: Vec<String> = (0..6).map(|n| origin.url(&format!("/echo?n={n}"))).collect();
    for u in &urls[..3] {
        assert_eq!(curl_status(&p.proxy(), u, &[]).0, 200);
    }
    assert_eq!(file_lines(&path, 3), urls[..3]);
    // what logrotate does: move the file, then signal the daemon
    let mv = std::process::Command::new("mv")
        .arg(&path)
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(mv.success());
    p.signal(libc::SIGUSR1);
    wait_until("the reopened log file", || path.exists());
    for u in &urls[3..] {
        assert_eq!(curl_status(&p.proxy(), u, &[]).0, 200);
    }
    assert_eq!(file_lines(&path, 3), urls[3..], "the later lines, in the new file");
    assert_eq!(
        file_lines(&rotated, 3),
        urls[..3],
        "the first lines, none lost, none added"
    );
    let stderr = p.stderr();
    assert!(stderr.contains("SIGUSR1: reopening 1 access log file"), "{stderr}");
    assert!(stderr.contains("reopened"), "{stderr}");
}

#[test]
fn a_failed_reopen_keeps_the_old_file() {
    let origin = Origin::start();
    let p = start(&with_log(
        "[[access_log]]\noutput = \"{DIR}/access.log\"\nformat = \"%ru\"\n",
    ));
    let path = p.dir.path("access.log");
    let rotated = p.dir.path("access.log.1");
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo?n=1"), &[]).0, 200);
    file_lines(&path, 1);
    std::fs::rename(&path, &rotated).unwrap();
    // the path cannot be opened for appending any more
    std::fs::create_dir(&path).unwrap();
    p.signal(libc::SIGUSR1);
    wait_until("the reopen error", || p.stderr().contains("cannot reopen access log"));
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo?n=2"), &[]).0, 200);
    assert_eq!(
        file_lines(&rotated, 2),
        [origin.url("/echo?n=1"), origin.url("/echo?n=2")],
        "still written through the descriptor opened before"
    );
}

/// This host's name, as sekisho's default `syslog_hostname` takes it.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_string()
}

fn recv_text(sock: &std::net::UdpSocket) -> String {
    let mut buf = [0u8; 65536];
    let n = sock.recv(&mut buf).expect("a syslog datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn syslog_rfc5424_over_udp() {
    use std::net::UdpSocket;
    let origin = Origin::start();
    let json = UdpSocket::bind("127.0.0.1:0").unwrap();
    let short = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&json, &short] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    }
    let p = start(&with_log(&format!(
        "[[access_log]]\noutput = \"syslog\"\nsyslog_address = \"udp://127.0.0.1:{}\"\nformat = \"json\"\n\
         [[access_log]]\noutput = \"syslog\"\nsyslog_address = \"udp://127.0.0.1:{}\"\nsyslog_facility = \"daemon\"\n\
         syslog_severity = \"notice\"\nsyslog_tag = \"gate\"\nsyslog_hostname = \"proxy1\"\nsyslog_max_length = 480\nformat = \"%ru\"\n",
        json.local_addr().unwrap().port(),
        short.local_addr().unwrap().port(),
    )));
    let urls = [
        origin.url("/echo?n=0"),
        origin.url("/echo?n=1"),
        origin.url(&format!("/echo?long={}", "x".repeat(600))),
    ];
    for u in &urls {
        assert_eq!(curl_status(&p.proxy(), u, &[]).0, 200);
    }
    let host = host_name();
    for u in &urls {
        // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
        let d = recv_text(&json);
        let f: Vec<&str> = d.splitn(8, ' ').collect();
        assert_eq!(f.len(), 8, "{d}");
        assert_eq!(f[0], "<134>1", "local0.info, version 1: {d}");
        let t = chrono::DateTime::parse_from_rfc3339(f[1]).unwrap_or_else(|e| panic!("{e}: {d}"));
        let (_, frac) = f[1].split_once('.').expect("a fraction of a second");
        assert!(frac.len() > 6 && frac[..6].bytes().all(|b| b.is_ascii_digit()), "{d}");
        let age = chrono::Utc::now().signed_duration_since(t).num_seconds();
        assert!((0..60).contains(&age), "{d}");
        assert_eq!(
            (f[2], f[3], f[4]),
            (host.as_str(), "sekisho", p.pid().to_string().as_str()),
            "{d}"
        );
        assert_eq!((f[5], f[6]), ("-", "-"), "{d}");
        let v: serde_json::Value = serde_json::from_str(f[7]).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(v["uri"], u.as_str());
        assert_eq!(v["status"], 200);
    }
    for u in &urls[..2] {
        let d = recv_text(&short);
        assert!(d.starts_with("<29>1 "), "daemon.notice: {d}");
        assert!(d.ends_with(&format!(" proxy1 gate {} - - {u}", p.pid())), "{d}");
    }
    let d = recv_text(&short);
    assert_eq!(d.len(), 480, "{d}");
    assert!(
        d.ends_with("xxx[truncated]"),
        "cut to the datagram size, with a marker: {d}"
    );
    wait_until("six records counted as written, none dropped", || {
        let (_, stats) = p.admin_get("/stats.json");
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        (v["log_written"].as_u64(), v["log_dropped"].as_u64()) == (Some(6), Some(0))
    });
}

#[test]
fn syslog_rfc3164_over_a_unix_socket() {
    use std::os::unix::net::UnixDatagram;
    let origin = Origin::start();
    let dir = TempDir::new();
    let sock = dir.path("log.sock");
    let bind = || {
        let s = UnixDatagram::bind(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s
    };
    let rx = bind();
    let p = start(&with_log(&format!(
        "[[access_log]]\noutput = \"syslog\"\nsyslog_address = \"unix://{}\"\nsyslog_format = \"rfc3164\"\n\
         syslog_tag = \"sekisho-access\"\nsyslog_hostname = \"gate\"\nformat = \"%ru %>Hs\"\n",
        sock.display()
    )));
    let recv = |s: &UnixDatagram| {
        let mut buf = [0u8; 65536];
        let n = s.recv(&mut buf).expect("a syslog datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let url = origin.url("/echo?n=1");
    assert_eq!(curl_status(&p.proxy(), &url, &[]).0, 200);
    // <PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG
    let d = recv(&rx);
    let rest = d.strip_prefix("<134>").unwrap_or_else(|| panic!("local0.info: {d}"));
    let (stamp, rest) = rest.split_at(15);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(months.contains(&&stamp[..3]), "{d}");
    let day = stamp[4..6].trim_start();
    assert!(day.parse::<u8>().is_ok_and(|n| (1..=31).contains(&n)), "{d}");
    assert_eq!(stamp.as_bytes()[3], b' ');
    assert!(
        chrono::NaiveTime::parse_from_str(&stamp[7..], "%H:%M:%S").is_ok(),
        "{d}"
    );
    assert_eq!(rest, format!(" gate sekisho-access[{}]: {url} 200", p.pid()));

    // the syslog daemon goes away: records are dropped and counted
    drop(rx);
    std::fs::remove_file(&sock).unwrap();
    assert_eq!(curl_status(&p.proxy(), &url, &[]).0, 200);
    wait_until("a dropped record", || {
        let (_, stats) = p.admin_get("/stats.json");
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        v["log_dropped"].as_u64() >= Some(1)
    });
    // it comes back: sekisho connects again within a few seconds
    let rx = bind();
    rx.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let back = origin.url("/echo?back=1");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut got = None;
    while got.is_none() && std::time::Instant::now() < end {
        assert_eq!(curl_status(&p.proxy(), &back, &[]).0, 200);
        let mut buf = [0u8; 65536];
        if let Ok(n) = rx.recv(&mut buf) {
            got = Some(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
    }
    let d = got.expect("records reach the socket again");
    assert!(d.ends_with(&format!("[{}]: {back} 200", p.pid())), "{d}");
    let stderr = p.stderr();
    assert!(stderr.contains("is gone"), "{stderr}");
    assert!(stderr.contains("connected to"), "{stderr}");
}

#[test]
fn a_missing_syslog_socket_stops_the_start() {
    let dir = TempDir::new();
    let sock = dir.path("no-such.sock");
    let cfg = dir.path("c.toml");
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:{}\"\n[[access_log]]\noutput = \"syslog\"\nsyslog_address = \"{}\"\n",
        free_port(),
        sock.display()
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sekisho started without its syslog socket");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(dir.path("stderr")).unwrap();
    assert!(stderr.contains(&sock.display().to_string()), "names the path: {stderr}");
}
