//! Running sekisho as a service: the systemd unit in `dist/` (verified by
//! `systemd-analyze`, and its commands run the way systemd runs them, with a
//! notification socket standing in for systemd's) and the Dockerfile (the
//! configuration it copies, its user, entry point and health check).
//!
//! The image itself is not built here (that needs a Docker daemon): the
//! Dockerfile is read as text, and what it copies and runs is run directly.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{TempDir, bin, free_port, require_tool, wait_for_port};

const UNIT: &str = "dist/sekisho.service";
const INSTALLED: &str = "/usr/local/bin/sekisho";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The settings of one section of a unit file, in order.
fn section(unit: &str, name: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
        } else if current == name
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn setting<'a>(s: &'a [(String, String)], key: &str) -> Option<&'a str> {
    s.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `45s`, `2min`, `90`: a systemd time span in seconds.
fn seconds(span: &str) -> u64 {
    let (n, unit) = span.split_at(span.find(|c: char| !c.is_ascii_digit()).unwrap_or(span.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("`{span}` is not a time span"));
    match unit {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        _ => panic!("`{span}`: unit `{unit}` not understood here"),
    }
}

/// `config` with its listener and admin addresses on free loopback ports and
/// its control socket in `dir`; returns the text and old port -> new port.
fn on_loopback(config: &str, dir: &TempDir) -> (String, HashMap<u16, u16>) {
    let mut ports = HashMap::new();
    let mut out = String::new();
    for line in config.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("bind = \"").and_then(|r| r.strip_suffix('"')) {
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            let new = *ports.entry(port).or_insert_with(free_port);
            out.push_str(&format!("bind = \"127.0.0.1:{new}\"\n"));
        } else if t.starts_with("control_socket = ") {
            out.push_str(&format!(
                "control_socket = \"{}\"\n",
                dir.path("control.sock").display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, ports)
}

/// The notifications a service manager would receive.
struct Notify(UnixDatagram);

impl Notify {
    fn new(dir: &TempDir) -> (Notify, PathBuf) {
        let path = dir.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (Notify(sock), path)
    }
    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.0.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
}

/// A unit command line as systemd would run it, with the built binary in
/// place of the installed one and `config` in place of the unit's file.
fn command(line: &str, unit_config: &str, config: &Path) -> Command {
    let mut words = line.split_whitespace().map(|w| {
        if w == INSTALLED {
            bin().to_string()
        } else if w == unit_config {
            config.display().to_string()
        } else {
            w.to_string()
        }
    });
    let mut c = Command::new(words.next().unwrap());
    c.args(words);
    c
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let dir = TempDir::new();
    // verify checks that the programs exist: the built binary stands in for the installed one
    let unit = read(UNIT).replace(INSTALLED, bin());
    let verify = |text: &str| -> (bool, Vec<String>) {
        let path = dir.path("sekisho.service");
        std::fs::write(&path, text).unwrap();
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        // it exits 0 on unknown keys and bad values too: they are lines naming the file
        let lines = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        let about: Vec<String> = lines
            .lines()
            .filter(|l| l.contains("sekisho.service"))
            .map(str::to_string)
            .collect();
        (o.status.success(), about)
    };
    let (ok, complaints) = verify(&unit);
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify {UNIT}:\n{complaints:#?}"
    );
    // and it does read the file: a misspelt value is reported
    let (_, complaints) = verify(&unit.replace("Type=notify", "Type=notifiy"));
    assert!(
        complaints.iter().any(|l| l.contains("notifiy")),
        "systemd-analyze did not report a bad Type=: {complaints:#?}"
    );
}

#[test]
fn the_units_commands_start_reload_and_stop_sekisho_as_systemd_would() {
    let unit = read(UNIT);
    let s = section(&unit, "Service");
    let get = |k: &str| setting(&s, k).unwrap_or_else(|| panic!("{UNIT} sets no {k}="));
    assert_eq!(get("Type"), "notify");
    assert_eq!(
        get("NotifyAccess"),
        "all",
        "a binary upgrade's new process sends MAINPID"
    );
    let start = get("ExecStart");
    let unit_config = start
        .strip_prefix(&format!("{INSTALLED} run -c "))
        .unwrap_or_else(|| panic!("ExecStart={start}"));
    assert_eq!(get("ExecReload"), format!("{INSTALLED} reload -c {unit_config}"));
    assert!(setting(&s, "KillSignal").is_none_or(|v| v == "SIGTERM"));
    assert!(get("KillMode") != "none");
    get("LimitNOFILE").parse::<u64>().expect("LimitNOFILE= a number");
    // an ambient capability outside the bounding set is silently lost
    let bounding: Vec<&str> = get("CapabilityBoundingSet").split_whitespace().collect();
    for cap in get("AmbientCapabilities").split_whitespace() {
        assert!(
            bounding.contains(&cap),
            "{cap} is ambient but not in CapabilityBoundingSet="
        );
    }
    assert!(get("AmbientCapabilities").contains("CAP_NET_BIND_SERVICE"));

    // the shipped configuration fits the unit: its control socket in the
    // runtime directory, no other user, a drain shorter than the stop timeout
    let shipped = read("dist/sekisho.toml");
    let doc: toml::Table = toml::from_str(&shipped).unwrap();
    let control = doc["control_socket"]
        .as_str()
        .expect("dist/sekisho.toml sets control_socket");
    assert!(
        control.starts_with(&format!("/run/{}/", get("RuntimeDirectory"))),
        "{control} is outside RuntimeDirectory={}",
        get("RuntimeDirectory")
    );
    assert!(doc.get("user").is_none_or(|u| u.as_str() == Some(get("User"))));
    let drain = doc
        .get("timeouts")
        .and_then(|t| t.get("shutdown"))
        .and_then(|v| v.as_str())
        .unwrap_or("30s");
    assert!(
        seconds(get("TimeoutStopSec")) > seconds(drain),
        "TimeoutStopSec={} must exceed timeouts.shutdown = {drain}",
        get("TimeoutStopSec")
    );

    let dir = TempDir::new();
    let (text, ports) = on_loopback(&shipped, &dir);
    let config = dir.path("sekisho.toml");
    std::fs::write(&config, text).unwrap();
    let (notify, notify_path) = Notify::new(&dir);
    let mut child = command(start, unit_config, &config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::fs::File::create(dir.path("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let ready = notify.next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", child.id())), "{ready}");
    for port in ports.values() {
        assert!(
            wait_for_port(*port, Duration::from_secs(5)),
            "nothing on {port} once READY=1"
        );
    }

    let o = command(get("ExecReload"), unit_config, &config).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok generation 2");
    let reloading = notify.next();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(notify.next(), "READY=1");

    // an invalid file: ExecReload fails, the service keeps running
    std::fs::write(&config, "bogus = 1\n").unwrap();
    let o = command(get("ExecReload"), unit_config, &config).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown key `bogus`"));
    assert!(child.try_wait().unwrap().is_none());

    // systemctl stop: SIGTERM, then the drain ends well within TimeoutStopSec
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(notify.next(), "STOPPING=1");
    let code = wait_exit(&mut child, Duration::from_secs(seconds(get("TimeoutStopSec"))));
    if code.is_none() {
        let _ = child.kill();
    }
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(dir.path("stderr")).unwrap()
    );
}

/// One Dockerfile instruction: the keyword and its arguments, with
/// continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let (k, v) = pending.split_once(char::is_whitespace).unwrap_or((&pending, ""));
        out.push((k.to_ascii_uppercase(), v.trim().to_string()));
        pending.clear();
    }
    out
}

fn json_words(v: &str) -> Vec<String> {
    serde_json::from_str(v).unwrap_or_else(|e| panic!("`{v}` is not an exec-form JSON array: {e}"))
}

#[test]
fn the_dockerfile_builds_locked_runs_unprivileged_and_its_config_and_health_check_work() {
    let all = instructions(&read("Dockerfile"));
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, last) = all.split_at(*stages.last().unwrap());
    assert!(
        build
            .iter()
            .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")),
        "the builder runs `cargo build --release --locked`"
    );
    assert!(last[0].1.starts_with("debian:bookworm-slim"), "{:?}", last[0]);
    let find = |key: &str| last.iter().position(|(k, _)| k == key);
    let arg = |key: &str| &last[find(key).unwrap_or_else(|| panic!("no {key} in the final stage"))].1;

    // a non-root user, created in the image, in force before the entry point
    let user = arg("USER").split(':').next().unwrap().to_string();
    assert!(!["root", "0", ""].contains(&user.as_str()), "USER {user}");
    assert!(find("USER") < find("ENTRYPOINT"), "USER comes before ENTRYPOINT");
    assert!(
        last.iter()
            .any(|(k, v)| k == "RUN" && v.contains("useradd") && v.contains(&user)),
        "the image creates the user {user}"
    );
    assert_eq!(json_words(arg("ENTRYPOINT")), ["sekisho"]);
    let cmd = json_words(arg("CMD"));
    assert_eq!(cmd[..2], ["run", "-c"]);
    assert_eq!(arg("STOPSIGNAL"), "SIGTERM");

    // the configuration it copies to the path CMD runs
    let copy = last
        .iter()
        .find(|(k, v)| k == "COPY" && v.ends_with(&format!(" {}", cmd[2])))
        .unwrap_or_else(|| panic!("nothing is copied to {}", cmd[2]));
    let source = copy.1.split_whitespace().next().unwrap();
    let o = Command::new(bin())
        .args(["check", "-c"])
        .arg(repo(source))
        .output()
        .unwrap();
    assert!(o.status.success(), "{source}: {}", String::from_utf8_lossy(&o.stderr));
    let shipped = read(source);
    let doc: toml::Table = toml::from_str(&shipped).unwrap();
    let logs = doc["access_log"].as_array().expect("an access log");
    for l in logs {
        assert_eq!(l.get("output").and_then(|o| o.as_str()).unwrap_or("stdout"), "stdout");
    }
    // the exposed ports are the ones it listens on
    let dir = TempDir::new();
    let (text, ports) = on_loopback(&shipped, &dir);
    for p in arg("EXPOSE").split_whitespace() {
        let p: u16 = p.trim_end_matches("/tcp").parse().unwrap();
        assert!(ports.contains_key(&p), "EXPOSE {p}, but nothing binds it in {source}");
    }

    // the HEALTHCHECK's command against that configuration, run here
    let health = arg("HEALTHCHECK");
    let words = json_words(&health[health.find("CMD [").expect("HEALTHCHECK ... CMD [...]") + 4..]);
    let run_check = || {
        let mut w: Vec<String> = words.clone();
        for (old, new) in &ports {
            w = w
                .iter()
                .map(|s| s.replace(&format!("/{old}"), &format!("/{new}")))
                .collect();
        }
        Command::new(&w[0])
            .args(&w[1..])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let config = dir.path("sekisho.toml");
    std::fs::write(&config, text).unwrap();
    assert!(!run_check(), "healthy with nothing running");
    let mut child = Command::new(bin())
        .args(&cmd[..2])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    for port in ports.values() {
        assert!(wait_for_port(*port, Duration::from_secs(5)));
    }
    let healthy = run_check();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = wait_exit(&mut child, Duration::from_secs(10));
    if code.is_none() {
        let _ = child.kill();
    }
    assert!(healthy, "{}", std::fs::read_to_string(dir.path("stderr")).unwrap());
    assert_eq!(code, Some(0));
}
