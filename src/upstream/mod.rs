//! Upstream: pools of servers, balancing, health, stickiness.

pub mod backend;
pub mod balance;
pub mod health;
pub mod stick;
pub mod tls;
