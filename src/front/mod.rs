//! Front: the protocol a listener speaks. Each accepted connection is served
//! by one front: the HTTP forward proxy (`forward`), the HTTP load balancer
//! (`http`), TCP (`tcp`) or UDP (`udp`); `conn` does what they share (PROXY
//! header, TLS handshake, the HTTP/1.1 or HTTP/2 server loop).

pub mod conn;
pub mod error_page;
pub mod forward;
pub mod http;
pub mod tcp;
pub mod txn;
pub mod udp;
