//! Egress: from a destination name to a connected upstream socket. Name
//! resolution (static hosts first, then DNS with a cache), the outgoing
//! rules (source address, device, mark), parent proxies, and connecting
//! address by address within a per-attempt timeout; also the PAC file and
//! the policy-routing plan (`sekisho routes`) the egress needs.

pub mod connect;
pub mod netlink;
pub mod outgoing;
pub mod pac;
pub mod parent;
pub mod resolve;
pub mod routes;
