//! Transport pieces shared by the server and the ZEO client: where to
//! listen or connect ([`addr`]: TCP host:port or a Unix socket path), TLS
//! configuration from PEM files with errors that name the file ([`tls`]),
//! and Unix socket files (stale ones replaced, ours removed: [`unix`]).
//!
//! The sockets themselves stay with their owners: the event loop's
//! non-blocking transport is in `server::transport`, the client's blocking
//! one in `zeo::client::wire`.

pub mod addr;
pub mod tls;
pub mod unix;

pub use addr::Address;
