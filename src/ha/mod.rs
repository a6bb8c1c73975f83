//! Controller high availability (issue #26), the IO edge to etcd: a
//! synchronous etcd v3 client over its HTTP/JSON gateway ([`etcd`]) and
//! leader election on a lease-bound key ([`lease`]). What to do with
//! leadership (serve, stand by, fence) is decided elsewhere; this layer
//! only talks to etcd, with a deadline on every call.
//!
//! No dependency beyond the core's: the HTTP/1.1 exchange is the small
//! hand-written `http` module (per-read timeouts, cancellable streams),
//! base64 is a few lines in [`etcd`], JSON is `serde_json`. So `ha` is in
//! every build, features or not.

pub mod etcd;
mod http;
pub mod lease;
