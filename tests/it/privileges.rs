//! `user`/`group`: bind as root, then serve as an unprivileged user, with
//! credential files only root may read still working across SIGHUP.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sekisho::policy::digest::{Algorithm, ha1};

use crate::auth::{auth_config, credentials, passwd};
use crate::harness::*;

const USER: &str = "sekisho-it";

/// True when running as root; otherwise skips with a reason, or fails under CI.
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root (CI=true runs as root)"
    );
    eprintln!("skipped: this test needs root to switch users");
    false
}

/// The test's unprivileged user, created once.
fn test_user() -> (u32, u32) {
    static ONCE: Mutex<()> = Mutex::new(());
    let _g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, USER]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        require_tool("useradd");
        let o = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            .output()
            .unwrap();
        assert!(o.status.success(), "useradd: {}", String::from_utf8_lossy(&o.stderr));
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

fn status_ids(pid: i32, key: &str) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line[key.len()..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

fn wait_for(p: &Sekisho, needle: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if p.stderr().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn an_unprivileged_run_serves_and_rereads_root_only_credentials() {
    if !root() {
        return;
    }
    let (uid, _) = test_user();
    let gid = 65534; // nogroup
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    // root-only files: the daemon opens them before dropping privileges
    for f in [&d, &b] {
        assert_eq!(
            std::fs::metadata(f)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap(),
            0
        );
    }
    let origin = Origin::start();
    let cfg = format!(
        "user = \"{USER}\"\ngroup = \"nogroup\"\n{}",
        auth_config(&d, &b, r#"["allow authed", "deny all"]"#, "")
    );
    let p = start(&cfg);
    assert!(wait_for(&p, &format!("running as user {USER}")), "{}", p.stderr());
    assert_eq!(status_ids(p.pid(), "Uid:"), vec![uid; 4]);
    assert_eq!(status_ids(p.pid(), "Gid:"), vec![gid; 4]);
    assert_eq!(status_ids(p.pid(), "Groups:"), vec![gid]);

    let url = origin.url("/echo");
    let login = |who: &str| curl_status(&p.proxy(), &url, &["--proxy-digest", "-U", who]).0;
    assert_eq!(login("alice:alice-pw"), 200);
    assert_eq!(
        curl_status(&p.proxy(), &url, &["--proxy-basic", "-U", "bob:bob-pw"]).0,
        200
    );

    // a user appended in place, then SIGHUP: read through the kept descriptor
    let line = format!("dave:crawl:{}\n", ha1(Algorithm::Sha256, "dave", "crawl", "dave-pw"));
    let mut text = std::fs::read_to_string(&d).unwrap();
    text.push_str(&line);
    std::fs::write(&d, text).unwrap();
    assert_eq!(login("dave:dave-pw"), 407);
    p.signal(libc::SIGHUP);
    assert!(wait_for(&p, "reloaded"), "{}", p.stderr());
    assert_eq!(login("dave:dave-pw"), 200);

    // replaced by a new root-only file: not readable any more, so the old
    // credentials stay and the error says why
    assert!(
        passwd(&["--digest", "--realm", "crawl", &d, "erin"], "erin-pw")
            .status
            .success()
    );
    p.signal(libc::SIGHUP);
    assert!(wait_for(&p, "was replaced since it was first opened"), "{}", p.stderr());
    assert_eq!(login("alice:alice-pw"), 200);
    assert_eq!(login("erin:erin-pw"), 407);
}

#[test]
fn a_user_switch_that_cannot_happen_stops_the_start() {
    if !root() {
        return;
    }
    test_user();
    let dir = TempDir::new();
    let cfg = dir.path("c.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!("user = \"root\"\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n[admin]\nenabled = false\n"),
    )
    .unwrap();
    require_tool("runuser");
    // a copy the unprivileged user can run wherever the checkout lives
    let exe = dir.path("sekisho");
    std::fs::copy(bin(), &exe).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // started as the unprivileged user, it cannot become root: refuse to run
    let o = Command::new("runuser")
        .args(["-u", USER, "--"])
        .arg(&exe)
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cannot switch to user `root`") && err.contains("not running as root"),
        "{err}"
    );
}
