//! The command line: `sekisho run`, `check`, `default-config`, `routes`,
//! `passwd` and `logstats`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Parser)]
#[command(name = "sekisho", version, about = "Forward proxy and load balancer", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (the embedded default config when no file is given).
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Binary upgrade: take the listening sockets over from the sekisho
        /// answering on this control socket; it drains and exits once this
        /// one is ready.
        #[arg(long, value_name = "SOCKET")]
        takeover: Option<PathBuf>,
    },
    /// Make the running sekisho reload its configuration: through its
    /// `control_socket` (the outcome is printed) or by SIGHUP to the process
    /// in its `pid_file`. The file is validated first; an invalid one is not sent.
    Reload {
        /// Configuration file (TOML) of the running instance.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The control socket (instead of the one the file names).
        #[arg(long, value_name = "SOCKET")]
        control_socket: Option<PathBuf>,
        /// The pid file (instead of the one the file names).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
    },
    /// Validate a configuration file and print every error with its line and column.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print the `ip rule` / `ip route` commands the configured uplinks and
    /// egress addresses need; `--apply` installs them through netlink
    /// (idempotent), `--remove` takes away exactly what `--apply` added.
    Routes {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Install the plan on this host.
        #[arg(long, conflicts_with = "remove")]
        apply: bool,
        /// Remove the entries the plan installed.
        #[arg(long)]
        remove: bool,
    },
    /// Add or replace a user in an htpasswd (Basic) or htdigest (Digest) file.
    /// The password is read from the terminal, or from the first line of
    /// standard input when that is not a terminal; never from the command line.
    Passwd {
        /// The credentials file (created when missing; replaced atomically, mode 0600).
        file: PathBuf,
        /// The user to add or replace.
        user: String,
        /// Write an htdigest entry (`user:realm:HA1`) instead of an htpasswd one.
        #[arg(long)]
        digest: bool,
        /// The Digest realm (must match `auth.realm`).
        #[arg(long, default_value = "proxy", requires = "digest")]
        realm: String,
        /// Digest HA1 lines to write: `md5`, `sha-256` or `both` (one line each).
        #[arg(long, default_value = "both", requires = "digest", value_parser = ["md5", "sha-256", "both"])]
        algorithm: String,
        /// Hash htpasswd passwords with SHA-512-crypt instead of bcrypt.
        #[arg(long, conflicts_with = "digest")]
        sha512: bool,
        /// bcrypt cost (4-31).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
    /// Statistics from access logs in sekisho's formats: requests by TLS
    /// version and cipher, distinct clients per TLS version, status classes,
    /// top hosts and clients, response-time percentiles.
    Logstats {
        /// Log files, plain, gzip or bzip2 (recognised by their first bytes);
        /// `-` or no file reads standard input.
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Read every line as this preset instead of recognising each line's format.
        #[arg(long, value_name = "PRESET", value_parser = clap::builder::PossibleValuesParser::new(crate::observe::format::LogFormat::preset_names()))]
        log_format: Option<String>,
        /// The report on standard output.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
        format: String,
        /// Also write a self-contained HTML page to FILE (`-`: the page on
        /// standard output instead of the report).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// How many hosts and clients to list.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
        /// Show lines read and megabytes processed on standard error about
        /// once a second (the default when standard error is a terminal).
        #[arg(long)]
        progress: bool,
        /// For HAProxy-style lines whose request has no host: which `%hr`
        /// capture (1 = the first) holds the Host header; 0 never looks there.
        #[arg(long, value_name = "N", default_value_t = 1)]
        host_capture: usize,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEKISHO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load_file(&config) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(d) => {
                eprintln!("{d}");
                ExitCode::FAILURE
            }
        },
        Command::Passwd {
            file,
            user,
            digest,
            realm,
            algorithm,
            sha512,
            cost,
        } => match passwd(
            &file,
            &user,
            digest.then_some((realm.as_str(), algorithm.as_str())),
            sha512,
            cost,
        ) {
            Ok(msg) => {
                eprintln!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sekisho passwd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Routes { config, apply, remove } => match config::load_file(&config) {
            Ok(cfg) => routes(&cfg, &config.display().to_string(), apply, remove),
            Err(d) => {
                eprintln!("{d}");
                ExitCode::FAILURE
            }
        },
        Command::Logstats {
            files,
            log_format,
            format,
            html,
            top,
            progress,
            host_capture,
        } => {
            use crate::observe::logstats::{self, Output, ParseOptions, Preset};
            let opts = logstats::Options {
                inputs: files,
                preset: log_format.as_deref().and_then(Preset::from_name),
                output: match format.as_str() {
                    "json" => Output::Json,
                    "csv" => Output::Csv,
                    _ => Output::Table,
                },
                html,
                top,
                progress: progress.then_some(true),
                parse: ParseOptions { host_capture },
            };
            if logstats::run(&opts) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::DefaultConfig => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Reload {
            config,
            control_socket,
            pid_file,
        } => {
            let (mut control, mut pid) = (control_socket, pid_file);
            if let Some(path) = &config {
                match config::load_file(path) {
                    Ok(c) => {
                        control = control.or(c.control_socket.clone());
                        pid = pid.or(c.pid_file.clone());
                    }
                    Err(d) => {
                        eprintln!("{d}");
                        eprintln!("not reloading: the running configuration stays");
                        return ExitCode::FAILURE;
                    }
                }
            }
            match crate::runtime::control::request_reload(control.as_deref(), pid.as_deref()) {
                Ok(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("reload failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, takeover } => {
            let cfg = match &config {
                Some(path) => config::load_file(path),
                None => config::load_str("<embedded default>", config::EMBEDDED_DEFAULT),
            };
            let cfg = match cfg {
                Ok(c) => c,
                Err(d) => {
                    eprintln!("{d}");
                    return ExitCode::FAILURE;
                }
            };
            init_tracing();
            let source = match config {
                Some(p) => crate::runtime::Source::File(p),
                None => crate::runtime::Source::Embedded,
            };
            match crate::runtime::run(cfg, crate::runtime::Start { source, takeover }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `sekisho routes`: print, apply or remove the routing plan.
fn routes(cfg: &config::Config, source: &str, apply: bool, remove: bool) -> ExitCode {
    use crate::egress::netlink::{Change, Netlink};
    use crate::egress::routes;
    let plan = routes::plan(cfg);
    if !apply && !remove {
        print!("{}", routes::render(&plan, source));
        return ExitCode::SUCCESS;
    }
    for n in &plan.notes {
        eprintln!("note: {n}");
    }
    let mut nl = match Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("sekisho routes: cannot open a netlink socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let items: Vec<_> = if remove {
        plan.items().rev().collect()
    } else {
        plan.items().collect()
    };
    for it in items {
        let (r, cmd) = if remove {
            (nl.remove(it, plan.protocol), it.undo_command(plan.protocol))
        } else {
            (nl.add(it, plan.protocol), it.command(plan.protocol))
        };
        match r {
            Ok(Change::Added) => println!("added:   {cmd}"),
            Ok(Change::AlreadyPresent) => println!("present: {cmd}"),
            Ok(Change::Removed) => println!("removed: {cmd}"),
            Ok(Change::NotPresent) => println!("absent:  {cmd}"),
            Err(e) => {
                eprintln!("sekisho routes: {e}");
                failed = true;
            }
        }
    }
    if let Some(script) = &plan.nft {
        match nft(script, remove) {
            Ok(msg) => println!("{msg}"),
            Err(e) => {
                eprintln!("sekisho routes: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Installs (or deletes) the nft table that marks transparent pools' answers.
fn nft(script: &str, remove: bool) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    // every table the script defines starts with an empty definition line
    let tables: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("table ").and_then(|r| r.strip_suffix(" {}")))
        .collect();
    let input = if remove {
        let mut s = String::new();
        for t in &tables {
            // an empty definition first, so deleting an absent table is no error
            s.push_str(&format!("table {t} {{}}\ndelete table {t}\n"));
        }
        s
    } else {
        script.to_string()
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (package nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let verb = if remove { "removed" } else { "applied" };
    Ok(tables
        .iter()
        .map(|t| format!("{verb}: nft table {}", t.rsplit(' ').next().unwrap_or(t)))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Reads a password: from the terminal without echo (asked twice), or the
/// first line of standard input.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let ask = |prompt: &str| -> Result<String, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        // SAFETY: termios is plain data; fd 0 is a terminal (checked above).
        let mut old: libc::termios = unsafe { std::mem::zeroed() };
        let have = unsafe { libc::tcgetattr(0, &mut old) } == 0;
        if have {
            let mut quiet = old;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
        }
        let mut line = String::new();
        let r = std::io::stdin().lock().read_line(&mut line);
        if have {
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
        }
        r.map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = ask("Password: ")?;
    if ask("Retype password: ")? != first {
        return Err("the passwords do not match".into());
    }
    Ok(first)
}

fn passwd(
    file: &std::path::Path,
    user: &str,
    digest: Option<(&str, &str)>,
    sha512: bool,
    cost: u32,
) -> Result<String, String> {
    use crate::policy::credentials::{self, Kind};
    use crate::policy::digest::hex;
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err(format!("`{user}` cannot be a user name (no `:` or line breaks)"));
    }
    if let Some((realm, _)) = digest
        && (realm.is_empty() || realm.contains(['\n', '\r']))
    {
        return Err("the realm must be non-empty and on one line".into());
    }
    let old = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let password = read_password()?;
    if password.is_empty() {
        return Err("empty password refused".into());
    }
    let (kind, realm, lines) = match digest {
        Some((realm, alg)) => {
            let base = format!("{user}:{realm}:{password}");
            let mut lines = Vec::new();
            if alg != "sha-256" {
                use md5::Digest as _;
                lines.push(format!("{user}:{realm}:{}", hex(&md5::Md5::digest(base.as_bytes()))));
            }
            if alg != "md5" {
                use sha2::Digest as _;
                lines.push(format!(
                    "{user}:{realm}:{}",
                    hex(&sha2::Sha256::digest(base.as_bytes()))
                ));
            }
            (Kind::Digest, Some(realm), lines)
        }
        None => {
            let hash = if sha512 {
                use sha_crypt::PasswordHasher;
                let mut salt = [0u8; 12];
                getrandom::fill(&mut salt).map_err(|e| format!("no random source: {e}"))?;
                const ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
                let salt: String = salt.iter().map(|b| ALPHABET[(*b as usize) % 64] as char).collect();
                sha_crypt::ShaCrypt::default()
                    .hash_password_with_salt(password.as_bytes(), salt.as_bytes())
                    .map_err(|e| format!("SHA-512-crypt failed: {e}"))?
                    .to_string()
            } else {
                bcrypt::hash(password.as_bytes(), cost).map_err(|e| format!("bcrypt failed: {e}"))?
            };
            (Kind::Passwd, None, vec![format!("{user}:{hash}")])
        }
    };
    let (new, existed) = credentials::with_user(&old, kind, user, realm, &lines);
    credentials::write_atomic(file, new.as_bytes()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(format!(
        "{} user `{user}` in {}",
        if existed { "replaced" } else { "added" },
        file.display()
    ))
}
