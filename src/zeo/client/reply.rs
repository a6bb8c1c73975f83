//! The server's replies parsed into the storage value types: `parse_*` for
//! each reply shape (`loadBefore`, `history`, `undoLog`, `vote`, the
//! iterators, `new_oids`, `invalidateTransaction`, size info), the small
//! helpers they share (`get`, `oid_of`, `tid_of`, ...; a wrong shape is
//! [`malformed`]), and transaction extensions between their msgpack bytes
//! ([`encode_ext`], [`decode_ext`]) and ZEO's dicts. Pure functions, no I/O;
//! `link`, `connect` and `storage` call them.

use crate::storage::undo_id::parse_undo_id;
use crate::storage::{
    Conflict, Data, DataRecord, Error, HistoryEntry, Loaded, Oid, Result, SizeInfo, Tid, TxnMeta,
    UndoEntry,
};
use crate::zeo::message::short;
use rmpv::Value;
use std::sync::Arc;

fn malformed(what: &str, v: &Value) -> Error {
    Error::Value(format!("malformed {what} from the server: {}", short(v)))
}

pub(super) fn get<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn oid_of(v: &Value, what: &str) -> Result<Oid> {
    v.as_slice()
        .and_then(Oid::from_slice)
        .ok_or_else(|| malformed(what, v))
}

pub(super) fn tid_of(v: &Value, what: &str) -> Result<Tid> {
    v.as_slice()
        .and_then(Tid::from_slice)
        .ok_or_else(|| malformed(what, v))
}

fn opt_tid_of(v: &Value, what: &str) -> Result<Option<Tid>> {
    match v {
        Value::Nil => Ok(None),
        other => tid_of(other, what).map(Some),
    }
}

pub(super) fn data_of(v: &Value, what: &str) -> Result<Data> {
    v.as_slice()
        .map(Arc::from)
        .ok_or_else(|| malformed(what, v))
}

fn opt_data_of(v: &Value, what: &str) -> Result<Option<Data>> {
    match v {
        Value::Nil => Ok(None),
        other => data_of(other, what).map(Some),
    }
}

fn bytes_or_empty(v: Option<&Value>) -> Vec<u8> {
    v.and_then(|v| v.as_slice()).unwrap_or_default().to_vec()
}

pub(super) fn int_of(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Integer(i) => i.as_i64().ok_or_else(|| malformed(what, v)),
        Value::F64(f) if f.is_finite() => Ok(*f as i64),
        other => Err(malformed(what, other)),
    }
}

fn array_of<'a>(v: &'a Value, what: &str) -> Result<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(&[]),
        other => Err(malformed(what, other)),
    }
}

/// The msgpack encoding of extension entries (empty for no entries), the
/// form [`TxnMeta::extension`] carries.
pub fn encode_ext(entries: Vec<(Value, Value)>) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = rmpv::encode::write_value(&mut out, &Value::Map(entries));
    out
}

/// [`TxnMeta::extension`] back into a msgpack map (empty map for no bytes).
pub fn decode_ext(ext: &[u8]) -> Result<Value> {
    if ext.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    let mut cur = ext;
    match rmpv::decode::read_value(&mut cur) {
        Ok(v @ Value::Map(_)) if cur.is_empty() => Ok(v),
        _ => Err(Error::Value(
            "the transaction extension is not the msgpack encoding of a map".into(),
        )),
    }
}

/// Metadata from a history/undo dict: `user_name`, `description`, and every
/// key not in `known` as the extension.
fn meta_from_dict(entries: &[(Value, Value)], known: &[&str]) -> TxnMeta {
    let ext: Vec<(Value, Value)> = entries
        .iter()
        .filter(|(k, _)| !k.as_str().map(|k| known.contains(&k)).unwrap_or(false))
        .cloned()
        .collect();
    TxnMeta {
        user: bytes_or_empty(get(entries, "user_name")),
        description: bytes_or_empty(get(entries, "description")),
        extension: encode_ext(ext),
    }
}

/// Extension as the iterator sends it: a map (FileStorage decodes it for us).
fn ext_from_value(v: &Value) -> Vec<u8> {
    match v {
        Value::Map(m) => encode_ext(m.clone()),
        Value::Nil => Vec::new(),
        other => {
            log::debug!(
                "ignoring a transaction extension that is not a map: {}",
                short(other)
            );
            Vec::new()
        }
    }
}

/// `loadBefore` reply: `None` or `[data, start, end|None]`.
pub fn parse_loaded(v: &Value) -> Result<Option<Loaded>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 3 => Ok(Some(Loaded {
            data: data_of(&a[0], "loadBefore data")?,
            start: tid_of(&a[1], "loadBefore start tid")?,
            end: opt_tid_of(&a[2], "loadBefore end tid")?,
        })),
        other => Err(malformed("loadBefore reply", other)),
    }
}

/// `history` reply: a list of dicts `{tid, time, user_name, description, size, ...ext}`.
pub fn parse_history(v: &Value) -> Result<Vec<HistoryEntry>> {
    const KNOWN: &[&str] = &["tid", "time", "user_name", "description", "size", "version"];
    array_of(v, "history reply")?
        .iter()
        .map(|e| {
            let Value::Map(m) = e else {
                return Err(malformed("history entry", e));
            };
            let tid = get(m, "tid").ok_or_else(|| malformed("history entry", e))?;
            let size = match get(m, "size") {
                Some(s) => int_of(s, "history size")?.max(0) as u64,
                None => 0,
            };
            Ok(HistoryEntry {
                tid: tid_of(tid, "history tid")?,
                meta: meta_from_dict(m, KNOWN),
                size,
            })
        })
        .collect()
}

/// `undoLog` reply: a list of dicts `{id, time, user_name, description, ...ext}`.
pub fn parse_undo_log(v: &Value) -> Result<Vec<UndoEntry>> {
    const KNOWN: &[&str] = &["id", "time", "user_name", "description", "size"];
    array_of(v, "undoLog reply")?
        .iter()
        .map(|e| {
            let Value::Map(m) = e else {
                return Err(malformed("undoLog entry", e));
            };
            let tid = get(m, "id")
                .and_then(|id| id.as_slice())
                .and_then(parse_undo_id)
                .ok_or_else(|| malformed("undoLog id", e))?;
            Ok(UndoEntry {
                tid,
                meta: meta_from_dict(m, KNOWN),
            })
        })
        .collect()
}

/// `vote` reply: conflict dicts `{oid, serials: [committed, read], data}` and
/// oids the server resolved (undo).
pub fn parse_vote(v: &Value) -> Result<(Vec<Conflict>, Vec<Oid>)> {
    let mut conflicts = Vec::new();
    let mut resolved = Vec::new();
    for item in array_of(v, "vote reply")? {
        match item {
            Value::Map(m) => {
                let oid = get(m, "oid").ok_or_else(|| malformed("conflict", item))?;
                let serials = match get(m, "serials") {
                    Some(Value::Array(s)) if s.len() == 2 => s,
                    _ => return Err(malformed("conflict serials", item)),
                };
                conflicts.push(Conflict {
                    oid: oid_of(oid, "conflict oid")?,
                    committed: tid_of(&serials[0], "conflict serial")?,
                    read: tid_of(&serials[1], "conflict serial")?,
                    data: match get(m, "data") {
                        Some(Value::Nil) | None => Arc::from(&[][..]),
                        Some(d) => data_of(d, "conflict data")?,
                    },
                });
            }
            other => resolved.push(oid_of(other, "resolved oid")?),
        }
    }
    Ok((conflicts, resolved))
}

/// `iterator_next` reply: `[tid, status, user, description, extension]` or `None`.
pub fn parse_txn_header(v: &Value) -> Result<Option<(Tid, u8, TxnMeta)>> {
    let a = match v {
        Value::Nil => return Ok(None),
        Value::Array(a) if a.len() == 5 => a,
        other => return Err(malformed("iterator_next reply", other)),
    };
    let status = a[1]
        .as_slice()
        .and_then(|s| s.first().copied())
        .unwrap_or(b' ');
    Ok(Some((
        tid_of(&a[0], "iterator tid")?,
        status,
        TxnMeta {
            user: bytes_or_empty(Some(&a[2])),
            description: bytes_or_empty(Some(&a[3])),
            extension: ext_from_value(&a[4]),
        },
    )))
}

/// `iterator_record_next` reply: `[oid, tid, data|None, data_txn|None]` or `None`.
pub fn parse_data_record(v: &Value) -> Result<Option<DataRecord>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 4 => Ok(Some(DataRecord {
            oid: oid_of(&a[0], "record oid")?,
            tid: tid_of(&a[1], "record tid")?,
            data: opt_data_of(&a[2], "record data")?,
            data_txn: opt_tid_of(&a[3], "record data_txn")?,
        })),
        other => Err(malformed("iterator_record_next reply", other)),
    }
}

/// A current record as `record_iternext` returns it: (oid, tid, data, next oid).
pub type CurrentRecord = (Oid, Tid, Data, Option<Oid>);

/// `record_iternext` reply: `[oid, tid, data, next_oid|None]` (or `None`).
pub fn parse_record_iternext(v: &Value) -> Result<Option<CurrentRecord>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 4 => Ok(Some((
            oid_of(&a[0], "record_iternext oid")?,
            tid_of(&a[1], "record_iternext tid")?,
            data_of(&a[2], "record_iternext data")?,
            match &a[3] {
                Value::Nil => None,
                n => Some(oid_of(n, "record_iternext next oid")?),
            },
        ))),
        other => Err(malformed("record_iternext reply", other)),
    }
}

/// `new_oids` reply: a list of oids.
pub fn parse_oids(v: &Value) -> Result<Vec<Oid>> {
    array_of(v, "new_oids reply")?
        .iter()
        .map(|o| oid_of(o, "new oid"))
        .collect()
}

/// `invalidateTransaction(tid, oids)` arguments.
pub fn parse_invalidation(args: &[Value]) -> Result<(Tid, Vec<Oid>)> {
    match args {
        [tid, oids] => Ok((
            tid_of(tid, "invalidation tid")?,
            array_of(oids, "invalidated oids")?
                .iter()
                .map(|o| oid_of(o, "invalidated oid"))
                .collect::<Result<_>>()?,
        )),
        _ => Err(malformed(
            "invalidateTransaction arguments",
            &Value::Array(args.to_vec()),
        )),
    }
}

/// `get_size_info` / `get_info` dict: `length` objects, `size` bytes.
pub fn parse_size_info(v: &Value) -> SizeInfo {
    let n = |k| match v {
        Value::Map(m) => get(m, k)
            .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(0),
        _ => 0,
    };
    SizeInfo {
        objects: n("length"),
        bytes: n("size"),
    }
}

pub(super) fn status_str(status: u8) -> String {
    if status.is_ascii_graphic() || status == b' ' {
        (status as char).to_string()
    } else {
        " ".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::undo_id::undo_id;
    use crate::zeo::client::tests::{map, oidv, s, tidv};
    use crate::zeo::message;

    #[test]
    fn ext_round_trip() {
        assert_eq!(decode_ext(b"").unwrap(), Value::Map(vec![]));
        let ext = encode_ext(vec![(s("k"), s("v"))]);
        assert_eq!(decode_ext(&ext).unwrap(), map(vec![("k", s("v"))]));
        assert!(encode_ext(vec![]).is_empty());
        assert!(decode_ext(&[0xc1]).is_err());
        assert!(decode_ext(&[0x01]).is_err()); // an int, not a map
    }

    #[test]
    fn loaded_shapes() {
        let table = vec![
            (Value::Nil, Ok(None)),
            (
                Value::Array(vec![message::bin(b"d"), tidv(1), Value::Nil]),
                Ok(Some(Loaded {
                    data: Arc::from(&b"d"[..]),
                    start: Tid(1),
                    end: None,
                })),
            ),
            (
                Value::Array(vec![message::bin(b"d"), tidv(1), tidv(2)]),
                Ok(Some(Loaded {
                    data: Arc::from(&b"d"[..]),
                    start: Tid(1),
                    end: Some(Tid(2)),
                })),
            ),
            (Value::Array(vec![message::bin(b"d"), tidv(1)]), Err(())),
            (
                Value::Array(vec![Value::from(1), tidv(1), Value::Nil]),
                Err(()),
            ),
            (
                Value::Array(vec![message::bin(b"d"), message::bin(b"short"), Value::Nil]),
                Err(()),
            ),
            (s("x"), Err(())),
        ];
        for (v, want) in table {
            assert_eq!(parse_loaded(&v).map_err(|_| ()), want, "{v}");
        }
    }

    #[test]
    fn history_and_undo_shapes() {
        let h = Value::Array(vec![
            map(vec![
                ("time", Value::F64(1.5)),
                ("user_name", message::bin(b"alice")),
                ("description", message::bin(b"first")),
                ("tid", tidv(5)),
                ("size", Value::from(12)),
                ("note", s("x")),
            ]),
            map(vec![
                ("tid", tidv(4)),
                ("version", s("")),
                ("user_name", s("bob")),
            ]),
        ]);
        let got = parse_history(&h).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].tid, Tid(5));
        assert_eq!(got[0].size, 12);
        assert_eq!(got[0].meta.user, b"alice");
        assert_eq!(got[0].meta.description, b"first");
        assert_eq!(
            decode_ext(&got[0].meta.extension).unwrap(),
            map(vec![("note", s("x"))])
        );
        assert_eq!(got[1].meta.user, b"bob");
        assert!(got[1].meta.extension.is_empty());
        assert!(parse_history(&Value::Nil).unwrap().is_empty());
        assert!(parse_history(&Value::Array(vec![map(vec![("size", Value::from(1))])])).is_err());
        assert!(parse_history(&Value::Array(vec![s("x")])).is_err());

        let u = Value::Array(vec![map(vec![
            ("id", message::bin(&undo_id(Tid(7)))),
            ("time", Value::F64(2.0)),
            ("user_name", message::bin(b"")),
            ("description", message::bin(b"d")),
            ("x", Value::from(1)),
        ])]);
        let got = parse_undo_log(&u).unwrap();
        assert_eq!(got[0].tid, Tid(7));
        assert_eq!(got[0].meta.description, b"d");
        assert_eq!(
            decode_ext(&got[0].meta.extension).unwrap(),
            map(vec![("x", Value::from(1))])
        );
        assert!(parse_undo_log(&Value::Array(vec![map(vec![("id", s("nope"))])])).is_err());
        assert!(parse_undo_log(&Value::Array(vec![])).unwrap().is_empty());
    }

    #[test]
    fn vote_shapes() {
        let conflict = map(vec![
            ("oid", oidv(3)),
            ("serials", Value::Array(vec![tidv(9), tidv(8)])),
            ("data", message::bin(b"mine")),
        ]);
        let (c, r) = parse_vote(&Value::Array(vec![conflict.clone()])).unwrap();
        assert_eq!(
            c,
            vec![Conflict {
                oid: Oid(3),
                committed: Tid(9),
                read: Tid(8),
                data: Arc::from(&b"mine"[..])
            }]
        );
        assert!(r.is_empty());
        let (c, r) = parse_vote(&Value::Array(vec![oidv(1), oidv(2)])).unwrap();
        assert!(c.is_empty());
        assert_eq!(r, vec![Oid(1), Oid(2)]);
        assert_eq!(parse_vote(&Value::Nil).unwrap(), (vec![], vec![]));
        for bad in [
            s("x"),
            Value::Array(vec![map(vec![("oid", oidv(3))])]),
            Value::Array(vec![map(vec![
                ("oid", oidv(3)),
                ("serials", Value::Array(vec![tidv(1)])),
            ])]),
            Value::Array(vec![Value::from(5)]),
        ] {
            assert!(parse_vote(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iterator_shapes() {
        let h = Value::Array(vec![
            tidv(3),
            s("p"),
            message::bin(b"u"),
            message::bin(b"d"),
            map(vec![("a", Value::from(1))]),
        ]);
        let (tid, status, meta) = parse_txn_header(&h).unwrap().unwrap();
        assert_eq!((tid, status), (Tid(3), b'p'));
        assert_eq!(meta.user, b"u");
        assert_eq!(
            decode_ext(&meta.extension).unwrap(),
            map(vec![("a", Value::from(1))])
        );
        let h = Value::Array(vec![tidv(3), s(" "), s(""), s(""), map(vec![])]);
        let (_, status, meta) = parse_txn_header(&h).unwrap().unwrap();
        assert_eq!(status, b' ');
        assert!(meta.extension.is_empty());
        assert_eq!(parse_txn_header(&Value::Nil).unwrap(), None);
        assert!(parse_txn_header(&Value::Array(vec![tidv(3)])).is_err());

        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), Value::Nil]);
        assert_eq!(
            parse_data_record(&r).unwrap(),
            Some(DataRecord {
                oid: Oid(1),
                tid: Tid(2),
                data: Some(Arc::from(&b"x"[..])),
                data_txn: None
            })
        );
        let r = Value::Array(vec![oidv(1), tidv(2), Value::Nil, tidv(1)]);
        assert_eq!(
            parse_data_record(&r).unwrap(),
            Some(DataRecord {
                oid: Oid(1),
                tid: Tid(2),
                data: None,
                data_txn: Some(Tid(1))
            })
        );
        assert_eq!(parse_data_record(&Value::Nil).unwrap(), None);
        assert!(parse_data_record(&Value::Array(vec![oidv(1)])).is_err());

        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), oidv(5)]);
        assert_eq!(
            parse_record_iternext(&r).unwrap(),
            Some((Oid(1), Tid(2), Arc::from(&b"x"[..]), Some(Oid(5))))
        );
        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), Value::Nil]);
        assert_eq!(parse_record_iternext(&r).unwrap().and_then(|r| r.3), None);
    }

    #[test]
    fn small_shapes() {
        assert_eq!(
            parse_oids(&Value::Array(vec![oidv(1), oidv(2)])).unwrap(),
            vec![Oid(1), Oid(2)]
        );
        assert!(parse_oids(&Value::Array(vec![s("x")])).is_err());
        assert_eq!(
            parse_invalidation(&[tidv(4), Value::Array(vec![oidv(0), oidv(7)])]).unwrap(),
            (Tid(4), vec![Oid(0), Oid(7)])
        );
        assert!(parse_invalidation(&[tidv(4)]).is_err());
        assert!(parse_invalidation(&[tidv(4), s("x")]).is_err());
        assert_eq!(
            parse_size_info(&map(vec![
                ("length", Value::from(3)),
                ("size", Value::from(4096))
            ])),
            SizeInfo {
                objects: 3,
                bytes: 4096
            }
        );
        assert_eq!(parse_size_info(&Value::Nil), SizeInfo::default());
        assert_eq!(status_str(b' '), " ");
        assert_eq!(status_str(b'p'), "p");
        assert_eq!(status_str(0), " ");
    }
}
