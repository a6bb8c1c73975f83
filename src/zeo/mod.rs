//! The ZEO 5 protocol, msgpack flavour: frames, messages, and a client.
//!
//! `frame` cuts the byte stream into sized frames, `message` turns frames
//! into `[msgid, flags, method, args]` and maps errors to ZODB exception
//! names, `client` is a blocking multiplexed client that is itself a
//! [`crate::storage::Storage`].

pub mod client;
pub mod frame;
pub mod message;

/// The protocol the server announces and the client accepts.
pub const PROTOCOL: &[u8] = b"M5";
