//! Egress: from a destination name to a connected upstream socket. Name
//! resolution (static hosts first, then DNS with a cache) and connecting
//! address by address within a per-attempt timeout.

pub mod connect;
pub mod netlink;
pub mod outgoing;
pub mod pac;
pub mod parent;
pub mod resolve;
pub mod routes;
