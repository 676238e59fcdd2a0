//! Policy: who may do what. ACL evaluation (and, later, authentication) turns
//! the facts of a request into allow or deny.

pub mod acl;
