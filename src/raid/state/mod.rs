//! The array's decisions, as pure functions: no sockets, threads or clocks
//! (time is passed in). [`super::RaidStorage`] does the IO and asks these.
//!
//! - [`BackendState`] and [`array_state`]: what each mirror is and what
//!   that makes the array.
//! - [`classify`]: whether a backend's error, for the call it answered,
//!   is *its* failure (degrade it, ask another) or a storage answer to
//!   compare with the others' (a ZODB exception that call may raise);
//!   [`on_read_failure`]: what a read does with a failed backend.
//! - [`decide`]: the vote among the backends' answers to one call. The
//!   answer given by most backends wins; a backend that failed or answered
//!   differently is degraded with the reason. **Tie rule:** among groups of
//!   equal size, the group that contains the backend listed first in the
//!   configuration wins (never chance; the operator orders backends by
//!   trust).
//! - [`write_allowed`]: whether enough backends remain to accept writes
//!   (`min-optimal`), and what the configured `fail-mode` makes of it.
//! - [`next_tid`]: the tid the array gives the next transaction.
//! - [`credit`]: the recovery rate guarantee (`recovery-ratio`): when a
//!   commit may go ahead while a backend recovers.
//! - [`inflight`]: which backends hold the array's transactions and how
//!   far, so one that leaves mid-commit has its transaction ended;
//! - [`recovery`]: where a recovery starts (or why it must not), its
//!   progress figures, and auto-recovery's backoff.

pub mod credit;
pub mod gate;
pub mod inflight;
pub mod offsite;
pub mod reason;
pub mod recovery;
pub mod roles;

pub use credit::{Admission, Credit};
pub use reason::{Reason, RecoveryError};

use crate::storage::{timestamp, Error, Oid, Tid};
use std::fmt;
use std::time::Duration;

/// One backend's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Receives every write; may serve reads.
    Optimal,
    /// Dropped out of the array; the reason says why and what to do.
    Degraded(Reason),
    /// Being recovered (the reason it was degraded): not written to by
    /// commits and never read from until the recovery rejoins it.
    Recovering(Reason),
}

impl BackendState {
    pub fn is_optimal(&self) -> bool {
        matches!(self, BackendState::Optimal)
    }

    /// `optimal` | `degraded`, as status documents show it.
    pub fn label(&self) -> &'static str {
        self.role().label()
    }

    /// As the status document names it.
    pub fn role(&self) -> crate::status::Role {
        match self {
            BackendState::Optimal => crate::status::Role::Optimal,
            BackendState::Degraded(_) => crate::status::Role::Degraded,
            BackendState::Recovering(_) => crate::status::Role::Recovering,
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            BackendState::Optimal => None,
            BackendState::Degraded(r) | BackendState::Recovering(r) => Some(r),
        }
    }
}

/// The array as a whole (a type of the status document).
pub use crate::status::ArrayState;

/// The array's state from its backends' states.
pub fn array_state(states: &[BackendState], min_optimal: usize) -> ArrayState {
    let optimal = states.iter().filter(|s| s.is_optimal()).count();
    let recovering = states
        .iter()
        .filter(|s| matches!(s, BackendState::Recovering(_)))
        .count();
    array_state_of(optimal, recovering, states.len(), min_optimal)
}

/// The array's state from how many of its `total` backends are optimal
/// and how many are recovering.
pub fn array_state_of(
    optimal: usize,
    recovering: usize,
    total: usize,
    min_optimal: usize,
) -> ArrayState {
    if optimal < min_optimal.max(1) {
        ArrayState::Failed
    } else if optimal == total {
        ArrayState::Optimal
    } else if recovering > 0 {
        ArrayState::Recovering
    } else {
        ArrayState::Degraded
    }
}

/// What the array does when too few backends remain (`fail-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    #[default]
    /// Every call fails with a clear error.
    Close,
    /// Reads go on; writes get ReadOnlyError.
    ReadOnly,
}

/// Whether writes are accepted with `optimal` backends left, or the error
/// to give instead.
pub fn write_allowed(
    optimal: usize,
    min_optimal: usize,
    mode: FailMode,
    name: &str,
) -> Result<(), Error> {
    if optimal >= min_optimal.max(1) {
        return Ok(());
    }
    Err(match mode {
        FailMode::ReadOnly => Error::ReadOnly,
        FailMode::Close => Error::Disconnected(format!(
            "RAID array {name:?} has failed: {optimal} optimal backend(s), min-optimal is \
             {min_optimal}; see the zeoraid log for why each backend was degraded, repair \
             them and restart or recover them"
        )),
    })
}

/// Whether reads are served in the array's state.
pub fn read_allowed(state: ArrayState, mode: FailMode) -> bool {
    state != ArrayState::Failed || mode == FailMode::ReadOnly
}

/// How a backend's error counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backend failed (connection, timeout, disk, an unexpected
    /// exception): degrade it, the others carry on.
    Failure,
    /// A ZODB answer (POSKeyError, ConflictError, UndoError, ReadOnly...):
    /// compared with the other backends' answers like any result.
    Answer,
}

/// Which kind of call a backend answered, for [`classify`]: the errors
/// that are storage answers differ by call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A read (`loadBefore`, `loadSerial`, `history`, `loadBlob`,
    /// `undoLog`, iterators): the only storage answers are "no such
    /// object" (`POSKeyError`) and "not supported here"; anything else — a
    /// `ValueError` a server raised because it could not encode its
    /// answer, any exception outside ZODB's, a protocol error — is that
    /// backend failing, and another mirror is asked.
    Read,
    /// A vote or a pack: ZODB's exceptions (conflicts, undo errors,
    /// read-only, a `ValueError` on bad input, ...) are answers compared
    /// among the backends; connection, disk and foreign exceptions, and
    /// `StorageError`s, are failures.
    Write,
    /// A finish or `make_durable`: every error is a failure (the backend
    /// may or may not hold the transaction).
    Finish,
}

/// Sort a backend's error, in answer to a `call`, into [`ErrorKind`].
pub fn classify(call: Call, e: &Error) -> ErrorKind {
    match (call, e) {
        (_, Error::Disconnected(_) | Error::Io(_)) | (Call::Finish, _) => ErrorKind::Failure,
        (Call::Read, Error::PosKey(_) | Error::Unsupported(_)) => ErrorKind::Answer,
        (Call::Read, _) => ErrorKind::Failure,
        (Call::Write, Error::Remote { class, .. }) if !class.starts_with("ZODB.POSException.") => {
            ErrorKind::Failure
        }
        (Call::Write, Error::Remote { class, .. })
            if class.ends_with(".StorageError") || class.ends_with(".StorageTransactionError") =>
        {
            ErrorKind::Failure
        }
        (Call::Write, _) => ErrorKind::Answer,
    }
}

/// Whether a backend's `answer` to a `call`, which took `took` against
/// the array's `deadline` (`backend-timeout`), is the backend timing out:
/// a failure that came when the call's own deadline (the same
/// backend-timeout) fired is the same event as a fan-out timeout, and is
/// reported as one ([`Reason::TimedOut`]); a storage answer, however late,
/// is an answer.
pub fn timed_out<T>(
    call: Call,
    answer: &Result<T, Error>,
    took: Duration,
    deadline: Duration,
) -> bool {
    match answer {
        Err(e) => classify(call, e) == ErrorKind::Failure && took >= deadline,
        Ok(_) => false,
    }
}

/// What a backend's answer to the array's finish of `tid` means: how its
/// share of the transaction ended (for [`inflight`]), at which tid, and
/// whether it leaves the optimal set. `done` is how a finish that took
/// ends (`Logged` for group commit's `finish_log`, else `Committed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishJudged {
    pub end: inflight::FinishEnd,
    pub at: Tid,
    pub degrade: Option<Reason>,
}

/// Judge one backend's finish answer (see [`FinishJudged`]): the tid the
/// array gave is success; another tid means it committed the transaction
/// under a tid the others do not have (degraded: recover it); an error
/// means it may or may not hold it (unknown, degraded).
pub fn judge_finish(
    what: &str,
    tid: Tid,
    answer: std::result::Result<Tid, &Error>,
    done: inflight::FinishEnd,
) -> FinishJudged {
    match answer {
        Ok(t) if t == tid => FinishJudged {
            end: done,
            at: tid,
            degrade: None,
        },
        Ok(t) => FinishJudged {
            end: done,
            at: t,
            degrade: Some(Reason::WrongTid {
                what: what.to_string(),
                committed: t,
                given: tid,
            }),
        },
        Err(e) => FinishJudged {
            end: inflight::FinishEnd::Unknown,
            at: tid,
            degrade: Some(Reason::FinishFailed {
                what: what.to_string(),
                tid,
                error: e.to_string(),
            }),
        },
    }
}

/// What a read does with a backend that failed it ([`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// Degrade it and ask another optimal backend.
    Degrade,
    /// Keep it and ask the others; the client gets this error only if none
    /// of them answers. It is up (it answered) and degrading it would
    /// leave fewer than `min-optimal` optimal backends, failing the whole
    /// array over one read.
    Relay,
}

/// [`ReadFailure`] for a backend that failed a read with `e`, when
/// `others` other backends are optimal.
pub fn on_read_failure(e: &Error, others: usize, min_optimal: usize) -> ReadFailure {
    let answered = !matches!(e, Error::Disconnected(_) | Error::Io(_));
    if answered && others < min_optimal.max(1) {
        ReadFailure::Relay
    } else {
        ReadFailure::Degrade
    }
}

/// What a read does with a backend that answered "no such object"
/// (`POSKeyError`) once another optimal backend has been asked too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingObject {
    /// Another backend has the object and no pack runs: the first one lost
    /// data the array committed; degrade it (recovery copies it back).
    Degrade,
    /// Another backend has it, but a pack is running: the backends pack one
    /// after another, so one may have dropped it first. Serve the other's
    /// answer and keep both.
    Tolerate,
    /// No other backend has it (or none could be asked): the object does
    /// not exist and the POSKeyError is the client's answer.
    Believe,
}

/// [`MissingObject`] for a POSKeyError from one backend, given whether an
/// other optimal backend `found` the object and whether a pack is running.
pub fn on_missing_object(found: bool, packing: bool) -> MissingObject {
    match (found, packing) {
        (false, _) => MissingObject::Believe,
        (true, true) => MissingObject::Tolerate,
        (true, false) => MissingObject::Degrade,
    }
}

/// One backend's reply to a call, reduced to what is compared: `Ok(key)`,
/// or `Err(reason)` when the backend failed (or missed the deadline).
pub type Reply<K> = Result<K, String>;

/// The outcome of a vote among backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<K> {
    /// The winning answer; `None` when every backend failed.
    pub winner: Option<K>,
    /// Positions (in the input) of the backends that gave the winner.
    pub agree: Vec<usize>,
    /// Backends to degrade: position and reason.
    pub degrade: Vec<(usize, String)>,
}

/// Vote among `replies`, given in configuration order (position 0 is the
/// backend listed first). Most agreeing backends win; ties go to the group
/// holding the earliest-listed backend. Failed backends and those that
/// disagree with the winner are to be degraded.
pub fn decide<K: PartialEq + Clone + fmt::Debug>(replies: &[Reply<K>]) -> Decision<K> {
    // Groups of equal answers: (answer, positions), in order of first appearance.
    let mut groups: Vec<(&K, Vec<usize>)> = Vec::new();
    let mut degrade = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        match r {
            Err(why) => degrade.push((i, why.clone())),
            Ok(k) => match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, members)) => members.push(i),
                None => groups.push((k, vec![i])),
            },
        }
    }
    // Largest group; on equal size the earlier-formed one (its first member
    // is listed earlier) because max_by_key keeps the last maximum: reverse.
    let best = groups
        .iter()
        .enumerate()
        .max_by_key(|(gi, (_, members))| (members.len(), std::cmp::Reverse(*gi)))
        .map(|(gi, _)| gi);
    let Some(best) = best else {
        return Decision {
            winner: None,
            agree: Vec::new(),
            degrade,
        };
    };
    let winner = groups[best].0.clone();
    for (gi, (k, members)) in groups.iter().enumerate() {
        if gi == best {
            continue;
        }
        for &i in members {
            degrade.push((
                i,
                format!(
                    "disagreed with the other backends: answered {k:?} where {} answered {winner:?}",
                    groups[best].1.len()
                ),
            ));
        }
    }
    degrade.sort_by_key(|(i, _)| *i);
    Decision {
        agree: groups[best].1.clone(),
        winner: Some(winner),
        degrade,
    }
}

/// A backend's answer to a vote, reduced to what the backends must agree on.
#[derive(Clone, Debug, PartialEq)]
pub enum VoteKey {
    /// Prepared; these oids' conflicts were resolved (or undone) by the backend.
    Prepared { resolved: Vec<Oid> },
    /// Conflicts for the client to resolve: (oid, committed, read), sorted.
    Conflicts(Vec<(Oid, Tid, Tid)>),
    /// A `ConflictError` raised on this oid (a backend that resolves
    /// conflicts itself and could not).
    ConflictError(Oid),
    /// Another ZODB error, by class name.
    Refused(String),
}

/// Make answers that differ only in *where* conflicts are resolved agree.
///
/// A backend that resolves conflicts itself (Python ZEO's default) answers
/// a vote with "prepared, these oids resolved" or raises `ConflictError`,
/// where one that leaves resolution to the client (zeoraid's storages,
/// Python ZEO with `client-conflict-resolution true`) answers conflict
/// dicts. Both are right; the array cannot keep the backend's own merge
/// (the others do not have it), so it goes the client's way: when some
/// backend reports conflicts, a backend that resolved or refused only
/// those oids is counted as reporting the same conflicts (the array aborts
/// what it prepared), and the client resolves once for all. Returns
/// whether any answer was changed.
pub fn unify_resolution(replies: &mut [Reply<VoteKey>]) -> bool {
    let Some(conflicts) = replies.iter().find_map(|r| match r {
        Ok(VoteKey::Conflicts(c)) => Some(c.clone()),
        _ => None,
    }) else {
        return false;
    };
    let oids: Vec<Oid> = conflicts.iter().map(|c| c.0).collect();
    let mut changed = false;
    for r in replies.iter_mut() {
        let same = match r {
            Ok(VoteKey::Prepared { resolved }) => {
                !resolved.is_empty() && resolved.iter().all(|o| oids.contains(o))
            }
            Ok(VoteKey::ConflictError(oid)) => oids.contains(oid),
            _ => false,
        };
        if same {
            *r = Ok(VoteKey::Conflicts(conflicts.clone()));
            changed = true;
        }
    }
    changed
}

/// The tid for the array's next transaction: later than the array's last
/// and every backend's last, and never before the wall clock (`now_unix`).
pub fn next_tid(now_unix: f64, last: Tid, backends_last: &[Tid]) -> Tid {
    let newest = backends_last.iter().copied().fold(last, Tid::max);
    timestamp::new_tid(now_unix, newest)
}

/// How far (seconds of commit time) a backend whose last transaction is
/// `backend` is behind the array's `newest`; `None` when it has none.
pub fn lag_seconds(newest: Tid, backend: Tid) -> Option<f64> {
    if backend == Tid::ZERO || newest == Tid::ZERO {
        return None;
    }
    let lag = timestamp::time_time(newest) - timestamp::time_time(backend);
    Some((lag.max(0.0) * 1000.0).round() / 1000.0)
}

/// Which backends start degraded: those whose last tid is behind the
/// newest (they miss transactions). Returns the reason per position.
pub fn behind_at_start(last_tids: &[Option<Tid>]) -> Vec<Option<Reason>> {
    let newest = last_tids.iter().flatten().copied().max();
    last_tids
        .iter()
        .map(|t| match (t, newest) {
            (Some(t), Some(n)) if *t < n => Some(Reason::Behind {
                last: *t,
                newest: n,
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(replies: &[Result<&'static str, &'static str>]) -> Decision<&'static str> {
        let replies: Vec<Reply<&str>> = replies
            .iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        decide(&replies)
    }

    #[test]
    fn decide_table() {
        // (name, replies, winner, agree, degraded positions)
        type Case = (
            &'static str,
            Vec<Result<&'static str, &'static str>>,
            Option<&'static str>,
            Vec<usize>,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            ("one backend", vec![Ok("a")], Some("a"), vec![0], vec![]),
            (
                "all agree",
                vec![Ok("a"), Ok("a"), Ok("a")],
                Some("a"),
                vec![0, 1, 2],
                vec![],
            ),
            (
                "majority wins",
                vec![Ok("a"), Ok("b"), Ok("b")],
                Some("b"),
                vec![1, 2],
                vec![0],
            ),
            (
                "odd one out in the middle",
                vec![Ok("a"), Ok("b"), Ok("a")],
                Some("a"),
                vec![0, 2],
                vec![1],
            ),
            (
                "a failure is degraded",
                vec![Ok("a"), Err("down"), Ok("a")],
                Some("a"),
                vec![0, 2],
                vec![1],
            ),
            (
                "failure leaves one",
                vec![Err("down"), Ok("a")],
                Some("a"),
                vec![1],
                vec![0],
            ),
            (
                "all failed",
                vec![Err("x"), Err("y")],
                None,
                vec![],
                vec![0, 1],
            ),
            ("nothing at all", vec![], None, vec![], vec![]),
            (
                "tie of two: first listed wins",
                vec![Ok("a"), Ok("b")],
                Some("a"),
                vec![0],
                vec![1],
            ),
            (
                "tie of two reversed",
                vec![Ok("b"), Ok("a")],
                Some("b"),
                vec![0],
                vec![1],
            ),
            (
                "tie of groups: the group with the first listed wins",
                vec![Ok("a"), Ok("b"), Ok("b"), Ok("a")],
                Some("a"),
                vec![0, 3],
                vec![1, 2],
            ),
            (
                "tie after a failure: first listed survivor wins",
                vec![Err("down"), Ok("b"), Ok("a")],
                Some("b"),
                vec![1],
                vec![0, 2],
            ),
            (
                "three different answers: first listed wins",
                vec![Ok("c"), Ok("b"), Ok("a")],
                Some("c"),
                vec![0],
                vec![1, 2],
            ),
            (
                "majority beats the first listed",
                vec![Ok("a"), Ok("b"), Ok("c"), Ok("b")],
                Some("b"),
                vec![1, 3],
                vec![0, 2],
            ),
        ];
        for (name, replies, winner, agree, degraded) in cases {
            let got = d(&replies);
            assert_eq!(got.winner, winner, "{name}: winner");
            assert_eq!(got.agree, agree, "{name}: agree");
            let positions: Vec<usize> = got.degrade.iter().map(|(i, _)| *i).collect();
            assert_eq!(positions, degraded, "{name}: degraded");
        }
    }

    #[test]
    fn disagreement_reason_names_both_answers() {
        let got = d(&[Ok("a"), Ok("a"), Ok("b")]);
        assert_eq!(got.degrade.len(), 1);
        let why = &got.degrade[0].1;
        assert!(why.contains("\"b\"") && why.contains("\"a\""), "{why}");
    }

    #[test]
    fn lag_table() {
        let t = |unix: f64| timestamp::new_tid(unix, Tid::ZERO);
        let cases = [
            (t(1_000_100.0), t(1_000_000.0), Some(100.0)),
            (t(1_000_000.0), t(1_000_000.0), Some(0.0)),
            // A backend ahead of what is published (finished, not yet visible).
            (t(1_000_000.0), t(1_000_001.0), Some(0.0)),
            (t(1_000_000.0), Tid::ZERO, None),
            (Tid::ZERO, Tid::ZERO, None),
        ];
        for (newest, backend, want) in cases {
            let got = lag_seconds(newest, backend);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 0.01, "{got:?} {want:?}"),
                (None, None) => {}
                _ => panic!("{got:?} {want:?}"),
            }
        }
    }

    #[test]
    fn judge_finish_table() {
        use inflight::FinishEnd::*;
        let (tid, other) = (Tid(10), Tid(11));
        let err = Error::Io("disk gone".into());
        // (answer, done, want end, want at, degraded?)
        let table: Vec<(std::result::Result<Tid, &Error>, _, _, Tid, bool)> = vec![
            (Ok(tid), Committed, Committed, tid, false),
            (Ok(tid), Logged, Logged, tid, false),
            (Ok(other), Committed, Committed, other, true),
            (Err(&err), Logged, Unknown, tid, true),
        ];
        for (answer, done, end, at, degraded) in table {
            let j = judge_finish("tpc_finish", tid, answer, done);
            assert_eq!(
                (j.end, j.at, j.degrade.is_some()),
                (end, at, degraded),
                "{answer:?}"
            );
        }
        let j = judge_finish("finish_log", tid, Err(&err), Logged);
        assert!(j
            .degrade
            .unwrap()
            .to_string()
            .starts_with("finish_log of 0x000000000000000a failed: "));
    }

    #[test]
    fn array_state_table() {
        use BackendState::*;
        let deg = || Degraded(Reason::Disabled);
        let rec = || Recovering(Reason::Disabled);
        let cases = [
            (vec![Optimal, Optimal], 1, ArrayState::Optimal),
            (vec![Optimal, deg()], 1, ArrayState::Degraded),
            (vec![deg(), deg()], 1, ArrayState::Failed),
            (vec![Optimal, deg()], 2, ArrayState::Failed),
            (vec![Optimal, Optimal, deg()], 2, ArrayState::Degraded),
            (vec![Optimal], 0, ArrayState::Optimal),
            (vec![deg()], 0, ArrayState::Failed),
            (vec![], 1, ArrayState::Failed),
            (vec![Optimal, rec()], 1, ArrayState::Recovering),
            (vec![Optimal, rec(), deg()], 1, ArrayState::Recovering),
            (vec![Optimal, rec()], 2, ArrayState::Failed),
            (vec![rec()], 1, ArrayState::Failed),
        ];
        for (states, min, want) in cases {
            assert_eq!(array_state(&states, min), want, "{states:?} min {min}");
        }
    }

    #[test]
    fn write_and_read_allowed_table() {
        let cases = [
            (2, 1, FailMode::Close, true),
            (1, 1, FailMode::Close, true),
            (0, 1, FailMode::Close, false),
            (1, 2, FailMode::Close, false),
            (1, 2, FailMode::ReadOnly, false),
            (0, 0, FailMode::ReadOnly, false),
        ];
        for (optimal, min, mode, ok) in cases {
            let got = write_allowed(optimal, min, mode, "1");
            assert_eq!(got.is_ok(), ok, "{optimal} {min} {mode:?}");
            if let Err(e) = got {
                match mode {
                    FailMode::ReadOnly => assert_eq!(e, Error::ReadOnly),
                    FailMode::Close => assert!(
                        matches!(&e, Error::Disconnected(m) if m.contains("min-optimal")),
                        "{e}"
                    ),
                }
            }
        }
        assert!(read_allowed(ArrayState::Degraded, FailMode::Close));
        assert!(!read_allowed(ArrayState::Failed, FailMode::Close));
        assert!(read_allowed(ArrayState::Failed, FailMode::ReadOnly));
    }

    #[test]
    fn a_missing_object_is_believed_only_when_no_other_backend_has_it() {
        use MissingObject::*;
        for (found, packing, want) in [
            (false, false, Believe),
            (false, true, Believe),
            (true, true, Tolerate),
            (true, false, Degrade),
        ] {
            assert_eq!(
                on_missing_object(found, packing),
                want,
                "found {found}, packing {packing}"
            );
        }
    }

    #[test]
    fn a_failure_at_the_deadline_is_a_timeout() {
        let d = Duration::from_secs(2);
        let late = Duration::from_secs(2);
        let early = Duration::from_millis(10);
        let lost: Result<(), Error> = Err(Error::Disconnected("gone".into()));
        let missing: Result<(), Error> = Err(Error::PosKey(crate::storage::Oid(1)));
        // (call, answer, took, timed out)
        let cases: [(Call, &Result<(), Error>, Duration, bool); 8] = [
            (Call::Write, &lost, late, true),
            (Call::Write, &lost, early, false),
            (Call::Finish, &missing, late, true),
            (Call::Write, &missing, late, false),
            (Call::Read, &missing, late, false),
            (Call::Read, &lost, late, true),
            (Call::Write, &Ok(()), late, false),
            (Call::Finish, &Ok(()), early, false),
        ];
        for (call, answer, took, want) in cases {
            assert_eq!(
                timed_out(call, answer, took, d),
                want,
                "{call:?} {answer:?} {took:?}"
            );
        }
    }

    #[test]
    fn classify_table() {
        use crate::storage::Oid;
        use Call::*;
        use ErrorKind::*;
        let remote = |c: &str| Error::Remote {
            class: c.into(),
            message: "m".into(),
        };
        let conflict = Error::Conflict {
            oid: Oid(1),
            committed: Tid(2),
            read: Tid(1),
            message: "c".into(),
            read_conflict: false,
            class_name: None,
        };
        let undo = Error::Undo {
            message: "x".into(),
            oid: None,
        };
        // (error, as a read, as a vote or pack, as a finish)
        let cases = [
            (Error::Disconnected("x".into()), Failure, Failure, Failure),
            (Error::Io("disk".into()), Failure, Failure, Failure),
            (remote("builtins.RuntimeError"), Failure, Failure, Failure),
            (
                remote("ZODB.POSException.StorageError"),
                Failure,
                Failure,
                Failure,
            ),
            (
                remote("ZODB.POSException.StorageTransactionError"),
                Failure,
                Failure,
                Failure,
            ),
            (
                remote("ZODB.POSException.UndoError"),
                Failure,
                Answer,
                Failure,
            ),
            (Error::PosKey(Oid(1)), Answer, Answer, Failure),
            (Error::ReadOnly, Failure, Answer, Failure),
            // What Python ZEO's msgpack server sends when it cannot encode
            // its answer (RelStorage's POSKeyError): no answer to a read.
            (
                Error::Value("Couldn't pickle response".into()),
                Failure,
                Answer,
                Failure,
            ),
            (undo, Failure, Answer, Failure),
            (conflict, Failure, Answer, Failure),
            (Error::Transaction("t".into()), Failure, Answer, Failure),
            (
                Error::Unsupported("no blobs".into()),
                Answer,
                Answer,
                Failure,
            ),
        ];
        for (e, read, write, finish) in cases {
            assert_eq!(classify(Read, &e), read, "read: {e:?}");
            assert_eq!(classify(Write, &e), write, "write: {e:?}");
            assert_eq!(classify(Finish, &e), finish, "finish: {e:?}");
        }
    }

    #[test]
    fn on_read_failure_table() {
        use ReadFailure::*;
        let foreign = Error::Value("Couldn't pickle response".into());
        let down = Error::Disconnected("gone".into());
        // (error, other optimal backends, min-optimal, what happens)
        let cases = [
            (&foreign, 1, 1, Degrade),
            (&foreign, 2, 2, Degrade),
            (&foreign, 0, 1, Relay),
            (&foreign, 1, 2, Relay),
            (&foreign, 0, 0, Relay),
            (&down, 0, 1, Degrade),
            (&down, 1, 1, Degrade),
        ];
        for (e, others, min, want) in cases {
            assert_eq!(
                on_read_failure(e, others, min),
                want,
                "{e:?} {others} {min}"
            );
        }
    }

    #[test]
    fn unify_resolution_table() {
        use VoteKey::*;
        let (o1, o2, o3) = (Oid(1), Oid(2), Oid(3));
        let c = |oids: &[Oid]| Conflicts(oids.iter().map(|o| (*o, Tid(9), Tid(5))).collect());
        let p = |oids: &[Oid]| Prepared {
            resolved: oids.to_vec(),
        };
        type Case = (&'static str, Vec<Reply<VoteKey>>, Vec<Reply<VoteKey>>, bool);
        let cases: Vec<Case> = vec![
            (
                "no conflicts: unchanged",
                vec![Ok(p(&[])), Ok(p(&[o1]))],
                vec![Ok(p(&[])), Ok(p(&[o1]))],
                false,
            ),
            (
                "resolved by one, reported by the other",
                vec![Ok(p(&[o1])), Ok(c(&[o1]))],
                vec![Ok(c(&[o1])), Ok(c(&[o1]))],
                true,
            ),
            (
                "resolved part of the reported ones",
                vec![Ok(c(&[o1, o2])), Ok(p(&[o2]))],
                vec![Ok(c(&[o1, o2])), Ok(c(&[o1, o2]))],
                true,
            ),
            (
                "resolved something else: a real disagreement",
                vec![Ok(c(&[o1])), Ok(p(&[o3]))],
                vec![Ok(c(&[o1])), Ok(p(&[o3]))],
                false,
            ),
            (
                "prepared without resolving: a real disagreement",
                vec![Ok(c(&[o1])), Ok(p(&[]))],
                vec![Ok(c(&[o1])), Ok(p(&[]))],
                false,
            ),
            (
                "ConflictError on a reported oid",
                vec![Ok(ConflictError(o1)), Ok(c(&[o1]))],
                vec![Ok(c(&[o1])), Ok(c(&[o1]))],
                true,
            ),
            (
                "ConflictError on another oid stays",
                vec![Ok(ConflictError(o2)), Ok(c(&[o1]))],
                vec![Ok(ConflictError(o2)), Ok(c(&[o1]))],
                false,
            ),
            (
                "failures and other errors are left alone",
                vec![Err("down".into()), Ok(Refused("X".into())), Ok(c(&[o1]))],
                vec![Err("down".into()), Ok(Refused("X".into())), Ok(c(&[o1]))],
                false,
            ),
            (
                "only ConflictErrors: unchanged (the client gets the error)",
                vec![Ok(ConflictError(o1)), Ok(ConflictError(o1))],
                vec![Ok(ConflictError(o1)), Ok(ConflictError(o1))],
                false,
            ),
        ];
        for (name, mut replies, want, changed) in cases {
            assert_eq!(unify_resolution(&mut replies), changed, "{name}");
            assert_eq!(replies, want, "{name}");
        }
    }

    #[test]
    fn next_tid_table() {
        let t = |n: u64| Tid(n);
        let now = timestamp::time_time(t(0x0400_0000_0000_0000));
        let cases = [
            (t(0), vec![], timestamp::new_tid(now, t(0))),
            // Later than the array's and every backend's last.
            (
                t(5),
                vec![t(0x0500_0000_0000_0000)],
                timestamp::new_tid(now, t(0x0500_0000_0000_0000)),
            ),
            (
                t(0x0600_0000_0000_0000),
                vec![t(1)],
                timestamp::new_tid(now, t(0x0600_0000_0000_0000)),
            ),
        ];
        for (last, backends, want) in cases {
            let got = next_tid(now, last, &backends);
            assert_eq!(got, want);
            assert!(got > last && backends.iter().all(|b| got > *b));
        }
    }

    #[test]
    fn behind_at_start_table() {
        let t = |n: u64| Some(Tid(n));
        let cases: Vec<(Vec<Option<Tid>>, Vec<bool>)> = vec![
            (vec![t(5), t(5)], vec![false, false]),
            (vec![t(5), t(3)], vec![false, true]),
            (vec![t(3), t(5), t(5)], vec![true, false, false]),
            (vec![None, t(5)], vec![false, false]),
            (vec![None, None], vec![false, false]),
        ];
        for (lasts, behind) in cases {
            let got: Vec<bool> = behind_at_start(&lasts)
                .iter()
                .map(|r| r.is_some())
                .collect();
            assert_eq!(got, behind, "{lasts:?}");
        }
    }
}
