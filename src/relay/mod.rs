//! Relay: moving bytes once the upstream is chosen. HTTP exchanges over pooled
//! keep-alive upstream connections, and byte tunnels.

pub mod body;
pub mod headers;
pub mod park;
pub mod pool;
pub mod pump;
pub mod splice;
pub mod stream;
pub mod tunnel;
