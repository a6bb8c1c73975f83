//! Typed requests: a ZEO call's arguments decoded once, with the errors
//! ZEO clients get for arguments of the wrong type.
//!
//! Each method has one decoder here, named after it; the method table
//! ([`super::methods::METHODS`]) pairs it with the method's name, arity and
//! scheduling, and the arity is checked before the decoder runs
//! ([`super::methods::check`]), so a decoder may index its arguments.
//! Decoders are pure: they look at the arguments only, never at the session
//! or the storage (what a method needs of the session is checked before
//! its decoder runs, [`super::methods::Needs`]). Arguments are decoded in
//! the order the handlers always read them, so a call with several bad
//! arguments names the same one.
//!
//! A request borrows from its message (transaction ids, blob chunks,
//! `undoInfo`'s filter), so nothing is copied twice.

use super::wire::{data_arg, ext_bytes, parse_undo_id};
use crate::storage::{Data, Oid, Result, Tid, TxnMeta};
use crate::zeo::message::arg;
use rmpv::Value;

/// A ZEO call, decoded. Transaction ids (`id`) stay the client's values:
/// they are only compared with the one `tpc_begin` gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request<'a> {
    Register {
        storage: String,
        read_only: bool,
    },
    GetInfo,
    GetSizeInfo,
    LastTransaction,
    LoadBefore {
        oid: Oid,
        before: Tid,
    },
    LoadSerial {
        oid: Oid,
        serial: Tid,
    },
    GetTid {
        oid: Oid,
    },
    History {
        oid: Oid,
        size: usize,
    },
    /// `new_oids(n)`: `n` clamped to 1..=100 (100 when not given).
    NewOids {
        n: usize,
    },
    NewOid,
    GetInvalidations {
        since: Tid,
    },
    Pack {
        time: f64,
    },
    /// `undoInfo(first, last, spec)`: `last` is -20 when not given.
    UndoInfo {
        first: i64,
        last: i64,
        spec: &'a Value,
    },
    UndoLog {
        first: i64,
        last: i64,
    },
    RecordIternext {
        next: Option<Oid>,
    },
    Ping,
    ServerStatus,
    TpcBegin {
        id: &'a Value,
        meta: TxnMeta,
        tid: Option<Tid>,
        status: u8,
    },
    Storea {
        oid: Oid,
        serial: Tid,
        data: Data,
        id: &'a Value,
    },
    DeleteObject {
        oid: Oid,
        serial: Tid,
        id: &'a Value,
    },
    CheckCurrentSerialInTransaction {
        oid: Oid,
        serial: Tid,
        id: &'a Value,
    },
    Restorea {
        oid: Oid,
        serial: Tid,
        data: Option<Data>,
        prev_txn: Option<Tid>,
        id: &'a Value,
    },
    Undoa {
        txn: Tid,
        id: &'a Value,
    },
    Vote {
        id: &'a Value,
    },
    TpcFinish {
        id: &'a Value,
    },
    TpcAbort {
        id: &'a Value,
    },
    IteratorStart {
        start: Option<Tid>,
        stop: Option<Tid>,
    },
    IteratorNext {
        iid: i64,
    },
    IteratorRecordStart {
        iid: i64,
        tid: Tid,
    },
    IteratorRecordNext {
        iid: i64,
    },
    /// The iterator ids that are integers (others are ignored, as by ZEO).
    IteratorGc {
        iids: Vec<i64>,
    },
    /// A label that is not a string is the empty label.
    SetClientLabel {
        label: String,
    },
    StoreBlobStart,
    StoreBlobChunk {
        chunk: &'a [u8],
    },
    StoreBlobEnd {
        oid: Oid,
        serial: Tid,
        data: Data,
        id: &'a Value,
    },
    StoreBlobShared {
        oid: Oid,
        serial: Tid,
        data: Data,
        filename: String,
        id: &'a Value,
    },
    SendBlob {
        oid: Oid,
        serial: Tid,
    },
}

/// A method's decoder: its arguments (as many as the table allows) to its
/// request.
pub(crate) type Decode = for<'a> fn(&'a [Value]) -> Result<Request<'a>>;

static NIL: Value = Value::Nil;

/// Argument `i`, or nil when the call left it out.
fn opt(a: &[Value], i: usize) -> &Value {
    a.get(i).unwrap_or(&NIL)
}

pub(crate) fn register(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Register {
        storage: arg::string(&a[0], "storage_id")?,
        read_only: arg::truthy(&a[1]),
    })
}

pub(crate) fn get_info(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::GetInfo)
}

pub(crate) fn get_size_info(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::GetSizeInfo)
}

pub(crate) fn last_transaction(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::LastTransaction)
}

pub(crate) fn load_before(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::LoadBefore {
        oid: arg::oid(&a[0], "oid")?,
        before: arg::tid(&a[1], "tid")?,
    })
}

pub(crate) fn load_serial(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::LoadSerial {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::tid(&a[1], "serial")?,
    })
}

pub(crate) fn get_tid(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::GetTid {
        oid: arg::oid(&a[0], "oid")?,
    })
}

pub(crate) fn history(a: &[Value]) -> Result<Request<'_>> {
    let size = match opt(a, 1) {
        Value::Nil => 1,
        v => arg::int(v, "size")?.max(1) as usize,
    };
    Ok(Request::History {
        oid: arg::oid(&a[0], "oid")?,
        size,
    })
}

pub(crate) fn new_oids(a: &[Value]) -> Result<Request<'_>> {
    let n = match opt(a, 0) {
        Value::Nil => 100,
        v => arg::int(v, "n")?,
    };
    Ok(Request::NewOids {
        n: n.clamp(1, 100) as usize,
    })
}

pub(crate) fn new_oid(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::NewOid)
}

pub(crate) fn get_invalidations(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::GetInvalidations {
        since: arg::tid(&a[0], "tid")?,
    })
}

pub(crate) fn pack(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Pack {
        time: arg::float(&a[0], "time")?,
    })
}

/// `undoLog`'s and `undoInfo`'s range: `first` (nil: 0), `last` (nil: -20).
fn undo_args(a: &[Value]) -> Result<(i64, i64)> {
    let first = arg::int(opt(a, 0), "first")?;
    let last = match opt(a, 1) {
        Value::Nil => -20,
        v => arg::int(v, "last")?,
    };
    Ok((first, last))
}

pub(crate) fn undo_info(a: &[Value]) -> Result<Request<'_>> {
    let (first, last) = undo_args(a)?;
    Ok(Request::UndoInfo {
        first,
        last,
        spec: opt(a, 2),
    })
}

pub(crate) fn undo_log(a: &[Value]) -> Result<Request<'_>> {
    let (first, last) = undo_args(a)?;
    Ok(Request::UndoLog { first, last })
}

pub(crate) fn record_iternext(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::RecordIternext {
        next: arg::opt_oid(opt(a, 0), "next")?,
    })
}

pub(crate) fn ping(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Ping)
}

pub(crate) fn server_status(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::ServerStatus)
}

pub(crate) fn tpc_begin(a: &[Value]) -> Result<Request<'_>> {
    let status = match a.get(5) {
        None | Some(Value::Nil) => b' ',
        Some(v) => arg::bytes(v, "status")?.first().copied().unwrap_or(b' '),
    };
    let meta = TxnMeta {
        user: arg::bytes(&a[1], "user")?.to_vec(),
        description: arg::bytes(&a[2], "description")?.to_vec(),
        extension: ext_bytes(&a[3]),
    };
    let tid = match a.get(4) {
        Some(v) => arg::opt_tid(v, "tid")?,
        None => None,
    };
    Ok(Request::TpcBegin {
        id: &a[0],
        meta,
        tid,
        status,
    })
}

pub(crate) fn storea(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Storea {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        data: data_arg(&a[2], "data")?,
        id: &a[3],
    })
}

pub(crate) fn delete_object(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::DeleteObject {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        id: &a[2],
    })
}

pub(crate) fn check_current_serial_in_transaction(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::CheckCurrentSerialInTransaction {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        id: &a[2],
    })
}

pub(crate) fn restorea(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Restorea {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        data: match &a[2] {
            Value::Nil => None,
            v => Some(data_arg(v, "data")?),
        },
        prev_txn: arg::opt_tid(&a[3], "prev_txn")?,
        id: &a[4],
    })
}

pub(crate) fn undoa(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Undoa {
        txn: parse_undo_id(arg::bytes(&a[0], "trans_id")?)?,
        id: &a[1],
    })
}

pub(crate) fn vote(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::Vote { id: &a[0] })
}

pub(crate) fn tpc_finish(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::TpcFinish { id: &a[0] })
}

pub(crate) fn tpc_abort(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::TpcAbort { id: &a[0] })
}

pub(crate) fn iterator_start(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::IteratorStart {
        start: arg::opt_tid(opt(a, 0), "start")?,
        stop: arg::opt_tid(opt(a, 1), "stop")?,
    })
}

pub(crate) fn iterator_next(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::IteratorNext {
        iid: arg::int(&a[0], "iid")?,
    })
}

pub(crate) fn iterator_record_start(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::IteratorRecordStart {
        iid: arg::int(&a[0], "txn_iid")?,
        tid: arg::tid(&a[1], "tid")?,
    })
}

pub(crate) fn iterator_record_next(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::IteratorRecordNext {
        iid: arg::int(&a[0], "iid")?,
    })
}

pub(crate) fn iterator_gc(a: &[Value]) -> Result<Request<'_>> {
    let iids = match &a[0] {
        Value::Array(ids) => ids
            .iter()
            .filter_map(|id| arg::int(id, "iid").ok())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Request::IteratorGc { iids })
}

pub(crate) fn set_client_label(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::SetClientLabel {
        label: arg::string(&a[0], "label").unwrap_or_default(),
    })
}

pub(crate) fn store_blob_start(_: &[Value]) -> Result<Request<'_>> {
    Ok(Request::StoreBlobStart)
}

pub(crate) fn store_blob_chunk(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::StoreBlobChunk {
        chunk: arg::bytes(&a[0], "chunk")?,
    })
}

pub(crate) fn store_blob_end(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::StoreBlobEnd {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        data: data_arg(&a[2], "data")?,
        id: &a[3],
    })
}

pub(crate) fn store_blob_shared(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::StoreBlobShared {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::serial(&a[1], "serial")?,
        data: data_arg(&a[2], "data")?,
        filename: arg::string(&a[3], "filename")?,
        id: &a[4],
    })
}

pub(crate) fn send_blob(a: &[Value]) -> Result<Request<'_>> {
    Ok(Request::SendBlob {
        oid: arg::oid(&a[0], "oid")?,
        serial: arg::tid(&a[1], "serial")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::methods::{decode, METHODS};
    use super::*;
    use crate::storage::Error;
    use crate::zeo::message::{oid_value, tid_value, Message};
    use std::sync::Arc;

    fn call(method: &str, args: Vec<Value>) -> Message {
        Message {
            msgid: Value::from(1),
            flags: 0,
            method: method.into(),
            args: Value::Array(args),
        }
    }

    fn o(n: u64) -> Value {
        oid_value(Oid(n))
    }
    fn t(n: u64) -> Value {
        tid_value(Tid(n))
    }
    fn s(x: &str) -> Value {
        Value::from(x)
    }
    fn b(x: &[u8]) -> Value {
        Value::Binary(x.to_vec())
    }
    fn i(n: i64) -> Value {
        Value::from(n)
    }
    const NIL: Value = Value::Nil;

    fn wrong(what: &str, shown: &str) -> Error {
        Error::Value(format!("argument {what} has the wrong type: {shown}"))
    }
    fn type_error(message: &str) -> Error {
        Error::Remote {
            class: "builtins.TypeError".into(),
            message: message.into(),
        }
    }

    #[test]
    fn good_arguments() {
        let id = s("txn-1");
        let ext = Value::Map(vec![(s("k"), s("v"))]);
        let spec = Value::Map(vec![(s("user_name"), s("u"))]);
        let data: Data = Arc::from(&b"pickle"[..]);
        let meta = |ext: Vec<u8>| TxnMeta {
            user: b"u".to_vec(),
            description: b"d".to_vec(),
            extension: ext,
        };
        let mut ext_bytes = Vec::new();
        rmpv::encode::write_value(&mut ext_bytes, &ext).unwrap();
        let cases: Vec<(&str, Vec<Value>, Request)> = vec![
            (
                "register",
                vec![s("main"), Value::Boolean(false)],
                Request::Register {
                    storage: "main".into(),
                    read_only: false,
                },
            ),
            (
                "register",
                vec![b(b"main"), i(1), NIL],
                Request::Register {
                    storage: "main".into(),
                    read_only: true,
                },
            ),
            ("get_info", vec![], Request::GetInfo),
            ("get_size_info", vec![], Request::GetSizeInfo),
            ("lastTransaction", vec![], Request::LastTransaction),
            ("ping", vec![], Request::Ping),
            ("server_status", vec![], Request::ServerStatus),
            (
                "loadBefore",
                vec![o(1), t(9)],
                Request::LoadBefore {
                    oid: Oid(1),
                    before: Tid(9),
                },
            ),
            (
                "loadSerial",
                vec![o(1), t(9)],
                Request::LoadSerial {
                    oid: Oid(1),
                    serial: Tid(9),
                },
            ),
            ("getTid", vec![o(2)], Request::GetTid { oid: Oid(2) }),
            (
                "history",
                vec![o(2)],
                Request::History {
                    oid: Oid(2),
                    size: 1,
                },
            ),
            (
                "history",
                vec![o(2), i(5)],
                Request::History {
                    oid: Oid(2),
                    size: 5,
                },
            ),
            (
                "history",
                vec![o(2), i(-3)],
                Request::History {
                    oid: Oid(2),
                    size: 1,
                },
            ),
            ("new_oids", vec![], Request::NewOids { n: 100 }),
            ("new_oids", vec![NIL], Request::NewOids { n: 100 }),
            ("new_oids", vec![i(7)], Request::NewOids { n: 7 }),
            ("new_oids", vec![i(500)], Request::NewOids { n: 100 }),
            ("new_oids", vec![i(0)], Request::NewOids { n: 1 }),
            ("new_oid", vec![], Request::NewOid),
            (
                "getInvalidations",
                vec![t(3)],
                Request::GetInvalidations { since: Tid(3) },
            ),
            ("pack", vec![Value::F64(1.5)], Request::Pack { time: 1.5 }),
            ("pack", vec![i(3), NIL], Request::Pack { time: 3.0 }),
            (
                "undoInfo",
                vec![],
                Request::UndoInfo {
                    first: 0,
                    last: -20,
                    spec: &NIL,
                },
            ),
            (
                "undoInfo",
                vec![i(2), i(10), spec.clone()],
                Request::UndoInfo {
                    first: 2,
                    last: 10,
                    spec: &spec,
                },
            ),
            (
                "undoLog",
                vec![i(0), i(5)],
                Request::UndoLog { first: 0, last: 5 },
            ),
            (
                "undoLog",
                vec![NIL, NIL],
                Request::UndoLog {
                    first: 0,
                    last: -20,
                },
            ),
            (
                "record_iternext",
                vec![],
                Request::RecordIternext { next: None },
            ),
            (
                "record_iternext",
                vec![o(4)],
                Request::RecordIternext { next: Some(Oid(4)) },
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), b(b"d"), Value::Map(vec![])],
                Request::TpcBegin {
                    id: &id,
                    meta: meta(Vec::new()),
                    tid: None,
                    status: b' ',
                },
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), s("d"), ext.clone(), t(7), s("p")],
                Request::TpcBegin {
                    id: &id,
                    meta: meta(ext_bytes.clone()),
                    tid: Some(Tid(7)),
                    status: b'p',
                },
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), s("d"), NIL, NIL, s("")],
                Request::TpcBegin {
                    id: &id,
                    meta: meta(Vec::new()),
                    tid: None,
                    status: b' ',
                },
            ),
            (
                "storea",
                vec![o(1), NIL, b(b"pickle"), id.clone()],
                Request::Storea {
                    oid: Oid(1),
                    serial: Tid::ZERO,
                    data: data.clone(),
                    id: &id,
                },
            ),
            (
                "deleteObject",
                vec![o(1), t(2), id.clone()],
                Request::DeleteObject {
                    oid: Oid(1),
                    serial: Tid(2),
                    id: &id,
                },
            ),
            (
                "checkCurrentSerialInTransaction",
                vec![o(1), t(2), id.clone()],
                Request::CheckCurrentSerialInTransaction {
                    oid: Oid(1),
                    serial: Tid(2),
                    id: &id,
                },
            ),
            (
                "restorea",
                vec![o(1), t(2), NIL, NIL, id.clone()],
                Request::Restorea {
                    oid: Oid(1),
                    serial: Tid(2),
                    data: None,
                    prev_txn: None,
                    id: &id,
                },
            ),
            (
                "restorea",
                vec![o(1), t(2), b(b"pickle"), t(1), id.clone()],
                Request::Restorea {
                    oid: Oid(1),
                    serial: Tid(2),
                    data: Some(data.clone()),
                    prev_txn: Some(Tid(1)),
                    id: &id,
                },
            ),
            (
                "undoa",
                vec![s("A9XiwQAAAAA="), id.clone()],
                Request::Undoa {
                    txn: Tid(0x03d5e2c100000000),
                    id: &id,
                },
            ),
            ("vote", vec![id.clone()], Request::Vote { id: &id }),
            (
                "tpc_finish",
                vec![id.clone()],
                Request::TpcFinish { id: &id },
            ),
            ("tpc_abort", vec![id.clone()], Request::TpcAbort { id: &id }),
            (
                "iterator_start",
                vec![],
                Request::IteratorStart {
                    start: None,
                    stop: None,
                },
            ),
            (
                "iterator_start",
                vec![t(1), t(5)],
                Request::IteratorStart {
                    start: Some(Tid(1)),
                    stop: Some(Tid(5)),
                },
            ),
            (
                "iterator_next",
                vec![i(3)],
                Request::IteratorNext { iid: 3 },
            ),
            (
                "iterator_record_start",
                vec![i(3), t(5)],
                Request::IteratorRecordStart {
                    iid: 3,
                    tid: Tid(5),
                },
            ),
            (
                "iterator_record_next",
                vec![i(4)],
                Request::IteratorRecordNext { iid: 4 },
            ),
            (
                "iterator_gc",
                vec![Value::Array(vec![i(1), s("x"), i(2)])],
                Request::IteratorGc { iids: vec![1, 2] },
            ),
            (
                "iterator_gc",
                vec![i(1)],
                Request::IteratorGc { iids: Vec::new() },
            ),
            (
                "set_client_label",
                vec![s("worker 3")],
                Request::SetClientLabel {
                    label: "worker 3".into(),
                },
            ),
            (
                "set_client_label",
                vec![i(5)],
                Request::SetClientLabel {
                    label: String::new(),
                },
            ),
            ("storeBlobStart", vec![], Request::StoreBlobStart),
            (
                "storeBlobChunk",
                vec![b(b"chunk")],
                Request::StoreBlobChunk { chunk: b"chunk" },
            ),
            (
                "storeBlobEnd",
                vec![o(1), NIL, b(b"pickle"), id.clone()],
                Request::StoreBlobEnd {
                    oid: Oid(1),
                    serial: Tid::ZERO,
                    data: data.clone(),
                    id: &id,
                },
            ),
            (
                "storeBlobShared",
                vec![o(1), t(2), b(b"pickle"), s("x.tmp"), id.clone()],
                Request::StoreBlobShared {
                    oid: Oid(1),
                    serial: Tid(2),
                    data: data.clone(),
                    filename: "x.tmp".into(),
                    id: &id,
                },
            ),
            (
                "sendBlob",
                vec![o(1), t(2)],
                Request::SendBlob {
                    oid: Oid(1),
                    serial: Tid(2),
                },
            ),
        ];
        for (method, args, want) in &cases {
            let msg = call(method, args.clone());
            assert_eq!(decode(&msg).as_ref(), Ok(want), "{method}{args:?}");
        }
        // Every method of the table has a good case here.
        for m in METHODS {
            assert!(
                cases.iter().any(|(name, ..)| *name == m.name),
                "no good case for {}",
                m.name
            );
        }
    }

    #[test]
    fn bad_arguments() {
        let id = s("txn-1");
        let cases: Vec<(&str, Vec<Value>, Error)> = vec![
            (
                "nonsense",
                vec![],
                Error::Remote {
                    class: "builtins.AttributeError".into(),
                    message: "unknown method \"nonsense\"".into(),
                },
            ),
            (
                "loadBefore",
                vec![o(1)],
                type_error("loadBefore() takes 2 arguments but 1 were given"),
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), s("d")],
                type_error("tpc_begin() takes 4 to 6 arguments but 3 were given"),
            ),
            (
                "storea",
                vec![o(1), NIL, b(b"p"), id.clone(), NIL],
                type_error("storea() takes 4 arguments but 5 were given"),
            ),
            ("register", vec![i(5), NIL], wrong("storage_id", "5")),
            ("loadBefore", vec![i(5), t(1)], wrong("oid", "5")),
            ("loadBefore", vec![o(1), NIL], wrong("tid", "nil")),
            (
                "loadBefore",
                vec![s("short"), t(1)],
                wrong("oid", "\"short\""),
            ),
            ("loadSerial", vec![o(1), i(2)], wrong("serial", "2")),
            ("getTid", vec![NIL], wrong("oid", "nil")),
            // The size is read first.
            ("history", vec![i(1), s("x")], wrong("size", "\"x\"")),
            ("history", vec![i(1)], wrong("oid", "1")),
            ("new_oids", vec![s("x")], wrong("n", "\"x\"")),
            ("getInvalidations", vec![NIL], wrong("tid", "nil")),
            ("pack", vec![s("x")], wrong("time", "\"x\"")),
            ("undoLog", vec![s("x")], wrong("first", "\"x\"")),
            ("undoInfo", vec![i(0), s("x")], wrong("last", "\"x\"")),
            ("record_iternext", vec![i(3)], wrong("next", "3")),
            // The status is read first, then user, description, tid.
            (
                "tpc_begin",
                vec![id.clone(), i(1), s("d"), NIL, NIL, i(2)],
                wrong("status", "2"),
            ),
            (
                "tpc_begin",
                vec![id.clone(), i(1), i(2), NIL, i(3)],
                wrong("user", "1"),
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), i(2), NIL, i(3)],
                wrong("description", "2"),
            ),
            (
                "tpc_begin",
                vec![id.clone(), s("u"), s("d"), NIL, i(3)],
                wrong("tid", "3"),
            ),
            (
                "storea",
                vec![NIL, NIL, b(b"p"), id.clone()],
                wrong("oid", "nil"),
            ),
            (
                "storea",
                vec![o(1), i(2), b(b"p"), id.clone()],
                wrong("serial", "2"),
            ),
            (
                "storea",
                vec![o(1), NIL, NIL, id.clone()],
                wrong("data", "nil"),
            ),
            (
                "deleteObject",
                vec![o(1), i(2), id.clone()],
                wrong("serial", "2"),
            ),
            (
                "checkCurrentSerialInTransaction",
                vec![i(1), t(2), id.clone()],
                wrong("oid", "1"),
            ),
            (
                "restorea",
                vec![o(1), t(2), i(3), NIL, id.clone()],
                wrong("data", "3"),
            ),
            (
                "restorea",
                vec![o(1), t(2), NIL, i(4), id.clone()],
                wrong("prev_txn", "4"),
            ),
            ("undoa", vec![i(1), id.clone()], wrong("trans_id", "1")),
            (
                "undoa",
                vec![s("not an id"), id.clone()],
                Error::Undo {
                    message: "undo id \"not an id\" is not a transaction id".into(),
                    oid: None,
                },
            ),
            ("iterator_start", vec![i(1)], wrong("start", "1")),
            ("iterator_start", vec![NIL, i(2)], wrong("stop", "2")),
            ("iterator_next", vec![s("x")], wrong("iid", "\"x\"")),
            (
                "iterator_record_start",
                vec![s("x"), t(1)],
                wrong("txn_iid", "\"x\""),
            ),
            (
                "iterator_record_start",
                vec![i(1), NIL],
                wrong("tid", "nil"),
            ),
            ("iterator_record_next", vec![s("x")], wrong("iid", "\"x\"")),
            ("storeBlobChunk", vec![i(5)], wrong("chunk", "5")),
            (
                "storeBlobEnd",
                vec![o(1), NIL, i(3), id.clone()],
                wrong("data", "3"),
            ),
            (
                "storeBlobShared",
                vec![o(1), NIL, b(b"p"), i(4), id.clone()],
                wrong("filename", "4"),
            ),
            ("sendBlob", vec![o(1), NIL], wrong("serial", "nil")),
        ];
        for (method, args, want) in cases {
            let msg = call(method, args.clone());
            assert_eq!(decode(&msg), Err(want), "{method}{args:?}");
        }
    }
}
