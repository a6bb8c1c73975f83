//! ZEO 5 messages in the msgpack ("M5") flavour.
//!
//! Every frame after the handshake is a msgpack array
//! `[msgid, flags, method, args]`. Replies use method `".reply"`; flags 2 on a
//! reply marks an error whose result is `[class_name, args_or_dict]`, the
//! shape stock clients rebuild exceptions from. `flags` 1 (or msgpack `true`,
//! as Python sends it) marks a one-way call. msgid −1 is a heartbeat.
//!
//! This module also owns the mapping between [`storage::Error`] and ZODB
//! exception class names, in both directions.

use crate::storage::{self, Oid, Tid};
use rmpv::Value;

/// Flags of a reply carrying an exception.
pub const FLAG_ERROR: u8 = 2;
/// Flags of a one-way call.
pub const FLAG_ONEWAY: u8 = 1;
/// The reply method name.
pub const REPLY: &str = ".reply";

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Usually an integer; ZEO's client uses `(oid, tid)` for `loadBefore`
    /// so it can collapse duplicate loads, so any value is echoed back.
    pub msgid: Value,
    pub flags: u8,
    pub method: String,
    pub args: Value,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("malformed msgpack: {0}")]
    Msgpack(String),
    #[error("message is not [msgid, flags, method, args]: {0}")]
    Shape(String),
    #[error("malformed or refused pickle: {0}")]
    Pickle(String),
}

impl Message {
    /// The msgid as an integer, when it is one.
    pub fn msgid_i64(&self) -> Option<i64> {
        match &self.msgid {
            Value::Integer(i) => i.as_i64(),
            _ => None,
        }
    }

    /// A heartbeat (`msgid` −1).
    pub fn is_heartbeat(&self) -> bool {
        self.msgid_i64() == Some(-1)
    }

    pub fn is_oneway(&self) -> bool {
        self.flags & FLAG_ONEWAY != 0 && self.method != REPLY
    }

    /// Arguments as a slice (a non-array `args` is treated as one argument).
    pub fn arg_list(&self) -> &[Value] {
        match &self.args {
            Value::Array(a) => a,
            Value::Nil => &[],
            other => std::slice::from_ref(other),
        }
    }
}

/// Decode one frame payload.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let mut cur = payload;
    let v = rmpv::decode::read_value(&mut cur).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    if !cur.is_empty() {
        return Err(DecodeError::Msgpack(format!(
            "{} trailing bytes after the message",
            cur.len()
        )));
    }
    from_value(v)
}

/// A decoded message tuple `(msgid, flags, method, args)`, whichever
/// flavour it came in ([`crate::zeo::pickle::decode`] too), as a [`Message`].
pub fn from_value(v: Value) -> Result<Message, DecodeError> {
    let mut items = match v {
        Value::Array(items) if items.len() == 4 => items,
        other => return Err(DecodeError::Shape(short(&other))),
    };
    let args = items.pop().unwrap_or(Value::Nil);
    let method = match items.pop() {
        Some(Value::String(s)) => s
            .into_str()
            .ok_or_else(|| DecodeError::Shape("method is not UTF-8".into()))?,
        Some(Value::Binary(b)) => {
            String::from_utf8(b).map_err(|_| DecodeError::Shape("method is not UTF-8".into()))?
        }
        other => return Err(DecodeError::Shape(format!("method {:?}", other))),
    };
    let flags = match items.pop() {
        Some(Value::Boolean(b)) => b as u8,
        Some(Value::Integer(i)) => i
            .as_u64()
            .and_then(|f| u8::try_from(f).ok())
            .ok_or_else(|| DecodeError::Shape(format!("flags {i}")))?,
        Some(Value::Nil) => 0,
        other => return Err(DecodeError::Shape(format!("flags {:?}", other))),
    };
    let msgid = items
        .pop()
        .ok_or_else(|| DecodeError::Shape("no msgid".into()))?;
    Ok(Message {
        msgid,
        flags,
        method,
        args,
    })
}

/// A value rendered for an error message, cut to 100 bytes.
pub fn short(v: &Value) -> String {
    let mut s = format!("{v}");
    if s.len() > 100 {
        let mut cut = 100;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Encode a message; `oneway_bool` writes flags as msgpack `true` as Python does.
pub fn encode(msgid: impl Into<Value>, flags: u8, method: &str, args: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_array_len(&mut out, 4);
    let _ = rmpv::encode::write_value(&mut out, &msgid.into());
    if flags == FLAG_ONEWAY && method != REPLY {
        let _ = rmp::encode::write_bool(&mut out, true);
    } else {
        let _ = rmp::encode::write_uint(&mut out, flags as u64);
    }
    let _ = rmp::encode::write_str(&mut out, method);
    let _ = rmpv::encode::write_value(&mut out, args);
    out
}

/// A reply frame payload.
pub fn encode_reply(msgid: &Value, result: &Value) -> Vec<u8> {
    encode(msgid.clone(), 0, REPLY, result)
}

/// An error reply frame payload.
pub fn encode_error(msgid: &Value, err: &storage::Error) -> Vec<u8> {
    let (class, args) = error_to_wire(err);
    encode(
        msgid.clone(),
        FLAG_ERROR,
        REPLY,
        &Value::Array(vec![Value::from(class), args]),
    )
}

/// A one-way call (server → client: `invalidateTransaction`, `info`).
pub fn encode_oneway(method: &str, args: Vec<Value>) -> Vec<u8> {
    encode(0, FLAG_ONEWAY, method, &Value::Array(args))
}

/// The heartbeat a client sends: `[-1, 0, ".reply", nil]`.
pub fn heartbeat() -> Vec<u8> {
    encode(-1, 0, REPLY, &Value::Nil)
}

pub fn bin(b: &[u8]) -> Value {
    Value::Binary(b.to_vec())
}
pub fn oid_value(o: Oid) -> Value {
    Value::Binary(o.to_bytes().to_vec())
}
pub fn tid_value(t: Tid) -> Value {
    Value::Binary(t.to_bytes().to_vec())
}
pub fn opt_tid_value(t: Option<Tid>) -> Value {
    t.map(tid_value).unwrap_or(Value::Nil)
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

const POS: &str = "ZODB.POSException.";

/// The ZODB exception class name and constructor args/dict for an error,
/// shaped so `ZEO.asyncio.client`'s exception factories rebuild it.
pub fn error_to_wire(err: &storage::Error) -> (String, Value) {
    use storage::Error as E;
    let msg = |s: &str| Value::Array(vec![Value::from(s)]);
    match err {
        E::PosKey(oid) => (
            format!("{POS}POSKeyError"),
            Value::Array(vec![oid_value(*oid)]),
        ),
        E::Conflict {
            oid,
            committed,
            read,
            message,
            read_conflict,
            class_name,
        } => (
            format!(
                "{POS}{}",
                if *read_conflict {
                    "ReadConflictError"
                } else {
                    "ConflictError"
                }
            ),
            map(vec![
                ("message", Value::from(message.as_str())),
                ("oid", oid_value(*oid)),
                (
                    "serials",
                    Value::Array(vec![tid_value(*committed), tid_value(*read)]),
                ),
                (
                    "class_name",
                    class_name.as_deref().map(Value::from).unwrap_or(Value::Nil),
                ),
            ]),
        ),
        E::ReadOnly => (format!("{POS}ReadOnlyError"), Value::Array(vec![])),
        E::Transaction(m) => (format!("{POS}StorageTransactionError"), msg(m)),
        // Stock msgpack clients can only rebuild the UndoError subclass
        // MultipleUndoErrors (ZEO's `exc_factories`); a plain UndoError would
        // reach the application as an opaque ServerException.
        E::Undo { message, oid } => (
            format!("{POS}MultipleUndoErrors"),
            map(vec![(
                "_errs",
                // Each entry is UndoError's (reason, oid) constructor args.
                Value::Array(vec![Value::Array(vec![
                    Value::from(message.as_str()),
                    oid.map(oid_value).unwrap_or(Value::Nil),
                ])]),
            )]),
        ),
        E::Value(m) => ("builtins.ValueError".into(), msg(m)),
        E::Unsupported(m) => (format!("{POS}Unsupported"), msg(m)),
        E::Disconnected(m) => ("ZEO.Exceptions.ClientDisconnected".into(), msg(m)),
        E::Io(m) => (format!("{POS}StorageSystemError"), msg(m)),
        E::Remote { class, message } => (class.clone(), msg(message)),
    }
}

fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Map(m) => m
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Rebuild an error from a server's error reply `[class_name, args]`.
pub fn error_from_wire(result: &Value) -> storage::Error {
    use storage::Error as E;
    let (class, args) = match result {
        Value::Array(a) if a.len() == 2 => (a[0].as_str().unwrap_or("?").to_string(), &a[1]),
        other => {
            return E::Remote {
                class: "?".into(),
                message: short(other),
            }
        }
    };
    let first_bytes = || match args {
        Value::Array(a) => a.first().and_then(|v| v.as_slice()).map(|b| b.to_vec()),
        _ => None,
    };
    let text = || match args {
        Value::Array(a) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.as_str().unwrap_or("").to_string(),
                other => format!("{other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => short(other),
    };
    let name = class.rsplit('.').next().unwrap_or("").to_string();
    match name.as_str() {
        "POSKeyError" => match first_bytes().and_then(|b| Oid::from_slice(&b)) {
            Some(oid) => E::PosKey(oid),
            None => E::PosKey(Oid::ZERO),
        },
        "ConflictError" | "ReadConflictError" => {
            let serials = lookup(args, "serials");
            let tid_at = |i: usize| match serials {
                Some(Value::Array(a)) => a
                    .get(i)
                    .and_then(|v| v.as_slice())
                    .and_then(Tid::from_slice)
                    .unwrap_or(Tid::ZERO),
                _ => Tid::ZERO,
            };
            E::Conflict {
                oid: lookup(args, "oid")
                    .and_then(|v| v.as_slice())
                    .and_then(Oid::from_slice)
                    .unwrap_or(Oid::ZERO),
                committed: tid_at(0),
                read: tid_at(1),
                message: lookup(args, "message")
                    .and_then(|v| v.as_str())
                    .unwrap_or("database conflict error")
                    .to_string(),
                read_conflict: name == "ReadConflictError",
                class_name: lookup(args, "class_name")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            }
        }
        "ReadOnlyError" => E::ReadOnly,
        "StorageTransactionError" => E::Transaction(text()),
        "MultipleUndoErrors" => {
            let first = match lookup(args, "_errs") {
                Some(Value::Array(errs)) => errs.first(),
                _ => None,
            };
            match first {
                Some(Value::Array(e)) => E::Undo {
                    message: e
                        .first()
                        .and_then(|m| m.as_str())
                        .unwrap_or("undo error")
                        .to_string(),
                    oid: e
                        .get(1)
                        .and_then(|o| o.as_slice())
                        .and_then(Oid::from_slice),
                },
                _ => E::Undo {
                    message: text(),
                    oid: None,
                },
            }
        }
        "UndoError" => E::Undo {
            message: lookup(args, "_reason")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(text),
            oid: lookup(args, "_oid")
                .and_then(|v| v.as_slice())
                .and_then(Oid::from_slice),
        },
        "ValueError" => E::Value(text()),
        "Unsupported" => E::Unsupported(text()),
        "ClientDisconnected" => E::Disconnected(text()),
        _ => E::Remote {
            class,
            message: text(),
        },
    }
}

/// Argument accessors that turn a bad argument into a `ValueError`-style error.
pub mod arg {
    use super::*;
    use storage::Error;

    fn bad(what: &str, v: &Value) -> Error {
        Error::Value(format!("argument {what} has the wrong type: {}", short(v)))
    }

    pub fn bytes<'a>(v: &'a Value, what: &str) -> Result<&'a [u8], Error> {
        match v {
            Value::Binary(b) => Ok(b),
            Value::String(s) => Ok(s.as_bytes()),
            other => Err(bad(what, other)),
        }
    }
    pub fn oid(v: &Value, what: &str) -> Result<Oid, Error> {
        Oid::from_slice(bytes(v, what)?).ok_or_else(|| bad(what, v))
    }
    pub fn tid(v: &Value, what: &str) -> Result<Tid, Error> {
        Tid::from_slice(bytes(v, what)?).ok_or_else(|| bad(what, v))
    }
    /// A serial where `None` means "new object" (ZODB passes `None` for the
    /// first revision; storages treat it as z64).
    pub fn serial(v: &Value, what: &str) -> Result<Tid, Error> {
        match v {
            Value::Nil => Ok(Tid::ZERO),
            other => tid(other, what),
        }
    }
    pub fn opt_tid(v: &Value, what: &str) -> Result<Option<Tid>, Error> {
        match v {
            Value::Nil => Ok(None),
            other => tid(other, what).map(Some),
        }
    }
    pub fn opt_oid(v: &Value, what: &str) -> Result<Option<Oid>, Error> {
        match v {
            Value::Nil => Ok(None),
            other => oid(other, what).map(Some),
        }
    }
    pub fn int(v: &Value, what: &str) -> Result<i64, Error> {
        match v {
            Value::Integer(i) => i.as_i64().ok_or_else(|| bad(what, v)),
            Value::F64(f) => Ok(*f as i64),
            Value::Boolean(b) => Ok(*b as i64),
            Value::Nil => Ok(0),
            other => Err(bad(what, other)),
        }
    }
    pub fn float(v: &Value, what: &str) -> Result<f64, Error> {
        match v {
            Value::Integer(i) => i.as_f64().ok_or_else(|| bad(what, v)),
            Value::F64(f) => Ok(*f),
            Value::F32(f) => Ok(*f as f64),
            other => Err(bad(what, other)),
        }
    }
    pub fn truthy(v: &Value) -> bool {
        match v {
            Value::Nil => false,
            Value::Boolean(b) => *b,
            Value::Integer(i) => i.as_i64() != Some(0),
            Value::String(s) => !s.as_bytes().is_empty(),
            Value::Binary(b) => !b.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Map(m) => !m.is_empty(),
            _ => true,
        }
    }
    pub fn string(v: &Value, what: &str) -> Result<String, Error> {
        match v {
            Value::String(s) => Ok(s.as_str().unwrap_or_default().to_string()),
            Value::Binary(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => Err(bad(what, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::Error as E;

    #[test]
    fn round_trip_python_shapes() {
        // Python sends flags as booleans; errors use flags 2.
        let cases = vec![
            (
                5,
                0,
                "loadBefore",
                Value::Array(vec![bin(&[0; 8]), bin(&[0xff; 8])]),
            ),
            (
                0,
                1,
                "storea",
                Value::Array(vec![
                    bin(&[1; 8]),
                    bin(&[0; 8]),
                    bin(b"data"),
                    Value::from(42),
                ]),
            ),
            (-1, 0, REPLY, Value::Nil),
            (
                7,
                2,
                REPLY,
                Value::Array(vec![Value::from("x"), Value::Array(vec![])]),
            ),
        ];
        for (msgid, flags, method, args) in cases {
            let msgid = Value::from(msgid);
            let payload = encode(msgid.clone(), flags, method, &args);
            let m = decode(&payload).expect("decodes");
            assert_eq!(
                m,
                Message {
                    msgid,
                    flags,
                    method: method.to_string(),
                    args
                }
            );
        }
    }

    #[test]
    fn bool_flags_decode() {
        let mut payload = Vec::new();
        rmp::encode::write_array_len(&mut payload, 4).unwrap();
        rmp::encode::write_sint(&mut payload, 3).unwrap();
        rmp::encode::write_bool(&mut payload, false).unwrap();
        rmp::encode::write_str(&mut payload, "ping").unwrap();
        rmp::encode::write_array_len(&mut payload, 0).unwrap();
        let m = decode(&payload).unwrap();
        assert_eq!(
            (m.msgid_i64(), m.flags, m.method.as_str()),
            (Some(3), 0, "ping")
        );
        // ZEO's client uses (oid, tid) as the msgid of loadBefore.
        let id = Value::Array(vec![bin(&[0; 8]), bin(&[1; 8])]);
        let m = decode(&encode(id.clone(), 0, "loadBefore", &Value::Array(vec![]))).unwrap();
        assert_eq!(m.msgid, id);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xc1],                                     // never-used msgpack byte
            vec![0x94, 0x01],                               // truncated array
            vec![0x93, 1, 0, 0xa1, b'x'],                   // three elements
            vec![0x94, 0x01, 0xa1, b'x', 0xa1, b'x', 0x90], // flags not int
            encode(1, 0, "x", &Value::Nil)
                .into_iter()
                .chain([0])
                .collect(), // trailing
        ];
        for c in cases {
            assert!(decode(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn errors_round_trip_through_wire_shape() {
        let errs = vec![
            E::PosKey(Oid(7)),
            E::Conflict {
                oid: Oid(1),
                committed: Tid(3),
                read: Tid(2),
                message: "database conflict error".into(),
                read_conflict: false,
                class_name: Some("BTrees.Length.Length".into()),
            },
            E::Conflict {
                oid: Oid(1),
                committed: Tid(3),
                read: Tid(2),
                message: "database read conflict error".into(),
                read_conflict: true,
                class_name: None,
            },
            E::ReadOnly,
            E::Transaction("no transaction".into()),
            E::Undo {
                message: "Some data were modified by a later transaction".into(),
                oid: Some(Oid(9)),
            },
            E::Value("bad".into()),
            E::Unsupported("blobs are not supported yet".into()),
        ];
        for e in errs {
            let (class, args) = error_to_wire(&e);
            let back = error_from_wire(&Value::Array(vec![Value::from(class.as_str()), args]));
            assert_eq!(back, e, "{class}");
        }
    }

    #[test]
    fn class_names_match_zeo_factories() {
        let table = [
            (E::PosKey(Oid(1)), "ZODB.POSException.POSKeyError"),
            (E::ReadOnly, "ZODB.POSException.ReadOnlyError"),
            (
                E::Transaction(String::new()),
                "ZODB.POSException.StorageTransactionError",
            ),
            (
                E::Undo {
                    message: "x".into(),
                    oid: None,
                },
                "ZODB.POSException.MultipleUndoErrors",
            ),
        ];
        for (e, name) in table {
            assert_eq!(error_to_wire(&e).0, name);
        }
    }
}
