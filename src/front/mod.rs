//! Front: the protocol a listener speaks. Each accepted connection is served
//! by one front; today that is the HTTP forward proxy.

pub mod conn;
pub mod error_page;
pub mod forward;
pub mod http;
pub mod tcp;
pub mod txn;
pub mod udp;
