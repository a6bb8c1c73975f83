//! The ZEO 5 protocol: frames, messages in its two flavours, and a client.
//!
//! `frame` cuts the byte stream into sized frames, `message` turns frames
//! into `[msgid, flags, method, args]` (msgpack, "M5") and maps errors to
//! ZODB exception names, `pickle` does the same for the pickle flavour
//! ("Z5", Python `runzeo`'s default), `flavour` picks one of the two from
//! the server's announcement, `client` is a blocking multiplexed client
//! that is itself a [`crate::storage::Storage`] and speaks either flavour.
//! zeoraid's own server speaks msgpack.

pub mod client;
pub mod flavour;
pub mod frame;
pub mod message;
pub mod pickle;

/// The protocol the server announces and the client accepts.
pub const PROTOCOL: &[u8] = b"M5";
