//! The handlers: what each method does to the storage and the session.
//!
//! [`concurrent`] answers the stateless reads; [`ordered`] runs the
//! transaction, iterator and blob-upload messages in arrival order with
//! the session's state locked (`vote` and `tpc_finish` are in
//! [`super::commit`]). Both let a call through [`admit`] first: its name
//! and arity, what its method needs of the session, then its arguments,
//! decoded once into a [`Request`] the handler matches on.

use super::blobs::{self, Upload};
use super::commit::{finish, vote};
use super::methods::{self, Kind, Needs};
use super::request::Request;
use super::session::{check_txn, release_lock, Flow, IterState, Session, State, TxnState};
use super::status::{get_info, info_message, size_info_value, status_json};
use super::wire::{
    ext_value, json_to_value, matches_spec, oids_value, txn_meta_entries, undo_entry_value,
    undo_range,
};
use super::{lock, ConnId, Out, Shared};
use crate::locks::{read, write};
use crate::storage::blobdir::StagedFile;
use crate::storage::{timestamp, Error, Op, Result, Tid};
use crate::zeo::message::{bin, oid_value, opt_tid_value, tid_value, Message};
use rmpv::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `loadBefore`'s answer as ZEO sends it: nil, or (data, start, end).
pub(super) fn loaded_value(loaded: Option<crate::storage::Loaded>) -> Value {
    match loaded {
        None => Value::Nil,
        Some(l) => Value::Array(vec![bin(&l.data), tid_value(l.start), opt_tid_value(l.end)]),
    }
}

/// Stateless reads, run concurrently (or on the event loop, see
/// [`super::worker::run_inline`]).
pub(super) fn concurrent(shared: &Shared, sess: &Session, msg: &Message) -> Result<Value> {
    let req = match admit(sess, None, msg)? {
        Admitted::Run(req) => req,
        Admitted::Answered(v) => return Ok(v),
    };
    let entry = sess.entry()?;
    let st = &entry.storage;
    match req {
        Request::LoadBefore { oid, before } => {
            entry.stats.loads.fetch_add(1, Ordering::Relaxed);
            Ok(loaded_value(st.load_before(oid, before)?))
        }
        Request::LoadSerial { oid, serial } => {
            entry.stats.loads.fetch_add(1, Ordering::Relaxed);
            Ok(bin(&st.load_serial(oid, serial)?))
        }
        Request::GetTid { oid } => match st.load_before(oid, Tid::MAX)? {
            Some(l) => Ok(tid_value(l.start)),
            None => Err(Error::PosKey(oid)),
        },
        Request::History { oid, size } => {
            let h = st.history(oid, size)?;
            Ok(Value::Array(
                h.iter()
                    .map(|e| {
                        let mut m = vec![
                            (Value::from("time"), Value::F64(timestamp::time_time(e.tid))),
                            (Value::from("tid"), tid_value(e.tid)),
                            (Value::from("version"), Value::from("")),
                            (Value::from("size"), Value::from(e.size)),
                        ];
                        m.extend(txn_meta_entries(&e.meta));
                        Value::Map(m)
                    })
                    .collect(),
            ))
        }
        Request::LastTransaction => Ok(tid_value(st.last_transaction()?)),
        Request::NewOids { n } => Ok(oids_value(&st.new_oids(n)?)),
        Request::NewOid => st
            .new_oids(1)?
            .first()
            .map(|o| oid_value(*o))
            .ok_or_else(|| Error::Value("no oid".into())),
        Request::GetInvalidations { since } => Ok(match lock(&entry.invq).since(since) {
            None => Value::Nil,
            Some((tid, oids)) => Value::Array(vec![tid_value(tid), oids_value(&oids)]),
        }),
        Request::Pack { time } => {
            log::info!("pack of storage {:?} to {time} started", entry.name);
            st.pack(time, true)?;
            log::info!("pack of storage {:?} complete", entry.name);
            let info = Arc::new(info_message(entry));
            let ids: Vec<ConnId> = read(&entry.clients).iter().copied().collect();
            shared.send(Out::Broadcast(ids, info));
            Ok(Value::Nil)
        }
        Request::UndoLog { first, last } => undo_log(st.as_ref(), first, last, &Value::Nil),
        Request::UndoInfo { first, last, spec } => undo_log(st.as_ref(), first, last, spec),
        Request::RecordIternext { next } => Ok(match st.record_iternext(next)? {
            None => Value::Nil,
            Some((oid, tid, data, next)) => Value::Array(vec![
                oid_value(oid),
                tid_value(tid),
                bin(&data),
                next.map(oid_value).unwrap_or(Value::Nil),
            ]),
        }),
        Request::Ping => Ok(Value::Nil),
        Request::ServerStatus => Ok(json_to_value(&status_json(entry))),
        Request::GetInfo => Ok(get_info(entry)),
        Request::GetSizeInfo => Ok(size_info_value(entry)),
        Request::SendBlob { oid, serial } => {
            let path = st.load_blob(oid, serial)?;
            blobs::send_blob(shared, sess.id, oid, serial, &path, &|| sess.is_closed())?;
            Ok(Value::Nil)
        }
        _ => Err(Error::Value(format!(
            "{} cannot run concurrently",
            msg.method
        ))),
    }
}

/// `undoLog(first, last)`, and `undoInfo` with its filter `spec` (a
/// non-empty map filters; anything else does not).
fn undo_log(
    st: &dyn crate::storage::Storage,
    first: i64,
    last: i64,
    spec: &Value,
) -> Result<Value> {
    let (first, last) = undo_range(first, last);
    if !st.supports_undo() {
        return Ok(Value::Array(vec![]));
    }
    if matches!(spec, Value::Map(m) if !m.is_empty()) {
        let all = st.undo_log(0, usize::MAX)?;
        let matching: Vec<Value> = all
            .iter()
            .map(undo_entry_value)
            .filter(|v| matches_spec(v, spec))
            .skip(first)
            .take(last - first)
            .collect();
        return Ok(Value::Array(matching));
    }
    Ok(Value::Array(
        st.undo_log(first, last)?
            .iter()
            .map(undo_entry_value)
            .collect(),
    ))
}

/// Transaction and iterator messages, run in arrival order.
pub(super) fn ordered(shared: &Shared, sess: &Session, msg: &Message) -> Flow {
    if methods::lookup(&msg.method).map(|m| m.kind) == Some(Kind::Concurrent) {
        // A read that arrived before register() completed took the ordered path.
        return Flow::Reply(concurrent(shared, sess, msg));
    }
    let mut guard = lock(&sess.state);
    let st = &mut *guard;
    let r = match admit(sess, Some(st), msg) {
        Err(e) => Err(e),
        Ok(Admitted::Answered(v)) => Ok(v),
        Ok(Admitted::Run(Request::Vote { id })) => return vote(shared, sess, st, msg, id),
        Ok(Admitted::Run(Request::TpcFinish { id })) => return finish(shared, sess, st, msg, id),
        Ok(Admitted::Run(req)) => in_order(shared, sess, st, &msg.method, req),
    };
    if msg.is_oneway() && r.is_ok() {
        Flow::Done
    } else {
        Flow::Reply(r)
    }
}

/// A call let through to its handler, or answered already.
enum Admitted<'a> {
    Run(Request<'a>),
    /// Answered without running (a repeated `tpc_begin`).
    Answered(Value),
}

/// Let a call through, or refuse it, in this order: its name and arity
/// ([`methods::check`]), what its method needs of the session
/// ([`Needs`]; `st` is the session's state for an ordered call, `None` for
/// a concurrent one, which needs no more than the storage), then its
/// arguments (the method's decoder, [`super::request`]).
fn admit<'a>(sess: &Session, st: Option<&mut State>, msg: &'a Message) -> Result<Admitted<'a>> {
    let args = msg.arg_list();
    let method = methods::check(&msg.method, args.len()).map_err(|r| r.error())?;
    let writable = || -> Result<()> {
        if sess.read_only.load(Ordering::Relaxed) || sess.entry()?.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    };
    match (method.needs, st) {
        (Needs::Nothing, _) => {}
        (Needs::Storage, _) => {
            sess.entry()?;
        }
        (Needs::Writable, _) => writable()?,
        (Needs::NoStorage, _) => {
            if sess.is_registered() {
                return Err(Error::Value("duplicate register() call".into()));
            }
        }
        (Needs::Txn(n), Some(st)) => {
            check_txn(sess, st, &args[n], &msg.method)?;
        }
        (Needs::StorageTxn(n), Some(st)) => {
            sess.entry()?;
            check_txn(sess, st, &args[n], &msg.method)?;
        }
        (Needs::NewTxn, Some(st)) => {
            writable()?;
            if let Some(t) = &st.txn {
                if t.id == args[0] {
                    log::info!("duplicate tpc_begin({}) from {}", args[0], sess.peer);
                    return Ok(Admitted::Answered(Value::Nil));
                }
                return Err(Error::Transaction(
                    "Multiple simultaneous tpc_begin requests from one client.".into(),
                ));
            }
        }
        // (No concurrent method needs a transaction.)
        (Needs::Txn(_) | Needs::StorageTxn(_) | Needs::NewTxn, None) => {}
    }
    Ok(Admitted::Run((method.decode)(args)?))
}

/// The ordered methods but `vote` and `tpc_finish`, with the session's
/// state locked and what the method needs of it checked ([`admit`]);
/// `name` is the method's, for error messages.
fn in_order(
    shared: &Shared,
    sess: &Session,
    st: &mut State,
    name: &str,
    req: Request<'_>,
) -> Result<Value> {
    match req {
        Request::Register { storage, read_only } => {
            register(shared, sess, &storage, read_only).map(tid_value)
        }
        Request::TpcBegin {
            id,
            meta,
            tid,
            status,
        } => {
            // (No other transaction: see `Needs::NewTxn`.)
            let entry = sess.entry()?;
            st.txn = Some(TxnState::new(id.clone(), meta, tid, status));
            entry.stats.active_txns.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        Request::Storea {
            oid,
            serial,
            data,
            id,
        } => {
            let t = check_txn(sess, st, id, name)?;
            t.ops.push(Op::Store { oid, serial, data });
            sess.entry()?.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        Request::DeleteObject { oid, serial, id } => {
            check_txn(sess, st, id, name)?
                .ops
                .push(Op::Delete { oid, serial });
            Ok(Value::Nil)
        }
        Request::CheckCurrentSerialInTransaction { oid, serial, id } => {
            check_txn(sess, st, id, name)?
                .ops
                .push(Op::CheckCurrent { oid, serial });
            Ok(Value::Nil)
        }
        Request::Restorea {
            oid,
            serial,
            data,
            prev_txn,
            id,
        } => {
            check_txn(sess, st, id, name)?.ops.push(Op::Restore {
                oid,
                serial,
                data,
                prev_txn,
            });
            Ok(Value::Nil)
        }
        Request::Undoa { txn, id } => {
            check_txn(sess, st, id, name)?.ops.push(Op::Undo { txn });
            Ok(Value::Nil)
        }
        Request::TpcAbort { id } => {
            let entry = sess.entry()?.clone();
            let matches = st.txn.as_ref().map(|t| t.id == *id).unwrap_or(false);
            if !matches {
                return Ok(Value::Nil);
            }
            if let Some(t) = st.txn.take() {
                if t.locked {
                    entry.storage.tpc_abort();
                }
                entry.stats.aborts.fetch_add(1, Ordering::Relaxed);
                entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
            }
            release_lock(shared, &entry, sess.id);
            Ok(Value::Nil)
        }
        Request::IteratorStart { start, stop } => {
            let entry = sess.entry()?;
            let iter = entry.storage.iterator(start, stop)?;
            let iid = st.next_iid;
            st.next_iid += 1;
            st.iterators
                .insert(iid, IterState::Txns { iter, last: None });
            Ok(Value::from(iid))
        }
        Request::IteratorNext { iid } => {
            let Some(IterState::Txns { iter, last }) = st.iterators.get_mut(&iid) else {
                return Err(Error::Remote {
                    class: "builtins.KeyError".into(),
                    message: iid.to_string(),
                });
            };
            match iter.next() {
                None => {
                    st.iterators.remove(&iid);
                    Ok(Value::Nil)
                }
                Some(Err(e)) => Err(e),
                Some(Ok(t)) => {
                    let v = Value::Array(vec![
                        tid_value(t.tid),
                        Value::from(String::from(t.status as char)),
                        bin(&t.meta.user),
                        bin(&t.meta.description),
                        ext_value(&t.meta.extension),
                    ]);
                    *last = Some(t);
                    Ok(v)
                }
            }
        }
        Request::IteratorRecordStart { iid, tid } => {
            let records = match st.iterators.get(&iid) {
                Some(IterState::Txns { last: Some(t), .. }) if t.tid == tid => t.records.clone(),
                _ => {
                    return Err(Error::Value(format!(
                        "Out-of-order request for record iterator for transaction {tid}"
                    )))
                }
            };
            let riid = st.next_iid;
            st.next_iid += 1;
            st.iterators
                .insert(riid, IterState::Records(records.into_iter()));
            Ok(Value::from(riid))
        }
        Request::IteratorRecordNext { iid } => {
            let Some(IterState::Records(recs)) = st.iterators.get_mut(&iid) else {
                return Err(Error::Remote {
                    class: "builtins.KeyError".into(),
                    message: iid.to_string(),
                });
            };
            match recs.next() {
                None => {
                    st.iterators.remove(&iid);
                    Ok(Value::Nil)
                }
                Some(r) => Ok(Value::Array(vec![
                    oid_value(r.oid),
                    tid_value(r.tid),
                    r.data.as_deref().map(bin).unwrap_or(Value::Nil),
                    opt_tid_value(r.data_txn),
                ])),
            }
        }
        Request::IteratorGc { iids } => {
            for i in iids {
                st.iterators.remove(&i);
            }
            Ok(Value::Nil)
        }
        Request::SetClientLabel { label } => {
            st.label = label;
            Ok(Value::Nil)
        }
        Request::StoreBlobStart => {
            let dir = blob_staging(sess);
            let t = st
                .txn
                .as_mut()
                .ok_or_else(|| Error::Transaction(format!("no current transaction: {name}()")))?;
            if t.upload.take().is_some() {
                fail_blob(t, "storeBlobStart before the previous blob ended".into());
            }
            match dir.and_then(|d| Upload::start(&d)) {
                Ok(u) => t.upload = Some(u),
                Err(e) => fail_blob(t, e.to_string()),
            }
            Ok(Value::Nil)
        }
        Request::StoreBlobChunk { chunk } => {
            let t = st
                .txn
                .as_mut()
                .ok_or_else(|| Error::Transaction(format!("no current transaction: {name}()")))?;
            match t.upload.as_mut() {
                Some(u) => u.chunk(chunk, shared.max_blob_size),
                // (Its start failed, and said why.)
                None => fail_blob(t, "storeBlobChunk without storeBlobStart".into()),
            }
            Ok(Value::Nil)
        }
        Request::StoreBlobEnd {
            oid,
            serial,
            data,
            id,
        } => {
            let t = check_txn(sess, st, id, name)?;
            match t.upload.take().map(Upload::end) {
                Some(Ok(staged)) => {
                    // Copies the storage wants (an array's mirrors), made
                    // now rather than under the commit lock.
                    match sess.entry()?.storage.prepare_blob(staged.path()) {
                        Ok(extra) => t.staged.extend(extra.into_iter().map(StagedFile::new)),
                        Err(e) => fail_blob(t, e.to_string()),
                    }
                    t.ops.push(Op::StoreBlob {
                        oid,
                        serial,
                        data,
                        blob: staged.path().to_path_buf(),
                    });
                    t.staged.push(staged);
                }
                Some(Err(why)) => fail_blob(t, why),
                None => fail_blob(t, "storeBlobEnd without storeBlobStart".into()),
            }
            sess.entry()?.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        Request::StoreBlobShared {
            oid,
            serial,
            data,
            filename,
            id,
        } => {
            let entry = sess.entry()?.clone();
            let t = check_txn(sess, st, id, name)?;
            if !blobs::shared_name_ok(&filename) {
                log::error!(
                    "connection {} from {}: refused storeBlobShared file name {filename:?} (not a \
                     plain name ending in .tmp: a client sharing the blob directory names only \
                     its own upload); the transaction fails",
                    sess.id,
                    sess.peer
                );
                fail_blob(
                    t,
                    format!("bad file name for storeBlobShared: {filename:?}"),
                );
                return Ok(Value::Nil);
            }
            let Some(path) = entry.storage.shared_blob_path(oid, &filename) else {
                fail_blob(t, crate::storage::NO_BLOBS.into());
                return Ok(Value::Nil);
            };
            if !path.is_file() {
                fail_blob(
                    t,
                    format!(
                        "the shared blob upload {} does not exist: is the client's blob_dir \
                     really zeoraid's blob-dir (shared_blob_dir = True needs the same directory)?",
                        path.display()
                    ),
                );
            }
            t.ops.push(Op::StoreBlob {
                oid,
                serial,
                data,
                blob: path.clone(),
            });
            t.staged.push(StagedFile::new(path));
            entry.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        _ => Err(Error::Value(format!("{name} is not an ordered method"))),
    }
}

/// Remember why a blob of `t` cannot commit (the first reason wins): its
/// vote fails with it.
fn fail_blob(t: &mut TxnState, why: String) {
    t.blob_failed.get_or_insert(why);
}

/// The registered storage's blob staging directory, or the error blob
/// calls get without one.
fn blob_staging(sess: &Session) -> Result<std::path::PathBuf> {
    sess.entry()?
        .storage
        .blob_staging_dir()
        .ok_or_else(|| Error::Unsupported(crate::storage::NO_BLOBS.into()))
}

/// `register(storage, read_only)`: the session serves `name` from now on;
/// the storage's last transaction.
fn register(shared: &Shared, sess: &Session, name: &str, ro: bool) -> Result<Tid> {
    // An HA standby sends clients to the leader: routine, so not a warning
    // (a client retries it; the worker does not log it either).
    if let Err(e) = shared.gate.admit() {
        log::debug!("register from {} refused: {e}", sess.peer);
        return Err(e);
    }
    let entry = shared
        .storages
        .get(name)
        .cloned()
        .ok_or_else(|| Error::Value(format!("unknown storage: {name}")))?;
    if !ro && entry.read_only {
        return Err(Error::ReadOnly);
    }
    sess.read_only.store(ro, Ordering::Relaxed);
    let last = entry.storage.last_transaction().inspect_err(|e| {
        log::warn!("register from connection {} failed: {e}", sess.id);
    })?;
    write(&entry.clients).insert(sess.id);
    let _ = sess.storage.set(entry);
    log::info!(
        "connection {} from {} registered with storage {name:?}{}",
        sess.id,
        sess.peer,
        if ro { " read-only" } else { "" }
    );
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::super::commit_lock::CommitLock;
    use super::super::invalidations::InvalidationHistory;
    use super::super::StorageEntry;
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use crate::storage::TxnMeta;
    use std::collections::BTreeSet;
    use std::sync::{Mutex, RwLock};
    use std::time::Instant;

    /// The session a case starts from.
    #[derive(Clone, Copy, Debug)]
    enum Given {
        Unregistered,
        Registered,
        /// Registered read-only.
        ReadOnlySession,
        /// Registered with a read-only storage (as read-only).
        ReadOnlyStorage,
        /// Registered, in transaction "t1".
        InTxn,
        /// Registered read-only, with transaction "t1" (as if begun before).
        ReadOnlyInTxn,
    }

    fn entry(read_only: bool) -> Arc<StorageEntry> {
        Arc::new(StorageEntry {
            name: "main".into(),
            storage: Arc::new(MemoryStorage::new("main", read_only)),
            read_only,
            lock: Mutex::new(CommitLock::new()),
            invq: Mutex::new(InvalidationHistory::new(10)),
            clients: RwLock::new(BTreeSet::new()),
            visibility: RwLock::new(()),
            committer: None,
            resolver: None,
            stats: Default::default(),
            started: Instant::now(),
        })
    }

    fn given(g: Given) -> (Session, State) {
        let sess = Session::new(1, "test".into());
        let mut st = State::default();
        let (storage_ro, session_ro, txn) = match g {
            Given::Unregistered => return (sess, st),
            Given::Registered => (false, false, false),
            Given::ReadOnlySession => (false, true, false),
            Given::ReadOnlyStorage => (true, true, false),
            Given::InTxn => (false, false, true),
            Given::ReadOnlyInTxn => (false, true, true),
        };
        let _ = sess.storage.set(entry(storage_ro));
        sess.read_only.store(session_ro, Ordering::Relaxed);
        if txn {
            st.txn = Some(TxnState::new(
                Value::from("t1"),
                TxnMeta::default(),
                None,
                b' ',
            ));
        }
        (sess, st)
    }

    fn wrong(what: &str, shown: &str) -> Error {
        Error::Value(format!("argument {what} has the wrong type: {shown}"))
    }

    /// What a session is checked for comes before the arguments' types,
    /// and the name and arity before both.
    #[test]
    fn admit_checks_the_session_before_the_arguments() {
        use Given::*;
        let s = Value::from;
        let i = |n: i64| Value::from(n);
        let nil = Value::Nil;
        let first = || Error::Value("register() must be called first".into());
        let txn_error = |m: &str| Error::Transaction(m.into());
        let run = Ok("run");
        type Outcome = std::result::Result<&'static str, Error>;
        let cases: Vec<(Given, &str, Vec<Value>, Outcome)> = vec![
            (
                Unregistered,
                "nonsense",
                vec![],
                Err(Error::Remote {
                    class: "builtins.AttributeError".into(),
                    message: "unknown method \"nonsense\"".into(),
                }),
            ),
            (
                Unregistered,
                "loadBefore",
                vec![i(1)],
                Err(Error::Remote {
                    class: "builtins.TypeError".into(),
                    message: "loadBefore() takes 2 arguments but 1 were given".into(),
                }),
            ),
            (
                Unregistered,
                "loadBefore",
                vec![i(1), nil.clone()],
                Err(first()),
            ),
            (
                Registered,
                "loadBefore",
                vec![i(1), nil.clone()],
                Err(wrong("oid", "1")),
            ),
            (Unregistered, "new_oids", vec![s("x")], Err(first())),
            (
                ReadOnlySession,
                "new_oids",
                vec![s("x")],
                Err(Error::ReadOnly),
            ),
            (
                Registered,
                "new_oids",
                vec![s("x")],
                Err(wrong("n", "\"x\"")),
            ),
            (Registered, "new_oids", vec![i(3)], run.clone()),
            (
                Registered,
                "register",
                vec![i(5), nil.clone()],
                Err(Error::Value("duplicate register() call".into())),
            ),
            (
                Unregistered,
                "register",
                vec![i(5), nil.clone()],
                Err(wrong("storage_id", "5")),
            ),
            (
                Unregistered,
                "tpc_begin",
                vec![s("t1"), i(1), i(2), nil.clone()],
                Err(first()),
            ),
            (
                ReadOnlyStorage,
                "tpc_begin",
                vec![s("t1"), i(1), i(2), nil.clone()],
                Err(Error::ReadOnly),
            ),
            (
                InTxn,
                "tpc_begin",
                vec![s("t1"), i(1), i(2), nil.clone()],
                Ok("answered"),
            ),
            (
                InTxn,
                "tpc_begin",
                vec![s("t2"), i(1), i(2), nil.clone()],
                Err(txn_error(
                    "Multiple simultaneous tpc_begin requests from one client.",
                )),
            ),
            (
                Registered,
                "tpc_begin",
                vec![s("t1"), i(1), i(2), nil.clone()],
                Err(wrong("user", "1")),
            ),
            (
                Registered,
                "tpc_begin",
                vec![s("t1"), s("u"), s("d"), nil.clone()],
                run.clone(),
            ),
            (
                Registered,
                "storea",
                vec![nil.clone(), nil.clone(), nil.clone(), s("t1")],
                Err(txn_error("no current transaction: storea()")),
            ),
            (
                InTxn,
                "storea",
                vec![nil.clone(), nil.clone(), nil.clone(), s("t2")],
                Err(txn_error(
                    "storea(\"t2\") invalid; current transaction = \"t1\"",
                )),
            ),
            (
                ReadOnlyInTxn,
                "storea",
                vec![nil.clone(), nil.clone(), nil.clone(), s("t1")],
                Err(Error::ReadOnly),
            ),
            (
                InTxn,
                "storea",
                vec![nil.clone(), nil.clone(), nil.clone(), s("t1")],
                Err(wrong("oid", "nil")),
            ),
            (
                InTxn,
                "undoa",
                vec![s("not an id"), s("t2")],
                Err(txn_error(
                    "undoa(\"t2\") invalid; current transaction = \"t1\"",
                )),
            ),
            (
                Unregistered,
                "storeBlobShared",
                vec![nil.clone(), nil.clone(), nil.clone(), nil.clone(), s("t1")],
                Err(first()),
            ),
            (
                Registered,
                "storeBlobShared",
                vec![nil.clone(), nil.clone(), nil.clone(), nil.clone(), s("t1")],
                Err(txn_error("no current transaction: storeBlobShared()")),
            ),
            (Unregistered, "iterator_start", vec![i(1)], Err(first())),
            (
                Registered,
                "iterator_start",
                vec![i(1)],
                Err(wrong("start", "1")),
            ),
            (
                Unregistered,
                "iterator_next",
                vec![s("x")],
                Err(wrong("iid", "\"x\"")),
            ),
            (
                Unregistered,
                "storeBlobChunk",
                vec![i(5)],
                Err(wrong("chunk", "5")),
            ),
            // vote and tpc_finish check the transaction themselves.
            (Unregistered, "vote", vec![s("t9")], run.clone()),
            (Registered, "tpc_finish", vec![s("t9")], run.clone()),
        ];
        for (g, method, args, want) in cases {
            let (sess, mut st) = given(g);
            let msg = Message {
                msgid: Value::from(1),
                flags: 0,
                method: method.into(),
                args: Value::Array(args.clone()),
            };
            let ordered = methods::lookup(method).map(|m| m.kind) != Some(Kind::Concurrent);
            let got = admit(&sess, ordered.then_some(&mut st), &msg).map(|a| match a {
                Admitted::Run(_) => "run",
                Admitted::Answered(_) => "answered",
            });
            assert_eq!(got, want, "{g:?} {method}{args:?}");
        }
    }
}
