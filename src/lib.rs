//! sekisho: a forward proxy and load balancer in one daemon.
//!
//! A connection flows one way through the pipeline, one module per stage:
//! [`listen`] -> [`front`] -> [`policy`] -> [`egress`] -> [`relay`], with
//! [`observe`] writing one record per transaction. See `ARCHITECTURE.md`.

pub mod cli;
pub mod config;
pub mod egress;
pub mod front;
pub mod listen;
pub mod observe;
pub mod policy;
pub mod relay;
pub mod runtime;
pub mod upstream;
