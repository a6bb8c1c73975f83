//! Values shaped as ZEO's Python side sends and expects them: conflict
//! dicts, oid lists, transaction extensions (msgpack maps), undo-log and
//! history entries, the `undoInfo` filter, and JSON-to-msgpack conversion.

use crate::storage::timestamp;
use crate::storage::{undo_id, Conflict, Data, Error, Oid, Result, Tid, TxnMeta, UndoEntry};
use crate::zeo::message::{arg, bin, oid_value, tid_value};
use rmpv::Value;
use std::sync::Arc;

pub(crate) fn conflict_value(c: &Conflict) -> Value {
    Value::Map(vec![
        (Value::from("oid"), oid_value(c.oid)),
        (
            Value::from("serials"),
            Value::Array(vec![tid_value(c.committed), tid_value(c.read)]),
        ),
        (Value::from("data"), bin(&c.data)),
    ])
}

pub(crate) fn oids_value(oids: &[Oid]) -> Value {
    Value::Array(oids.iter().map(|o| oid_value(*o)).collect())
}

pub(crate) fn ext_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Map(m) if !m.is_empty() => {
            let mut out = Vec::new();
            let _ = rmpv::encode::write_value(&mut out, v);
            out
        }
        _ => Vec::new(),
    }
}

/// The extension mapping as a msgpack map (empty map when none).
pub(crate) fn ext_value(ext: &[u8]) -> Value {
    if ext.is_empty() {
        return Value::Map(vec![]);
    }
    let mut cur = ext;
    match rmpv::decode::read_value(&mut cur) {
        Ok(v @ Value::Map(_)) => v,
        _ => Value::Map(vec![]),
    }
}

pub(crate) fn data_arg(v: &Value, what: &str) -> Result<Data> {
    Ok(Arc::from(arg::bytes(v, what)?))
}

/// The transaction named by an undo id, or an UndoError saying why not.
pub(crate) fn parse_undo_id(b: &[u8]) -> Result<Tid> {
    undo_id::parse_undo_id(b).ok_or_else(|| Error::Undo {
        message: format!(
            "undo id {:?} is not a transaction id",
            String::from_utf8_lossy(b)
        ),
        oid: None,
    })
}

pub(crate) fn txn_meta_entries(meta: &TxnMeta) -> Vec<(Value, Value)> {
    let mut v = vec![
        (Value::from("user_name"), bin(&meta.user)),
        (Value::from("description"), bin(&meta.description)),
    ];
    if let Value::Map(ext) = ext_value(&meta.extension) {
        v.extend(ext);
    }
    v
}

pub(crate) fn undo_entry_value(e: &UndoEntry) -> Value {
    let mut m = vec![
        (Value::from("id"), bin(&undo_id::undo_id(e.tid))),
        (Value::from("time"), Value::F64(timestamp::time_time(e.tid))),
    ];
    m.extend(txn_meta_entries(&e.meta));
    Value::Map(m)
}

/// Does an undo entry match an `undoInfo` specification (every key equal)?
pub(crate) fn matches_spec(entry: &Value, spec: &Value) -> bool {
    let (Value::Map(e), Value::Map(s)) = (entry, spec) else {
        return true;
    };
    s.iter()
        .all(|(k, v)| e.iter().any(|(ek, ev)| ek == k && ev == v))
}

/// `last < 0` means "-last entries from first" (ZODB's undoLog convention).
pub(crate) fn undo_range(first: i64, last: i64) -> (usize, usize) {
    let first = first.max(0);
    let last = if last < 0 { first - last } else { last };
    (first as usize, last.max(first) as usize)
}

pub(crate) fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(0.0))),
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_undo_ids_are_undo_errors() {
        assert!(matches!(
            parse_undo_id(b"not an id"),
            Err(Error::Undo { .. })
        ));
        assert_eq!(parse_undo_id(b"A9XiwQAAAAA="), Ok(Tid(0x03d5e2c100000000)));
    }

    #[test]
    fn undo_range_table() {
        for (first, last, want) in [
            (0, -20, (0, 20)),
            (5, -20, (5, 25)),
            (0, 10, (0, 10)),
            (10, 5, (10, 10)),
        ] {
            assert_eq!(undo_range(first, last), want, "{first} {last}");
        }
    }
}
