//! sekisho's one integration-test binary: the real daemon on loopback ports,
//! driven by real clients (curl, raw sockets).

mod acl;
mod auth;
mod check;
mod connect;
mod dns;
pub mod egress;
mod examples;
mod failover;
mod forward;
mod harness;
mod headers;
pub mod lb;
mod lifecycle;
mod log;
mod logstats;
mod netns;
mod netns_smoke;
mod operate;
mod privileges;
mod proxy_protocol;
mod service;
mod stats_page;
mod tcp;
mod transparency;
mod udp;
