//! Policy: who may do what. ACL evaluation and proxy authentication turn the
//! facts of a request into allow, deny or "log in first".

pub mod acl;
pub mod auth;
pub mod credentials;
pub mod digest;
