//! Observe: one log record per transaction, counters, the admin server, and
//! `sekisho logstats`, which reads the access logs back.

pub mod actions;
pub mod admin;
pub mod counters;
pub mod figures;
pub mod format;
pub mod logstats;
pub mod metrics;
pub mod record;
pub mod stats;
pub mod stats_page;
pub mod syslog;
pub mod writer;
