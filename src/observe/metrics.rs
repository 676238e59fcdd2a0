//! `/metrics`: the figures in the Prometheus text exposition format, version
//! 0.0.4 (`text/plain; version=0.0.4`), read from the atomics at scrape time.
//!
//! Written by hand rather than with `prometheus-client`: that crate encodes
//! OpenMetrics 1.0 text only (a `# EOF` terminator, counter families named
//! without `_total`, its own content type), not the 0.0.4 format scrapers
//! are asked for here, and every family it encodes at scrape time goes
//! through a descriptor encoder built for its registry, where the figures
//! already live in our own atomics. The format is small: a `# HELP` and a
//! `# TYPE` line per family, then `name{label="value"} number` lines, label
//! values escaped (`\\`, `\"`, `\n`), counters named `..._total`. Response
//! times are summaries (p50, p90, p99 from the fixed-size histogram, with
//! `_sum` and `_count`).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::Config;
use crate::observe::figures::{ErrorClass, Figures};
use crate::runtime::State;
use crate::upstream::backend::AdminState;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped for the exposition.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A `# HELP` text, escaped for the exposition.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A number as the exposition writes it (`NaN` for an unknown quantile).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The text being written: families with their samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        escape_help(help, &mut self.out);
        let _ = writeln!(self.out, "\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(val, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(v));
    }

    /// One family with one sample per labelled object.
    fn each<'a, T: 'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, T)>,
        value: impl Fn(&T) -> f64,
    ) {
        self.family(name, kind, help);
        for (labels, item) in items {
            self.sample(name, &labels, value(&item));
        }
    }
}

/// The labelled figures of one level (listener, pool or server).
struct Level<'a> {
    prefix: &'static str,
    what: &'static str,
    items: Vec<(Vec<(&'static str, &'a str)>, &'a Figures)>,
}

impl Exposition {
    /// Requests, bytes, status classes, error classes and the response-time
    /// summary of every object of a level.
    fn figures(&mut self, level: &Level<'_>) {
        let p = level.prefix;
        let w = level.what;
        let items = &level.items;
        let name = format!("sekisho_{p}_requests_total");
        self.each(
            &name,
            "counter",
            &format!("Transactions finished per {w} (HTTP requests, TCP connections, UDP sessions)."),
            items.iter().map(|(l, f)| (l.clone(), *f)),
            |f| f.requests.load(Relaxed) as f64,
        );
        for (dir, help) in [("in", "received from clients"), ("out", "sent to clients")] {
            let name = format!("sekisho_{p}_bytes_{dir}_total");
            self.each(
                &name,
                "counter",
                &format!("Bytes {help} per {w}, headers included."),
                items.iter().map(|(l, f)| (l.clone(), *f)),
                |f| {
                    if dir == "in" {
                        f.bytes_in.load(Relaxed) as f64
                    } else {
                        f.bytes_out.load(Relaxed) as f64
                    }
                },
            );
        }
        let name = format!("sekisho_{p}_responses_total");
        self.family(&name, "counter", &format!("Responses per {w} by status class."));
        for (labels, f) in items {
            for (n, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let mut l = labels.clone();
                l.push(("class", class));
                self.sample(&name, &l, f.status(n + 1) as f64);
            }
        }
        let name = format!("sekisho_{p}_errors_total");
        self.family(
            &name,
            "counter",
            &format!(
                "Transactions per {w} that ended badly, by kind: connect, response, timeout (server side), client (aborted or timed out), queue (full or timed out), denied (access rules), proxy (anything else)."
            ),
        );
        for (labels, f) in items {
            for c in ErrorClass::ALL {
                let mut l = labels.clone();
                l.push(("kind", c.name()));
                self.sample(&name, &l, f.errors(c) as f64);
            }
        }
        let name = format!("sekisho_{p}_response_seconds");
        self.family(
            &name,
            "summary",
            &format!(
                "Time from a request's first byte to its last (a TCP or UDP session's length) per {w}, since start."
            ),
        );
        for (labels, f) in items {
            let qs = f.times.quantiles_ms([0.5, 0.9, 0.99]);
            for (q, v) in ["0.5", "0.9", "0.99"].iter().zip(qs) {
                let mut l = labels.clone();
                l.push(("quantile", q));
                self.sample(&name, &l, v.map_or(f64::NAN, |ms| ms / 1000.0));
            }
            self.sample(&format!("{name}_sum"), labels, f.times.sum_seconds());
            self.sample(&format!("{name}_count"), labels, f.times.count() as f64);
        }
    }
}

/// The whole exposition for the configuration in force.
pub fn render(state: &State, cfg: &Config) -> String {
    let mut e = Exposition {
        out: String::with_capacity(16 * 1024),
    };
    let c = &state.counters;
    for (name, help, v) in [
        (
            "sekisho_connections_total",
            "Client connections accepted.",
            c.connections.load(Relaxed),
        ),
        (
            "sekisho_transactions_total",
            "Transactions (requests, tunnels, sessions) finished.",
            c.transactions.load(Relaxed),
        ),
        (
            "sekisho_denied_total",
            "Requests refused by the access rules.",
            c.denied.load(Relaxed),
        ),
        (
            "sekisho_errors_total",
            "Transactions answered with an error page of the proxy, or connections closed on an error.",
            c.errors.load(Relaxed),
        ),
        (
            "sekisho_upstream_connects_total",
            "Upstream connections opened.",
            c.upstream_connects.load(Relaxed),
        ),
        (
            "sekisho_upstream_reused_total",
            "Requests sent on a reused upstream connection.",
            c.upstream_reused.load(Relaxed),
        ),
        (
            "sekisho_tunnels_total",
            "CONNECT tunnels established.",
            c.tunnels.load(Relaxed),
        ),
        (
            "sekisho_reloads_total",
            "Configuration reloads put in force.",
            state.reloads.count.load(Relaxed),
        ),
        (
            "sekisho_reloads_failed_total",
            "Configuration reloads refused.",
            state.reloads.failed.load(Relaxed),
        ),
    ] {
        e.family(name, "counter", help);
        e.sample(name, &[], v as f64);
    }
    for (name, help, v) in [
        (
            "sekisho_open_connections",
            "Client connections open now over all listeners.",
            u64::from(state.open_connections()),
        ),
        (
            "sekisho_maxconn",
            "Client connections served at once over all listeners (maxconn).",
            u64::from(cfg.maxconn),
        ),
        (
            "sekisho_config_generation",
            "Generation of the configuration in force (1 at start, one more per reload).",
            cfg.live.generation,
        ),
        (
            "sekisho_active_connections",
            "Client connections and tunnels in progress.",
            c.active.load(Relaxed),
        ),
        (
            "sekisho_parked_sessions",
            "tcp sessions parked now (quiet for 1 s, out of the runtime until bytes arrive).",
            state.parked.as_ref().map_or(0, |l| l.len()) as u64,
        ),
    ] {
        e.family(name, "gauge", help);
        e.sample(name, &[], v as f64);
    }

    // access-log outputs
    let logs = state.log.load().figures();
    for (name, help, pick) in [
        (
            "sekisho_log_written_total",
            "Access-log records written, per output.",
            0usize,
        ),
        (
            "sekisho_log_dropped_total",
            "Access-log records dropped (queue full or output unavailable), per output.",
            1,
        ),
        (
            "sekisho_log_truncated_total",
            "Access-log records cut to fit (syslog datagrams), per output.",
            2,
        ),
    ] {
        e.each(
            name,
            "counter",
            help,
            logs.iter().map(|f| (vec![("output", f.name.as_str())], f)),
            |f| match pick {
                0 => f.written as f64,
                1 => f.dropped as f64,
                _ => f.truncated as f64,
            },
        );
    }

    // listeners
    let ls: Vec<_> = cfg
        .listeners
        .iter()
        .map(|l| (vec![("listener", &*l.name)], l))
        .collect();
    e.each(
        "sekisho_listener_connections",
        "gauge",
        "Client connections open now per listener.",
        ls.iter().map(|(lab, l)| (lab.clone(), *l)),
        |l| f64::from(l.stats.current.load(Relaxed)),
    );
    e.each(
        "sekisho_listener_connections_max",
        "gauge",
        "The most client connections open at once per listener.",
        ls.iter().map(|(lab, l)| (lab.clone(), *l)),
        |l| f64::from(l.stats.max.load(Relaxed)),
    );
    e.each(
        "sekisho_listener_accepted_total",
        "counter",
        "Client connections accepted per listener.",
        ls.iter().map(|(lab, l)| (lab.clone(), *l)),
        |l| l.stats.total.load(Relaxed) as f64,
    );
    e.each(
        "sekisho_listener_refused_total",
        "counter",
        "Client connections refused by maxconn_per_source per listener.",
        ls.iter().map(|(lab, l)| (lab.clone(), *l)),
        |l| l.stats.refused.load(Relaxed) as f64,
    );
    e.figures(&Level {
        prefix: "listener",
        what: "listener",
        items: ls.iter().map(|(lab, l)| (lab.clone(), &l.stats.figures)).collect(),
    });

    // pools
    let bs = &cfg.live.backends;
    let pl: Vec<_> = bs.iter().map(|b| (vec![("pool", &*b.cfg.name)], b)).collect();
    e.each(
        "sekisho_pool_active",
        "gauge",
        "Requests holding a server slot per pool.",
        pl.iter().map(|(lab, b)| (lab.clone(), *b)),
        |b| f64::from(b.active.load(Relaxed)),
    );
    e.each(
        "sekisho_pool_active_max",
        "gauge",
        "The most requests holding a server slot at once per pool.",
        pl.iter().map(|(lab, b)| (lab.clone(), *b)),
        |b| f64::from(b.stats.max_active.load(Relaxed)),
    );
    e.each(
        "sekisho_pool_queued",
        "gauge",
        "Requests waiting for a server slot per pool.",
        pl.iter().map(|(lab, b)| (lab.clone(), *b)),
        |b| f64::from(b.queued.load(Relaxed)),
    );
    e.each(
        "sekisho_pool_queued_max",
        "gauge",
        "The most requests waiting for a server slot at once per pool.",
        pl.iter().map(|(lab, b)| (lab.clone(), *b)),
        |b| f64::from(b.stats.max_queued.load(Relaxed)),
    );
    e.figures(&Level {
        prefix: "pool",
        what: "pool",
        items: pl.iter().map(|(lab, b)| (lab.clone(), &b.stats.figures)).collect(),
    });

    // servers
    let sv: Vec<_> = bs
        .iter()
        .flat_map(|b| {
            b.servers
                .iter()
                .map(move |s| (vec![("pool", &*b.cfg.name), ("server", &*s.cfg.name)], s))
        })
        .collect();
    e.each(
        "sekisho_server_up",
        "gauge",
        "1 when the server is up by its health checks and passive health, else 0.",
        sv.iter().map(|(lab, s)| (lab.clone(), *s)),
        |s| if s.is_up() { 1.0 } else { 0.0 },
    );
    e.family(
        "sekisho_server_admin_state",
        "gauge",
        "The operator's state of the server: 1 for the state it is in (ready, drain, maint), 0 for the others.",
    );
    for (labels, s) in &sv {
        let now = s.admin_state();
        for a in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
            let mut l = labels.clone();
            l.push(("state", a.name()));
            e.sample("sekisho_server_admin_state", &l, if now == a { 1.0 } else { 0.0 });
        }
    }
    e.each(
        "sekisho_server_weight",
        "gauge",
        "The weight in use (the configured one unless an operator changed it).",
        sv.iter().map(|(lab, s)| (lab.clone(), *s)),
        |s| f64::from(s.weight.load(Relaxed)),
    );
    e.each(
        "sekisho_server_active",
        "gauge",
        "Requests in progress per server.",
        sv.iter().map(|(lab, s)| (lab.clone(), *s)),
        |s| f64::from(s.active.load(Relaxed)),
    );
    e.each(
        "sekisho_server_active_max",
        "gauge",
        "The most requests in progress at once per server.",
        sv.iter().map(|(lab, s)| (lab.clone(), *s)),
        |s| f64::from(s.stats.max_active.load(Relaxed)),
    );
    e.each(
        "sekisho_server_attempts_total",
        "counter",
        "Requests sent to the server, tries that failed and were retried elsewhere included.",
        sv.iter().map(|(lab, s)| (lab.clone(), *s)),
        |s| s.requests.load(Relaxed) as f64,
    );
    e.figures(&Level {
        prefix: "server",
        what: "server",
        items: sv.iter().map(|(lab, s)| (lab.clone(), &s.stats.figures)).collect(),
    });
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_help_are_escaped() {
        let mut e = Exposition { out: String::new() };
        e.family("x_total", "counter", "a \\ b\nc");
        e.sample("x_total", &[("pool", "a\"b\\c\nd"), ("server", "s")], 3.0);
        e.sample("x_total", &[], 0.25);
        e.sample("x_total", &[], f64::NAN);
        assert_eq!(
            e.out,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\n\
             x_total{pool=\"a\\\"b\\\\c\\nd\",server=\"s\"} 3\nx_total 0.25\nx_total NaN\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(12.0), "12");
        assert_eq!(number(0.001), "0.001");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1e20), "100000000000000000000");
    }
}
