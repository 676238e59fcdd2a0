//! Observe: one log record per transaction, counters, the admin server, and
//! `sekisho logstats`, which reads the access logs back.

pub mod admin;
pub mod counters;
pub mod figures;
pub mod format;
pub mod logstats;
pub mod record;
pub mod stats;
pub mod syslog;
pub mod writer;
