//! Which encoding of ZEO 5 messages a connection uses: msgpack ("M5") or
//! pickle ("Z5"), chosen by the server's announcement ([`Flavour::from_announcement`],
//! ZEO's rule: the first byte is the encoding, the rest the version, and a
//! client answers with the encoding and the lower of the two versions),
//! and the encode/decode calls that dispatch on it. Both flavours decode
//! into the same [`Message`], so everything above is flavour-blind.

use crate::storage::{Error, Result};
use crate::zeo::message::{self, DecodeError, Message, REPLY};
use crate::zeo::pickle;
use rmpv::Value;

/// The encoding of a connection's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// msgpack: `runzeo` with `msgpack true`, and zeoraid.
    Msgpack,
    /// pickle (protocol 3): `runzeo`'s default.
    Pickle,
}

impl Flavour {
    /// The flavour of a server's announcement (pure). We speak version 5
    /// of any server that offers at least 5, in either encoding.
    pub fn from_announcement(addr: &str, announced: &[u8]) -> Result<Flavour> {
        let (flavour, version) = match announced.split_first() {
            Some((b'M', v)) => (Flavour::Msgpack, v),
            Some((b'Z', v)) => (Flavour::Pickle, v),
            _ => {
                return Err(Error::Unsupported(format!(
                    "server {addr} announced an unknown protocol {:?}; is it a ZEO server?",
                    String::from_utf8_lossy(&announced[..announced.len().min(16)])
                )))
            }
        };
        if version >= b"5".as_slice() {
            Ok(flavour)
        } else {
            Err(Error::Unsupported(format!(
                "server {addr} speaks ZEO protocol version {:?}; at least 5 (ZEO 5 or later) is required",
                String::from_utf8_lossy(version)
            )))
        }
    }

    /// What the client answers the announcement with.
    pub fn protocol(self) -> &'static [u8] {
        match self {
            Flavour::Msgpack => b"M5",
            Flavour::Pickle => b"Z5",
        }
    }

    /// One message `(msgid, flags, method, args)`.
    pub fn encode(self, msgid: impl Into<Value>, flags: u8, method: &str, args: &Value) -> Vec<u8> {
        match self {
            Flavour::Msgpack => message::encode(msgid, flags, method, args),
            Flavour::Pickle => pickle::encode(&msgid.into(), flags, method, args),
        }
    }

    /// A one-way call.
    pub fn encode_oneway(self, method: &str, args: Vec<Value>) -> Vec<u8> {
        self.encode(0, message::FLAG_ONEWAY, method, &Value::Array(args))
    }

    /// The heartbeat `(-1, 0, ".reply", None)`.
    pub fn heartbeat(self) -> Vec<u8> {
        self.encode(-1, 0, REPLY, &Value::Nil)
    }

    /// Decode one frame payload.
    pub fn decode(self, payload: &[u8]) -> std::result::Result<Message, DecodeError> {
        match self {
            Flavour::Msgpack => message::decode(payload),
            Flavour::Pickle => pickle::decode(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements() {
        let table: [(&[u8], std::result::Result<Flavour, &str>); 10] = [
            (b"M5", Ok(Flavour::Msgpack)),
            (b"M6", Ok(Flavour::Msgpack)),
            (b"M51", Ok(Flavour::Msgpack)),
            (b"Z5", Ok(Flavour::Pickle)),
            (b"Z6", Ok(Flavour::Pickle)),
            (b"M4", Err("at least 5")),
            (b"Z4", Err("at least 5")),
            (b"M310", Err("at least 5")),
            (b"", Err("unknown protocol")),
            (b"HTTP/1.1", Err("unknown protocol")),
        ];
        for (p, want) in table {
            match (Flavour::from_announcement("h:1", p), want) {
                (Ok(f), Ok(w)) => assert_eq!(f, w, "{p:?}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{p:?}: {e}"),
                (r, _) => panic!("{p:?}: unexpected {r:?}"),
            }
        }
        assert_eq!(Flavour::Pickle.protocol(), b"Z5");
        assert_eq!(Flavour::Msgpack.protocol(), b"M5");
    }

    #[test]
    fn both_flavours_round_trip_the_same_message() {
        let args = Value::Array(vec![Value::Binary(vec![1; 8]), Value::from("x")]);
        for f in [Flavour::Msgpack, Flavour::Pickle] {
            let m = f
                .decode(&f.encode(7, 0, "loadBefore", &args))
                .expect("decodes");
            assert_eq!(
                (m.msgid_i64(), m.flags, m.method.as_str()),
                (Some(7), 0, "loadBefore")
            );
            assert_eq!(m.args, args);
            let hb = f.decode(&f.heartbeat()).expect("decodes");
            assert!(hb.is_heartbeat());
            let one = f
                .decode(&f.encode_oneway("storea", vec![]))
                .expect("decodes");
            assert!(one.is_oneway());
        }
    }
}
