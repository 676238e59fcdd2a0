//! Observe: one log record per transaction, counters, and the admin server.

pub mod admin;
pub mod counters;
pub mod format;
pub mod record;
pub mod stats;
pub mod syslog;
pub mod writer;
