//! The example configurations: every file in `examples/` passes `sekisho
//! check`, with stand-ins for the files it reads from `/etc/sekisho/`
//! (certificates, keys, credential files), and the routing plans the
//! load-balancer examples describe are the ones `sekisho routes` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::auth::passwd;
use crate::harness::{TempDir, bin, require_tool};
use crate::lb::cert;

/// The example of each job of the design brief, in the brief's order.
const JOBS: [&str; 5] = [
    "redundant-forward.toml",
    "transparent-lb.toml",
    "crawler-egress.toml",
    "multi-homed.toml",
    "haproxy-lb.toml",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every string under `/etc/sekisho/` in the file, with the key it is set by
/// (`cert`, `key_file`, `auth.digest.file` as its last two keys joined).
fn etc_paths(v: &toml::Value, keys: &mut Vec<String>, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::String(s) if s.starts_with("/etc/sekisho/") => {
            let n = keys.len();
            let key = keys[n.saturating_sub(2)..].join(".");
            out.push((key, s.clone()));
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                keys.push(k.clone());
                etc_paths(v, keys, out);
                keys.pop();
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                etc_paths(v, keys, out);
            }
        }
        _ => {}
    }
}

/// The example with its `/etc/sekisho/` files written into `dir` and its
/// paths pointing there.
fn with_stand_ins(name: &str, text: &str, dir: &TempDir) -> String {
    let doc = toml::Value::Table(toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}")));
    let realm = doc
        .get("auth")
        .and_then(|a| a.get("realm"))
        .and_then(|r| r.as_str())
        .unwrap_or("proxy")
        .to_string();
    let mut paths = Vec::new();
    etc_paths(&doc, &mut Vec::new(), &mut paths);
    let mut pair: Option<(String, String)> = None;
    for (key, path) in paths {
        let target = dir.0.join(path.trim_start_matches("/etc/sekisho/"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let t = target.to_str().unwrap();
        let mut pem = |which: usize| {
            let (c, k) = pair.get_or_insert_with(|| {
                require_tool("openssl");
                cert(dir, "stand-in", &["example.test"])
            });
            std::fs::copy(if which == 0 { &*c } else { &*k }, &target).unwrap();
        };
        match key.as_str() {
            "certificates.cert" => pem(0),
            "certificates.key" => pem(1),
            k if k.ends_with("key_file") => std::fs::write(&target, "a-cookie-key-of-32-bytes-or-so--\n").unwrap(),
            k if k.ends_with("password_file") => std::fs::write(&target, "parent-password\n").unwrap(),
            "digest.file" => {
                let o = passwd(&["--digest", "--realm", &realm, t, "user"], "pw");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            "basic.file" => {
                let o = passwd(&["--cost", "4", t, "user"], "pw");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            other => panic!("{name}: no stand-in for `{other}` = \"{path}\"; teach this test what the file holds"),
        }
    }
    text.replace("/etc/sekisho/", &format!("{}/", dir.0.display()))
}

/// `sekisho COMMAND -c EXAMPLE` with stand-ins: success, stdout, stderr.
fn run(command: &str, name: &str) -> (bool, String, String) {
    let text = std::fs::read_to_string(examples_dir().join(name)).unwrap();
    let dir = TempDir::new();
    let cfg = dir.path(name);
    std::fs::write(&cfg, with_stand_ins(name, &text, &dir)).unwrap();
    let o = Command::new(bin()).args([command, "-c"]).arg(&cfg).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn every_example_passes_check() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    for job in JOBS {
        assert!(names.iter().any(|n| n == job), "examples/{job} is missing");
    }
    let failed: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let (ok, _, err) = run("check", n);
            (!ok).then(|| format!("examples/{n}:\n{err}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_broken_example_fails_the_check() {
    // the stand-ins do not paper over a real mistake
    let text = std::fs::read_to_string(examples_dir().join("haproxy-lb.toml")).unwrap();
    let dir = TempDir::new();
    let broken =
        with_stand_ins("haproxy-lb.toml", &text, &dir).replace("min_version = \"1.2\"", "min_version = \"1.0\"");
    let cfg = dir.path("broken.toml");
    std::fs::write(&cfg, broken).unwrap();
    let o = Command::new(bin()).args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("min_version"));
}

fn routes(name: &str) -> String {
    let (ok, plan, err) = run("routes", name);
    assert!(ok, "{err}");
    plan
}

/// What the comments of the transparency and HAProxy examples promise
/// `sekisho routes` prints.
#[test]
fn the_load_balancer_examples_print_their_routing() {
    let plan = routes("transparent-lb.toml");
    for i in 11..=14 {
        let mark = format!("ip saddr 172.16.0.{i} tcp sport 80 meta mark set 0x1");
        assert!(plan.contains(&mark), "no `{mark}` in\n{plan}");
    }
    assert!(plan.contains("ip rule add fwmark 0x1 lookup 100"), "{plan}");
    for i in [21, 22] {
        let nat = format!("action nat egress 172.16.0.{i}/32 192.168.99.11");
        assert!(plan.contains(&nat), "no `{nat}` in\n{plan}");
    }

    let plan = routes("haproxy-lb.toml");
    for i in [101, 102] {
        let mark = format!("ip saddr 172.16.0.{i} tcp sport 8997 meta mark set 0x1");
        assert!(plan.contains(&mark), "no `{mark}` in\n{plan}");
    }

    let plan = routes("haproxy-backend.toml");
    for (mac, mark, table, lb) in [
        ("00:50:56:aa:bb:cc", "0x64", "101", "172.16.0.11"),
        ("00:50:56:dd:ee:ff", "0x65", "102", "172.16.0.12"),
    ] {
        for want in [
            format!("ether saddr {mac} ct mark set {mark}"),
            format!("ip rule add fwmark {mark} lookup {table}"),
            format!("ip route add default via {lb} dev eth0 table {table}"),
        ] {
            assert!(plan.contains(&want), "no `{want}` in\n{plan}");
        }
    }
}
