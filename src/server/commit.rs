//! The two-phase commit of one session: `vote` (taking the storage's
//! commit lock, merging conflicts on the server when a resolver is
//! configured, keeping the lock while the client resolves the rest) and
//! `tpc_finish` (answered before the lock passes on, or handed to the
//! commit thread for group commit, [`super::committer`], which also
//! announces a committed transaction to every other client).

use super::commit_lock::Acquire;
use super::committer::{announce, Finished, Msg as CommitMsg};
use super::session::{check_txn, release_lock, Flow, Session, State};
use super::status::info_message;
use super::wire::{conflict_value, oids_value};
use super::{lock, Out, Shared, StorageEntry};
use crate::locks::write;
use crate::storage::{Error, Oid, Op, Result, Tid, Txn, Vote};
use crate::zeo::message::{self, tid_value, Message};
use rmpv::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Keep only the last store of each oid: after client-side conflict
/// resolution the client re-stores the resolved state in the same
/// transaction, and that re-store supersedes the conflicting one.
pub(crate) fn compact_ops(ops: &[Op]) -> Vec<Op> {
    let mut last_store: HashMap<Oid, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Store { oid, .. } | Op::StoreBlob { oid, .. } = op {
            last_store.insert(*oid, i);
        }
    }
    ops.iter()
        .enumerate()
        .filter(|(i, op)| match op {
            Op::Store { oid, .. } | Op::StoreBlob { oid, .. } => last_store.get(oid) == Some(i),
            _ => true,
        })
        .map(|(_, op)| op.clone())
        .collect()
}

/// Run the vote with the commit lock held.
///
/// Conflicts are first merged on the server when a resolver is configured
/// ([`resolve_on_server`]); what is left goes back to the client (ZEO 5
/// client-side resolution) and the session *keeps the commit lock* for its
/// re-vote ([`super::commit_lock`]).
pub(super) fn do_vote(shared: &Shared, sess: &Session, st: &mut State) -> Result<Value> {
    let entry = sess.entry()?.clone();
    let Some(txn) = st.txn.as_mut() else {
        release_lock(shared, &entry, sess.id);
        return Err(Error::Transaction("no current transaction: vote()".into()));
    };
    txn.conflicts.clear();
    let mut whole = Txn {
        meta: txn.meta.clone(),
        tid: txn.tid,
        status: txn.status,
        ops: compact_ops(&txn.ops),
    };
    let mut outcome = match &txn.blob_failed {
        // A blob of this transaction did not arrive whole.
        Some(why) => Err(Error::Io(why.clone())),
        None => entry.storage.tpc_vote(&whole),
    };
    if let Some(resolver) = &entry.resolver {
        // Nothing else commits while we hold the lock, so one merge per
        // conflict settles it; a second round only covers a storage that
        // reports conflicts one at a time.
        for _ in 0..SERVER_RESOLVE_ROUNDS {
            let Ok(Vote::Conflicts(conflicts)) = &outcome else {
                break;
            };
            let merged = resolve_on_server(entry.storage.as_ref(), resolver.as_ref(), conflicts);
            if merged.is_empty() {
                break;
            }
            entry
                .stats
                .conflicts_resolved
                .fetch_add(merged.len() as u64, Ordering::Relaxed);
            for op in merged {
                if let Op::Store { oid, .. } = &op {
                    txn.server_resolved.push(*oid);
                }
                txn.ops.push(op);
            }
            whole.ops = compact_ops(&txn.ops);
            outcome = entry.storage.tpc_vote(&whole);
        }
    }
    match outcome {
        Ok(Vote::Prepared {
            mut resolved,
            invalidated,
            ..
        }) => {
            txn.locked = true;
            txn.invalidated = invalidated;
            for oid in &txn.server_resolved {
                if !resolved.contains(oid) {
                    resolved.push(*oid);
                }
            }
            Ok(oids_value(&resolved))
        }
        Ok(Vote::Conflicts(conflicts)) => {
            entry
                .stats
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            wait_published(&entry, conflicts.iter().map(|c| c.committed).max());
            // Keep the lock while the client resolves: its re-vote cannot
            // meet a newer commit of these objects.
            lock(&entry.lock).conflicts_answered(sess.id, Instant::now());
            txn.conflicts = conflicts
                .iter()
                .map(|c| (c.oid, c.committed, c.read))
                .collect();
            Ok(Value::Array(conflicts.iter().map(conflict_value).collect()))
        }
        Err(e) => {
            entry.storage.tpc_abort();
            st.txn = None;
            entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
            if let Error::Conflict { committed, .. } = &e {
                entry.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                wait_published(&entry, Some(*committed));
            }
            release_lock(shared, &entry, sess.id);
            Err(e)
        }
    }
}

/// How many times a vote merges conflicts on the server before it answers
/// what is left to the client.
const SERVER_RESOLVE_ROUNDS: usize = 2;

/// Merge store conflicts on the server, as a Python ZEO server does by
/// default (`tryToResolveConflict` under the commit lock): for each
/// conflict, the state the client read, the committed state and the
/// client's new state go to the resolver; each merge becomes a store of the
/// merged state over the committed serial. A conflict whose states cannot
/// be loaded, or whose class cannot merge (or whose merge fails or times
/// out), is left for the client.
fn resolve_on_server(
    storage: &dyn crate::storage::Storage,
    resolver: &dyn crate::storage::resolve::ConflictResolver,
    conflicts: &[crate::storage::Conflict],
) -> Vec<Op> {
    let mut merged = Vec::new();
    for c in conflicts {
        let states = storage
            .load_serial(c.oid, c.read)
            .and_then(|old| Ok((old, storage.load_serial(c.oid, c.committed)?)));
        let (old, committed) = match states {
            Ok(s) => s,
            Err(e) => {
                log::debug!("conflict on {} left to the client: {e}", c.oid);
                continue;
            }
        };
        match resolver.resolve(c.oid, &old, &committed, &c.data) {
            Ok(data) if !data.is_empty() => merged.push(Op::Store {
                oid: c.oid,
                serial: c.committed,
                data,
            }),
            Ok(_) => log::debug!("conflict on {} left to the client: empty merge", c.oid),
            Err(why) => log::debug!("conflict on {} left to the client: {why}", c.oid),
        }
    }
    merged
}

/// The error for a `tpc_finish` whose transaction's last vote answered
/// conflicts (a client that gave up resolving and finished anyway, as ZEO
/// 6's `ClientStorage.tpc_vote` does after nine conflicting votes):
/// ConflictError naming the object, which applications retry.
fn finish_after_conflicts(oid: Oid, committed: Tid, read: Tid) -> Error {
    Error::Conflict {
        oid,
        committed,
        read,
        message: "database conflict error: tpc_finish() after a vote that answered unresolved \
                  conflicts; the transaction was aborted, retry it"
            .into(),
        read_conflict: false,
        class_name: None,
    }
}

/// With group commit a vote can conflict with a transaction that is logged
/// but not yet published. Answer only once it is published, so the client
/// has its invalidation before the conflict (as with ZEO, where the next
/// vote starts after the invalidations are queued) and a retry reads the
/// new state. Bounded: after [`PUBLISH_WAIT`] the conflict goes out anyway.
fn wait_published(entry: &StorageEntry, committed: Option<Tid>) {
    let Some(tid) = committed else { return };
    if !entry.storage.group_commit() {
        return;
    }
    let deadline = Instant::now() + PUBLISH_WAIT;
    while entry
        .storage
        .last_transaction()
        .is_ok_and(|last| last < tid)
    {
        if Instant::now() > deadline {
            log::warn!(
                "storage {:?}: transaction {tid} not published after {PUBLISH_WAIT:?}; \
                 reporting the conflict with it anyway",
                entry.name
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// How long a conflicting vote waits for the transaction it conflicts with.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `vote(id)`: run now if the commit lock is free, else park the session's
/// queue until [`super::commit_lock`] hands the lock over.
pub(super) fn vote(
    shared: &Shared,
    sess: &Session,
    st: &mut State,
    msg: &Message,
    id: &Value,
) -> Flow {
    let entry = match sess.entry() {
        Ok(e) => e.clone(),
        Err(e) => return Flow::Reply(Err(e)),
    };
    match check_txn(sess, st, id, &msg.method) {
        Err(e) => return Flow::Reply(Err(e)),
        // Voted already: the storage holds it prepared; voting again would
        // ask the storage to prepare a second time.
        Ok(t) if t.locked => {
            return Flow::Reply(Err(Error::Transaction(
                "vote() called twice for the same transaction".into(),
            )))
        }
        Ok(_) => {}
    }
    // Mark parked before asking for the lock so a resume cannot race the drain loop.
    lock(&sess.queue).parked = true;
    let granted = lock(&entry.lock).acquire(sess.id, Instant::now());
    match granted {
        Acquire::Granted => {
            lock(&sess.queue).parked = false;
            Flow::Reply(do_vote(shared, sess, st))
        }
        Acquire::Queued { position } => {
            log::debug!(
                "vote from {} waits for the commit lock of {:?} (position {position})",
                sess.peer,
                entry.name
            );
            if let Some(t) = st.txn.as_mut() {
                t.pending_vote = Some(msg.msgid.clone());
            }
            Flow::Parked
        }
    }
}

/// `tpc_finish(id)`: answered as it completes (see [`finish_txn`]); only
/// an error is left for the caller to answer.
pub(super) fn finish(
    shared: &Shared,
    sess: &Session,
    st: &mut State,
    msg: &Message,
    id: &Value,
) -> Flow {
    match finish_txn(shared, sess, st, msg, id) {
        Ok(()) => Flow::Done,
        Err(e) => Flow::Reply(Err(e)),
    }
}

/// `tpc_finish`. Success is answered here, before the commit lock passes
/// on, or by the commit thread once durable ([`super::committer`]); an
/// error is returned for the caller to answer.
fn finish_txn(
    shared: &Shared,
    sess: &Session,
    st: &mut State,
    msg: &Message,
    id: &Value,
) -> Result<()> {
    let entry = sess.entry()?.clone();
    let t = check_txn(sess, st, id, &msg.method)?;
    if !t.locked {
        if let Some(&(oid, committed, read)) = t.conflicts.first() {
            log::info!(
                "connection {} finished a transaction whose vote answered conflicts ({oid}); \
                 aborting it with ConflictError",
                sess.id
            );
            st.txn = None;
            entry.stats.aborts.fetch_add(1, Ordering::Relaxed);
            entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
            release_lock(shared, &entry, sess.id);
            return Err(finish_after_conflicts(oid, committed, read));
        }
        return Err(Error::Transaction(
            "tpc_finish() called before a successful vote()".into(),
        ));
    }
    let invalidated = std::mem::take(&mut t.invalidated);
    let group = entry.storage.group_commit();
    // Without group commit, making the transaction visible and queueing its
    // invalidations happen together under the visibility lock (see `announce`).
    let visible = (!group).then(|| write(&entry.visibility));
    let result = if group {
        entry.storage.finish_log()
    } else {
        entry.storage.tpc_finish()
    };
    st.txn = None;
    entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
    let tid = match result {
        Ok(tid) => tid,
        Err(e) => {
            log::error!(
                "tpc_finish on storage {:?} failed: {e}; the transaction is aborted",
                entry.name
            );
            drop(visible);
            entry.storage.tpc_abort();
            release_lock(shared, &entry, sess.id);
            return Err(e);
        }
    };
    if group {
        // Logged: hand it to the commit thread *before* the lock passes on,
        // so transactions reach that thread (and are published) in tid order.
        let finished = Finished {
            conn: sess.id,
            msgid: (!msg.is_oneway()).then(|| msg.msgid.clone()),
            tid,
            invalidated,
        };
        let unsent = match &entry.committer {
            Some(tx) => tx.send(CommitMsg::Finished(finished)).err(),
            None => Some(CommitMsg::Finished(finished)),
        };
        // The next voter may go on while this one becomes durable.
        release_lock(shared, &entry, sess.id);
        if let Some(CommitMsg::Finished(f)) = unsent {
            log::error!(
                "storage {:?}: no commit thread; finishing on this worker",
                entry.name
            );
            super::committer::complete(shared, &entry, vec![f]);
        }
        return Ok(());
    }
    announce(shared, &entry, sess.id, tid, &invalidated);
    drop(visible);
    shared.send(Out::Send(sess.id, info_message(&entry)));
    // Answer before the lock passes on: the next transaction's
    // invalidation must not reach this client before the tid of its own
    // commit (ZEO's client cache refuses a tid older than one it has seen).
    if !msg.is_oneway() {
        shared.send(Out::Send(
            sess.id,
            message::encode_reply(&msg.msgid, &tid_value(tid)),
        ));
    }
    release_lock(shared, &entry, sess.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Data;
    use std::sync::Arc;

    #[test]
    fn compact_keeps_last_store_per_oid() {
        let d = |b: &[u8]| -> Data { Arc::from(b) };
        let ops = vec![
            Op::Store {
                oid: Oid(1),
                serial: Tid(1),
                data: d(b"a"),
            },
            Op::CheckCurrent {
                oid: Oid(3),
                serial: Tid(1),
            },
            Op::Store {
                oid: Oid(2),
                serial: Tid(1),
                data: d(b"b"),
            },
            Op::Store {
                oid: Oid(1),
                serial: Tid(5),
                data: d(b"resolved"),
            },
        ];
        let out = compact_ops(&ops);
        assert_eq!(out.len(), 3);
        match &out[2] {
            Op::Store { oid, serial, data } => {
                assert_eq!(
                    (*oid, *serial, &data[..]),
                    (Oid(1), Tid(5), &b"resolved"[..])
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
