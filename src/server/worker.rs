//! The worker loop: the pool's threads take [`Job`]s and run them.
//!
//! Concurrent reads run at once (point reads under the storage's
//! visibility lock, see [`super::committer::announce`]); a session's
//! ordered queue is drained one message at a time until it is empty or
//! parked on a vote; a parked vote is resumed once its session holds the
//! commit lock; a departed connection's transaction is aborted. Every
//! request runs under [`guarded`], so a panic becomes an error reply.
//! Point reads may also be answered on the event loop itself
//! ([`run_inline`], [`try_load_inline`]).

use super::commit::do_vote;
use super::guard::guarded;
use super::handlers::{concurrent, loaded_value, ordered};
use super::methods;
use super::request::Request;
use super::session::{release_lock, Flow, Session};
use super::{lock, ConnId, Job, Out, Shared};
use crate::handoff::Receiver;
use crate::locks::{read, write};
use crate::storage::{Error, Result};
use crate::zeo::message::{self, Message};
use rmpv::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The worker thread body.
pub(crate) fn run(shared: Arc<Shared>, jobs: Receiver<Job>) {
    while let Some(job) = jobs.recv() {
        match job {
            Job::Stop => break,
            Job::Probe(answered) => {
                answered.fetch_add(1, Ordering::AcqRel);
            }
            Job::Concurrent(id, mut msgs) => {
                if let Some(sess) = shared.session(id) {
                    // Reads that are round trips to other servers run side
                    // by side: hand all but the first back to the pool.
                    let remote = sess
                        .storage
                        .get()
                        .is_some_and(|e| e.storage.reads_wait_on_network());
                    if remote && msgs.len() > 1 {
                        for m in msgs.split_off(1) {
                            let _ = shared.jobs.send(Job::Concurrent(id, vec![m]));
                        }
                    }
                    // Point-read replies are queued under the storage's
                    // visibility lock (see `announce`), so a client never
                    // receives a state older than an invalidation it has
                    // already seen. Long reads (pack, undoLog, history...)
                    // run without it: publication must not wait for them.
                    let entry = sess.storage.get().cloned();
                    let mut visible = None;
                    let mut replies = Vec::with_capacity(msgs.len());
                    for msg in &msgs {
                        let point = methods::is_point_read(&msg.method);
                        if !point && visible.is_some() {
                            shared.send(Out::SendMany(id, std::mem::take(&mut replies)));
                            visible = None;
                        }
                        if point && visible.is_none() {
                            visible = entry.as_ref().map(|e| read(&e.visibility));
                        }
                        let result = guarded(&msg.method, || concurrent(&shared, &sess, msg))
                            .and_then(|r| r);
                        if msg.is_oneway() && result.is_err() {
                            reply(&shared, id, msg, result);
                        } else if let Some(payload) = encode_reply(id, msg, result) {
                            replies.push(payload);
                        }
                    }
                    shared.send(Out::SendMany(id, replies));
                    drop(visible);
                }
            }
            Job::Drain(id) => {
                if let Some(sess) = shared.session(id) {
                    drain(&shared, &sess);
                }
            }
            Job::Resume(id) => match shared.session(id) {
                Some(sess) => resume(&shared, &sess),
                None => log::debug!("resume for departed connection {id}"),
            },
            Job::Disconnected(id) => disconnected(&shared, id),
        }
    }
}

/// Answer a point read on the calling (event loop) thread: the reply
/// payload, `None` for a one-way call, `Err` when the connection must close.
pub(crate) fn run_inline(
    shared: &Shared,
    sess: &Session,
    msg: &Message,
) -> std::result::Result<Option<Vec<u8>>, ()> {
    let entry = sess.storage.get().cloned();
    let _visible = entry.as_ref().map(|e| read(&e.visibility));
    let result = guarded(&msg.method, || concurrent(shared, sess, msg)).and_then(|r| r);
    if msg.is_oneway() && result.is_err() {
        return Err(());
    }
    Ok(encode_reply(sess.id, msg, result))
}

/// A `loadBefore` answered on the event loop when the storage can do it
/// without waiting ([`crate::storage::Storage::load_before_nowait`]): the
/// reply payload, or `None` to hand the call to a worker as usual.
pub(crate) fn try_load_inline(sess: &Session, msg: &Message) -> Option<Vec<u8>> {
    if msg.is_oneway() || !methods::is_point_read(&msg.method) {
        return None;
    }
    let Ok(Request::LoadBefore { oid, before }) = methods::decode(msg) else {
        return None;
    };
    let entry = sess.storage.get()?;
    // Never wait here (this is the event loop): a publication in progress
    // or waiting sends the load to a worker.
    let _visible = crate::locks::try_read(&entry.visibility)?;
    let loaded = guarded(&msg.method, || {
        entry.storage.load_before_nowait(oid, before)
    })
    .ok()
    .flatten()?;
    entry.stats.loads.fetch_add(1, Ordering::Relaxed);
    let result = loaded.map(loaded_value);
    encode_reply(sess.id, msg, result)
}

fn reply(shared: &Shared, id: ConnId, msg: &Message, result: Result<Value>) {
    if msg.is_oneway() {
        if let Err(e) = result {
            log::error!(
                "closing connection {id}: one-way {} failed: {e}",
                msg.method
            );
            shared.send(Out::Close(id));
        }
        return;
    }
    if let Some(payload) = encode_reply(id, msg, result) {
        shared.send(Out::Send(id, payload));
    }
}

/// The reply frame for a call (`None` for one-way messages).
fn encode_reply(id: ConnId, msg: &Message, result: Result<Value>) -> Option<Vec<u8>> {
    if msg.is_oneway() {
        return None;
    }
    Some(match &result {
        Ok(v) => message::encode_reply(&msg.msgid, v),
        Err(e) => {
            // A refused register is logged by `register` itself (an HA
            // standby's refusal is routine).
            let routine = matches!(e, Error::PosKey(_) | Error::Conflict { .. })
                || (msg.method == "register" && matches!(e, Error::Disconnected(_)));
            if !routine {
                log::warn!("{} from connection {id} failed: {e}", msg.method);
            }
            message::encode_error(&msg.msgid, e)
        }
    })
}

fn drain(shared: &Arc<Shared>, sess: &Arc<Session>) {
    loop {
        let Some((msg, resume_reading)) = sess.next_ordered() else {
            return;
        };
        if resume_reading {
            shared.send(Out::ResumeReading(sess.id));
        }
        let flow = guarded(&msg.method, || ordered(shared, sess, &msg))
            .unwrap_or_else(|e| Flow::Reply(Err(e)));
        match flow {
            Flow::Reply(r) if sent_away(sess, &msg, &r) => {
                sess.mark_closed();
                shared.send(Out::Close(sess.id));
                return;
            }
            Flow::Reply(r) => {
                if msg.is_oneway() && r.is_err() {
                    // ZEO closes the connection; run nothing more from it.
                    sess.mark_closed();
                }
                reply(shared, sess.id, &msg, r)
            }
            Flow::Done => {}
            Flow::Parked => {
                // Parked unless `resume` already ran the vote.
                if sess.stop_if_parked() {
                    return;
                }
            }
        }
    }
}

/// Whether `result` of `msg` sends the client away: its storage refused a
/// write because this controller does not lead
/// ([`crate::storage::Storage::sends_writers_away`]).
fn sent_away(sess: &Session, msg: &Message, result: &Result<Value>) -> bool {
    match result {
        Err(e) if msg.method != "register" => sess
            .entry()
            .is_ok_and(|entry| entry.storage.sends_writers_away(&msg.method, e)),
        _ => false,
    }
}

fn resume(shared: &Arc<Shared>, sess: &Arc<Session>) {
    let outcome = guarded("vote", || {
        let mut st = lock(&sess.state);
        let msgid = st.txn.as_mut().and_then(|t| t.pending_vote.take());
        msgid.map(|m| (m, do_vote(shared, sess, &mut st)))
    });
    match outcome {
        Ok(Some((msgid, result))) => {
            let msg = Message {
                msgid,
                flags: 0,
                method: "vote".into(),
                args: Value::Nil,
            };
            if sent_away(sess, &msg, &result) {
                sess.mark_closed();
                shared.send(Out::Close(sess.id));
            } else {
                reply(shared, sess.id, &msg, result);
            }
        }
        Ok(None) => {
            // The transaction went away (aborted or disconnected): pass the lock on.
            if let Ok(entry) = sess.entry() {
                release_lock(shared, entry, sess.id);
            }
        }
        Err(e) => log::error!("resuming a vote failed: {e}"),
    }
    if sess.unpark() {
        let _ = shared.jobs.send(Job::Drain(sess.id));
    }
}

fn disconnected(shared: &Arc<Shared>, id: ConnId) {
    let sess = write(&shared.sessions).remove(&id);
    let Some(sess) = sess else { return };
    let Some(entry) = sess.storage.get() else {
        return;
    };
    write(&entry.clients).remove(&id);
    let mut st = lock(&sess.state);
    if let Some(txn) = st.txn.take() {
        log::info!(
            "connection {id} from {} disconnected during a transaction ({}); aborting it",
            sess.peer,
            if txn.locked { "locked" } else { "unlocked" }
        );
        if txn.locked {
            entry.storage.tpc_abort();
        }
        entry.stats.aborts.fetch_add(1, Ordering::Relaxed);
        entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
    }
    drop(st);
    release_lock(shared, entry, id);
}
