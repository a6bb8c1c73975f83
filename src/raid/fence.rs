//! Fencing at the backends (issue #26, layer b): a controller that lost
//! leadership must not get one more transaction committed on a backend
//! that saw the takeover, without its cooperation and with stock
//! `runzeo`.
//!
//! The fencing object is the database root (oid 0). A leader taking over
//! rewrites the root on every backend with its own data, unchanged (the
//! fence transaction, [`fence_txn`]), which gives the root a new serial;
//! from then on each of its votes carries ZEO's
//! `checkCurrentSerialInTransaction` of the root at the serial it knows
//! ([`guard`]). A stale leader's next vote meets a root serial it did not
//! write and fails with a `ReadConflictError` (or, when it also stores the
//! root, a conflict) on every fenced backend ([`fenced_out`]), so nothing of
//! it commits there.
//!
//! Why the root: it is reachable by definition, so no pack, with or
//! without garbage collection, ever removes it; it already exists in every
//! database a client opened; and applications see nothing but one more
//! revision of it, with the same state, per takeover (their caches reload
//! it on the invalidation). The leader keeps the serial it knows current:
//! its own commits that store the root move it to their tid
//! ([`after_commit`]), and an undo, which may restore the root, makes it
//! read the root's serial back.

use super::state::Reason;
use crate::storage::{Conflict, Error, Loaded, Oid, Op, Tid, Txn, TxnMeta, Vote};

/// The fencing object: the database root.
pub const FENCE_OID: Oid = Oid(0);

/// The root of a new database, byte for byte as ZODB's `DB` writes it (an
/// empty `persistent.mapping.PersistentMapping`, pickle protocol 3). A
/// takeover on a database that has no root yet (no ZODB client opened it:
/// none could, before a leader served) creates this one as its fence; a
/// ZODB client opening the database later finds its root there.
pub const NEW_ROOT: &[u8] = b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\
\x80\x03}q\x01X\x04\x00\x00\x00dataq\x02}q\x03s.";

/// The root to fence on, from what loading it gave: a missing root is
/// created (as [`NEW_ROOT`], over no previous revision); other errors
/// stay errors.
pub fn root_to_fence(loaded: Result<Loaded, Error>) -> Result<Loaded, Error> {
    match loaded {
        Err(Error::PosKey(oid)) if oid == FENCE_OID => Ok(Loaded {
            data: NEW_ROOT.into(),
            start: Tid(0),
            end: None,
        }),
        other => other,
    }
}

/// The fence this controller holds: its epoch and the root serial its
/// votes check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub epoch: u64,
    pub serial: Tid,
}

/// Where the array stands with fencing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FenceState {
    /// A single controller: votes carry no fence.
    #[default]
    Off,
    /// Leading at a fence: every vote checks it.
    Held(Fence),
    /// A vote met another controller's fence: no more writes until this
    /// controller takes over again.
    Lost { epoch: u64 },
    /// Writing the fence of `epoch`: the fence transaction goes through
    /// unguarded, and a stale leader's commits meanwhile are expected.
    Taking { epoch: u64 },
    /// Another controller leads: no writes here, and the backends'
    /// invalidations are its commits, not writes behind the array's back.
    Standby,
}

impl FenceState {
    /// For the status document (`None`: no fencing, one controller).
    pub fn status(&self) -> Option<crate::status::FenceStatus> {
        let (state, epoch) = match *self {
            FenceState::Off => return None,
            FenceState::Held(f) => ("held", Some(f.epoch)),
            FenceState::Taking { epoch } => ("taking", Some(epoch)),
            FenceState::Lost { epoch } => ("lost", Some(epoch)),
            FenceState::Standby => ("standby", None),
        };
        Some(crate::status::FenceStatus {
            state: state.into(),
            epoch,
        })
    }

    /// Whether transactions committed on the backends by someone else are
    /// expected (another controller leads), rather than a reason to
    /// degrade the backend.
    pub fn others_write(&self) -> bool {
        matches!(
            self,
            FenceState::Lost { .. } | FenceState::Standby | FenceState::Taking { .. }
        )
    }

    /// Whether this controller does not write at all (another leads, or
    /// a vote met another's fence): it does not judge backends then.
    pub fn stands_by(&self) -> bool {
        matches!(self, FenceState::Lost { .. } | FenceState::Standby)
    }

    /// The error a write gets here, if it is refused.
    pub fn refusal(&self, array: &str) -> Option<Error> {
        match self {
            FenceState::Off | FenceState::Held(_) | FenceState::Taking { .. } => None,
            FenceState::Lost { epoch } => Some(lost_error(array, *epoch)),
            FenceState::Standby => Some(Error::Disconnected(format!(
                "RAID array {array:?}: this controller stands by; another controller leads. \
                 Connect to the leader (ZEO clients given every controller's address do so by \
                 themselves)"
            ))),
        }
    }
}

/// What a takeover does once its fence transaction `fence_tid` is
/// prepared on every optimal backend, from each one's last transaction
/// (`None`: not optimal) read while the fence holds their commit locks,
/// so that nothing else commits on them until it finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnderFence {
    /// Finish the fence, after degrading these backends: they lack
    /// transactions another backend has (the old leader finished one on
    /// some backends only, perhaps while this one was taking over). A
    /// recovery copies them, and the fence, once it holds.
    Finish { behind: Vec<(usize, Reason)> },
    /// A backend already holds a transaction at or past the fence's tid
    /// (the old leader's, with a clock ahead of this one's): abort, move
    /// the array's last tid to `newest` and vote the fence again.
    Retry { newest: Tid },
}

/// [`UnderFence`] for `lasts` and the fence's tid.
pub fn under_fence(lasts: &[Option<Tid>], fence_tid: Tid) -> UnderFence {
    match lasts.iter().flatten().copied().max() {
        Some(newest) if newest >= fence_tid => UnderFence::Retry { newest },
        _ => UnderFence::Finish {
            behind: super::state::behind_at_start(lasts)
                .into_iter()
                .enumerate()
                .filter_map(|(i, why)| Some((i, why?)))
                .collect(),
        },
    }
}

/// What an invalidation this array did not commit says, judged from the
/// fence state at the moment it is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidated {
    /// Another controller leads or takes over: its commits, expected.
    Expected,
    /// It rewrites the fencing object while this controller holds a
    /// fence: another controller took over. The state becomes `Lost`.
    TakenOver { epoch: u64 },
    /// Nobody's fence explains it: the backend was written behind the
    /// array's back.
    Foreign,
}

/// [`Invalidated`] for an invalidation of `oids` in `state`, and the state
/// after it. One decision under one lock: every backend's connection
/// carries the takeover's fence, and they are handled at the same time; a
/// second connection that read `Held` before the first made it `Lost` must
/// still see an expected commit, not a foreign write.
pub fn invalidated(state: FenceState, oids: &[Oid]) -> (Invalidated, FenceState) {
    match state {
        FenceState::Held(f) if oids.contains(&FENCE_OID) => (
            Invalidated::TakenOver { epoch: f.epoch },
            FenceState::Lost { epoch: f.epoch },
        ),
        s if s.others_write() => (Invalidated::Expected, s),
        s => (Invalidated::Foreign, s),
    }
}

/// Whether this controller degrades a backend for `why` now. A controller
/// that does not write (it stands by, or met another's fence) keeps no
/// judgement of its own calls: a vote, finish or connection that failed
/// because another controller took the backends over says nothing about
/// the backend, and the takeover judges every such reason again anyway
/// ([`Reason::rejudged_at_takeover`]). What is not judged again (an
/// operator's `disable`, a divergence `verify` found) is kept.
pub fn judges(state: &FenceState, why: &Reason) -> bool {
    !(state.stands_by() && why.rejudged_at_takeover())
}

/// Whether a client whose call `method` failed with `e` is sent away (its
/// connection closed, see `Storage::sends_writers_away`): under HA only,
/// a refusal because this controller cannot write (it does not lead, or
/// its array failed: another controller may serve), or a failed finish.
pub fn sends_away(state: &FenceState, method: &str, e: &Error) -> bool {
    match state {
        FenceState::Off => false,
        _ => matches!(e, Error::Disconnected(_)) || method == "tpc_finish",
    }
}

/// Add the fence check to a vote's operations.
pub fn guard(ops: &mut Vec<Op>, fence: &Fence) {
    ops.push(Op::CheckCurrent {
        oid: FENCE_OID,
        serial: fence.serial,
    });
}

/// What committing `ops` does to the root's serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Leaves it.
    Keeps,
    /// Sets it to the transaction's tid.
    ToTid,
    /// Perhaps changes it (an undo): read it back.
    Unknown,
}

/// [`Move`] for a transaction's operations.
pub fn moves(ops: &[Op]) -> Move {
    let mut m = Move::Keeps;
    for op in ops {
        match op {
            Op::Store { oid, .. }
            | Op::Delete { oid, .. }
            | Op::StoreBlob { oid, .. }
            | Op::RestoreBlob { oid, .. }
            | Op::Restore { oid, .. }
                if *oid == FENCE_OID =>
            {
                return Move::ToTid
            }
            Op::Undo { .. } => m = Move::Unknown,
            _ => {}
        }
    }
    m
}

/// The fence after a commit at `tid` that moved the root `how`; `None`
/// when it must be read back.
pub fn after_commit(fence: Fence, how: Move, tid: Tid) -> Option<Fence> {
    match how {
        Move::Keeps => Some(fence),
        Move::ToTid => Some(Fence {
            serial: tid,
            ..fence
        }),
        Move::Unknown => None,
    }
}

/// Whether a backend's answer to a vote guarded by `fence` says another
/// controller wrote the root since: a conflict on the root whose
/// committed serial is not the one this controller knows. (A conflict on
/// the root at the serial it knows is the client's own, and is relayed.)
pub fn fenced_out(answer: &Result<Vote, Error>, fence: &Fence) -> bool {
    let foreign = |c: &Conflict| c.oid == FENCE_OID && c.committed != fence.serial;
    match answer {
        Err(Error::Conflict { oid, committed, .. }) => {
            *oid == FENCE_OID && *committed != fence.serial
        }
        Ok(Vote::Conflicts(cs)) => cs.iter().any(foreign),
        _ => false,
    }
}

/// How a vote guarded by `held` stands with the fence, from the
/// backends' answers and the fence state once they are in (`now`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteFence {
    /// Nobody else's fence: the answers count.
    Clear,
    /// The backend at this position of the answers carries another
    /// controller's fence ([`fenced_out`]).
    FencedAt(usize),
    /// A takeover's fence was seen on a connection while the vote was
    /// out (`now` is no longer `Held(held)`): every answer is a stale
    /// controller's, whatever it says. A leader paused in the middle of
    /// a vote wakes to a backend that refuses its tid as older than the
    /// new leader's commits, before it checks the fence; that refusal
    /// must send the client to the new leader, not end its transaction
    /// with an error.
    SeenMeanwhile,
}

/// [`VoteFence`] for `answers` (backend, answer) of a vote guarded by
/// `held`, with the fence state `now`.
pub fn vote_fence<T>(
    held: &Fence,
    now: &FenceState,
    answers: &[(T, Result<Vote, Error>)],
) -> VoteFence {
    if let Some(p) = answers.iter().position(|(_, r)| fenced_out(r, held)) {
        return VoteFence::FencedAt(p);
    }
    if *now != FenceState::Held(*held) {
        return VoteFence::SeenMeanwhile;
    }
    VoteFence::Clear
}

/// The fence transaction of `epoch`, taken by `controller`: the root
/// stored again with its own current data (`root`, as loaded).
pub fn fence_txn(epoch: u64, controller: &str, root: &Loaded) -> Txn {
    let mut t = Txn::new(vec![Op::Store {
        oid: FENCE_OID,
        serial: root.start,
        data: root.data.clone(),
    }]);
    t.meta = TxnMeta {
        user: b"zeoraid".to_vec(),
        description: format!("zeoraid: {controller} took over; fencing epoch {epoch}").into_bytes(),
        extension: Vec::new(),
    };
    t
}

/// The error a vote met at another controller's fence gives the client:
/// it says what happened and what to do.
pub fn lost_error(array: &str, epoch: u64) -> Error {
    Error::Disconnected(format!(
        "RAID array {array:?}: this controller (fencing epoch {epoch}) was fenced out at \
         the backends: another controller took over; the transaction was not committed. \
         Reconnect to the current leader (ZEO clients given every controller's address do \
         so by themselves) and retry"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(oid: u64) -> Op {
        Op::Store {
            oid: Oid(oid),
            serial: Tid(1),
            data: Default::default(),
        }
    }

    #[test]
    fn what_a_takeover_does_under_its_fence() {
        let t = |n: u64| Some(Tid(n));
        let behind = |v: &[usize]| -> Vec<usize> { v.to_vec() };
        // (last tids, fence tid, the backends degraded; `None`: vote again)
        type Case = (Vec<Option<Tid>>, u64, Option<Vec<usize>>);
        let cases: Vec<Case> = vec![
            // All equal: finish, nothing degraded.
            (vec![t(5), t(5)], 9, Some(behind(&[]))),
            // The old leader finished 7 on a only: b is behind.
            (vec![t(7), t(5)], 9, Some(behind(&[1]))),
            (vec![t(5), t(7), t(7)], 9, Some(behind(&[0]))),
            // A degraded backend (None) is not judged.
            (vec![None, t(5)], 9, Some(behind(&[]))),
            // A backend already at or past the fence's tid: vote again.
            (vec![t(9), t(5)], 9, None),
            (vec![t(5), t(12)], 9, None),
        ];
        for (lasts, fence_tid, want) in cases {
            let got = match under_fence(&lasts, Tid(fence_tid)) {
                UnderFence::Finish { behind } => {
                    assert!(behind
                        .iter()
                        .all(|(_, r)| matches!(r, Reason::Behind { .. })));
                    Some(behind.into_iter().map(|(i, _)| i).collect())
                }
                UnderFence::Retry { newest } => {
                    assert_eq!(Some(newest), lasts.iter().flatten().copied().max());
                    None
                }
            };
            assert_eq!(got, want, "{lasts:?} under fence {fence_tid}");
        }
    }

    #[test]
    fn a_controller_that_does_not_write_keeps_no_judgement_of_its_calls() {
        let held = FenceState::Held(Fence {
            epoch: 3,
            serial: Tid(1),
        });
        let vote = Reason::Vote {
            tid: Tid(2),
            why: "x".into(),
        };
        let lost = Reason::ConnectionLost("x".into());
        let diverged = Reason::Diverged {
            difference: "x".into(),
            reference: "a".into(),
        };
        let cases = [
            (FenceState::Off, &vote, true),
            (held, &vote, true),
            (FenceState::Taking { epoch: 3 }, &vote, true),
            (FenceState::Standby, &vote, false),
            (FenceState::Standby, &lost, false),
            (FenceState::Lost { epoch: 3 }, &lost, false),
            // The operator's word and a divergence stand.
            (FenceState::Standby, &Reason::Disabled, true),
            (FenceState::Lost { epoch: 3 }, &Reason::Disabled, true),
            (FenceState::Standby, &diverged, true),
        ];
        for (state, why, want) in cases {
            assert_eq!(judges(&state, why), want, "{state:?} {why:?}");
        }
    }

    #[test]
    fn who_is_sent_away() {
        let gone = Error::Disconnected("x".into());
        let io = Error::Io("x".into());
        let held = FenceState::Held(Fence {
            epoch: 2,
            serial: Tid(5),
        });
        let cases = [
            (FenceState::Off, "vote", &gone, false),
            (FenceState::Off, "tpc_finish", &io, false),
            (FenceState::Standby, "vote", &gone, true),
            (FenceState::Lost { epoch: 2 }, "vote", &gone, true),
            (FenceState::Lost { epoch: 2 }, "vote", &io, false),
            (held, "tpc_finish", &io, true),
            (held, "vote", &io, false),
            (held, "vote", &gone, true),
            (FenceState::Taking { epoch: 3 }, "tpc_finish", &gone, true),
        ];
        for (state, method, e, away) in cases {
            assert_eq!(
                sends_away(&state, method, e),
                away,
                "{state:?} {method} {e}"
            );
        }
    }

    #[test]
    fn a_missing_root_is_fenced_by_creating_it() {
        let new = root_to_fence(Err(Error::PosKey(FENCE_OID))).expect("a new root");
        assert_eq!((&new.data[..], new.start), (NEW_ROOT, Tid(0)));
        let t = fence_txn(3, "ctl-a", &new);
        assert!(matches!(
            &t.ops[..],
            [Op::Store { oid, serial, data }] if *oid == FENCE_OID && *serial == Tid(0) && &data[..] == NEW_ROOT
        ));
        assert!(matches!(
            root_to_fence(Err(Error::PosKey(Oid(7)))),
            Err(Error::PosKey(_))
        ));
        assert!(matches!(
            root_to_fence(Err(Error::Disconnected("x".into()))),
            Err(Error::Disconnected(_))
        ));
    }

    #[test]
    fn what_moves_the_root() {
        for (ops, want) in [
            (vec![], Move::Keeps),
            (vec![store(5), store(7)], Move::Keeps),
            (vec![store(5), store(0)], Move::ToTid),
            (vec![Op::Undo { txn: Tid(3) }], Move::Unknown),
            (vec![Op::Undo { txn: Tid(3) }, store(0)], Move::ToTid),
            (
                vec![Op::CheckCurrent {
                    oid: Oid(0),
                    serial: Tid(2),
                }],
                Move::Keeps,
            ),
        ] {
            assert_eq!(moves(&ops), want, "{ops:?}");
        }
        let f = Fence {
            epoch: 4,
            serial: Tid(10),
        };
        assert_eq!(after_commit(f, Move::Keeps, Tid(20)), Some(f));
        assert_eq!(
            after_commit(f, Move::ToTid, Tid(20)).map(|f| f.serial),
            Some(Tid(20))
        );
        assert_eq!(after_commit(f, Move::Unknown, Tid(20)), None);
    }

    #[test]
    fn only_a_root_written_by_someone_else_fences_out() {
        let f = Fence {
            epoch: 4,
            serial: Tid(10),
        };
        let conflict = |oid, committed| Error::Conflict {
            oid: Oid(oid),
            committed: Tid(committed),
            read: Tid(10),
            message: "x".into(),
            read_conflict: true,
            class_name: None,
        };
        let resolvable = |oid, committed| {
            Ok(Vote::Conflicts(vec![Conflict {
                oid: Oid(oid),
                committed: Tid(committed),
                read: Tid(9),
                data: Default::default(),
            }]))
        };
        for (answer, want) in [
            (Err(conflict(0, 11)), true),
            (Err(conflict(0, 10)), false),
            (Err(conflict(3, 11)), false),
            (resolvable(0, 12), true),
            (resolvable(0, 10), false),
            (resolvable(5, 12), false),
            (Err(Error::ReadOnly), false),
            (Err(Error::PosKey(Oid(0))), false),
        ] {
            assert_eq!(fenced_out(&answer, &f), want, "{answer:?}");
        }
    }

    #[test]
    fn a_vote_is_lost_when_a_backend_or_a_connection_shows_another_fence() {
        let f = Fence {
            epoch: 4,
            serial: Tid(10),
        };
        let fenced = Err(Error::Conflict {
            oid: FENCE_OID,
            committed: Tid(11),
            read: Tid(10),
            message: "x".into(),
            read_conflict: true,
            class_name: None,
        });
        let prepared = || {
            Ok(Vote::Prepared {
                tid: Tid(12),
                resolved: Vec::new(),
                invalidated: Vec::new(),
            })
        };
        let too_old = || Err(Error::Transaction("transaction id 12 is not later".into()));
        let held = FenceState::Held(f);
        let lost = FenceState::Lost { epoch: 4 };
        type Answers = Vec<(usize, Result<Vote, Error>)>;
        let cases: Vec<(FenceState, Answers, VoteFence)> = vec![
            (
                held,
                vec![(0, prepared()), (1, prepared())],
                VoteFence::Clear,
            ),
            // A backend's own error, with nobody else's fence: relayed.
            (
                held,
                vec![(0, prepared()), (1, too_old())],
                VoteFence::Clear,
            ),
            (
                held,
                vec![(0, prepared()), (1, fenced.clone())],
                VoteFence::FencedAt(1),
            ),
            (
                lost,
                vec![(0, fenced.clone()), (1, too_old())],
                VoteFence::FencedAt(0),
            ),
            // The takeover's fence came in on a connection: the tid
            // refusal is the stale controller's.
            (
                lost,
                vec![(0, too_old()), (1, too_old())],
                VoteFence::SeenMeanwhile,
            ),
            (
                FenceState::Standby,
                vec![(0, prepared())],
                VoteFence::SeenMeanwhile,
            ),
        ];
        for (now, answers, want) in cases {
            assert_eq!(vote_fence(&f, &now, &answers), want, "{now:?} {answers:?}");
        }
    }

    #[test]
    fn the_fence_rewrites_the_root_as_it_is() {
        let root = Loaded {
            data: vec![1, 2, 3].into(),
            start: Tid(77),
            end: None,
        };
        let t = fence_txn(9, "b", &root);
        assert!(matches!(
            &t.ops[..],
            [Op::Store { oid: Oid(0), serial: Tid(77), data }] if data[..] == [1, 2, 3]
        ));
        assert!(String::from_utf8_lossy(&t.meta.description).contains("epoch 9"));
        let mut ops = vec![store(4)];
        guard(
            &mut ops,
            &Fence {
                epoch: 9,
                serial: Tid(78),
            },
        );
        assert!(matches!(
            ops[1],
            Op::CheckCurrent {
                oid: Oid(0),
                serial: Tid(78)
            }
        ));
        assert!(lost_error("main", 3).to_string().contains("retry"));
        for (state, refused, others) in [
            (FenceState::Off, false, false),
            (
                FenceState::Held(Fence {
                    epoch: 1,
                    serial: Tid(2),
                }),
                false,
                false,
            ),
            (FenceState::Lost { epoch: 1 }, true, true),
            (FenceState::Standby, true, true),
            (FenceState::Taking { epoch: 2 }, false, true),
        ] {
            assert_eq!(state.refusal("a").is_some(), refused, "{state:?}");
            assert_eq!(state.status().is_none(), state == FenceState::Off);
            assert_eq!(state.others_write(), others, "{state:?}");
            assert_eq!(
                state.stands_by(),
                matches!(state, FenceState::Lost { .. } | FenceState::Standby),
                "{state:?}"
            );
        }
    }

    #[test]
    fn an_invalidation_is_judged_once_under_the_fence_state() {
        let f = Fence {
            epoch: 4,
            serial: Tid(7),
        };
        let root = [FENCE_OID, Oid(3)];
        let other = [Oid(3)];
        let lost = FenceState::Lost { epoch: 4 };
        let taking = FenceState::Taking { epoch: 5 };
        let cases: &[(FenceState, &[Oid], Invalidated, FenceState)] = &[
            // The takeover's fence, first seen: the fence is lost.
            (
                FenceState::Held(f),
                &root,
                Invalidated::TakenOver { epoch: 4 },
                lost,
            ),
            // The same fence on a second backend's connection, or the new
            // leader's later commits: expected, never a foreign write.
            (lost, &root, Invalidated::Expected, lost),
            (lost, &other, Invalidated::Expected, lost),
            (
                FenceState::Standby,
                &root,
                Invalidated::Expected,
                FenceState::Standby,
            ),
            (taking, &other, Invalidated::Expected, taking),
            // A leader, or a single controller, that did not commit it.
            (
                FenceState::Held(f),
                &other,
                Invalidated::Foreign,
                FenceState::Held(f),
            ),
            (
                FenceState::Off,
                &root,
                Invalidated::Foreign,
                FenceState::Off,
            ),
            (
                FenceState::Off,
                &other,
                Invalidated::Foreign,
                FenceState::Off,
            ),
        ];
        for (state, oids, verdict, after) in cases {
            assert_eq!(
                invalidated(*state, oids),
                (*verdict, *after),
                "{state:?} {oids:?}"
            );
        }
    }
}
