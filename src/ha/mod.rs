//! Controller high availability (issue #26), the IO edge to etcd: a
//! synchronous etcd v3 client over its HTTP/JSON gateway ([`etcd`]) and
//! leader election on a lease-bound key ([`lease`]), each controller's
//! registration under its name ([`members`]); and what to do with
//! leadership (stand by, fence, reconcile, serve, demote) as a pure state
//! machine ([`role`]) that the IO shell steps with what etcd and the
//! backends answered. Every call to etcd has a deadline. The
//! [`controller`] is the thread that runs it: it fences the served arrays
//! and opens or closes the server's gate on `register`.
//!
//! No dependency beyond the core's: the HTTP/1.1 exchange is the small
//! hand-written `http` module (per-read timeouts, cancellable streams),
//! base64 is a few lines in [`etcd`], JSON is `serde_json`. So `ha` is in
//! every build, features or not.

pub mod controller;
pub mod etcd;
mod http;
pub mod lease;
pub mod members;
pub mod prime;
pub mod role;
