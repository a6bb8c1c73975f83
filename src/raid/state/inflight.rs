//! Which backends hold the array's transactions, and how far each got: the
//! array's memory of "a backend is in the middle of a transaction", so a
//! backend that leaves the optimal set mid-commit has that transaction
//! *ended* on it before anything else (a recovery) touches it.
//!
//! A transaction's participants are fixed when its vote starts (the
//! optimal backends then). From there each participant is driven to an
//! end, whatever happens to its state meanwhile:
//!
//! | phase on the backend | it leaves the optimal set | ends by |
//! | --- | --- | --- |
//! | voting / prepared | before its finish starts | `tpc_abort` (the others finish) |
//! | finishing | during its finish call | the call's answer |
//! | logged (group commit) | before durable / publish | `make_durable` + `publish` anyway: the log is final |
//! | a call that got no answer | - | *unknown*: the backend may or may not hold it |
//!
//! An *unknown* outcome (a call past its deadline, a lost connection, a
//! finish that failed) is resolved by the recovery before it reads the
//! backend's position: a ZEO backend's connection is dropped and made
//! again (its server aborts what was not finished) and its last
//! transaction is left to settle; a local one is reopened (an unfinished
//! transaction is cut off as Python's FileStorage does when it opens).
//!
//! Pure: no IO, no clocks. `RaidStorage` feeds it what the backends
//! answered and asks it whom to call next ([`Inflight::finish_plan`],
//! [`Inflight::logged_through`]) and whether a recovery may start
//! ([`Inflight::readiness`]).

use crate::storage::Tid;

/// How far the array's open transaction got on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its vote was called (begin, stores, vote).
    Voting,
    /// It voted with the majority and waits for its finish.
    Prepared,
    /// Its finish (or `finish_log`) was called.
    Finishing,
}

/// How a backend's vote ended for the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteEnd {
    /// Prepared and kept: it gets the finish (or an abort).
    Kept,
    /// Aborted, refused, or conflicts reported: it holds nothing.
    Ended,
    /// No answer (deadline): it may hold a voted transaction.
    Unknown,
}

/// How a backend's finish ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishEnd {
    /// Group commit's `finish_log` took it: durable and publish follow.
    Logged,
    /// Committed, durable and visible (`tpc_finish`).
    Committed,
    /// It failed or got no answer: whether it holds it is unknown.
    Unknown,
}

/// May a recovery of the backend start, and what must it do first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It holds none of the array's transactions.
    Idle,
    /// The commit path is still driving a transaction on it: wait.
    Busy(Tid),
    /// The commit path left transactions logged on it but never made them
    /// durable and published (the array's `make_durable` failed): the
    /// recovery completes them, the log is final.
    Logged(Tid),
    /// A call on it ended without a known outcome: the recovery resolves
    /// it (reconnect / reopen, then reads where it really stands).
    Unknown(Tid),
}

/// One backend's share of the array's transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held {
    /// The transaction under the array's commit lock, and how far it got.
    open: Option<(Tid, Phase)>,
    /// Logged with `finish_log`, not yet published: oldest first.
    logged: Vec<Tid>,
    /// The newest transaction whose outcome on it is unknown.
    unknown: Option<Tid>,
}

/// What to do with the prepared backends when the finish starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinishPlan {
    /// Still optimal: finish them.
    pub finish: Vec<usize>,
    /// Left the optimal set after voting: abort them.
    pub abort: Vec<usize>,
}

/// What each backend holds of the array's transactions (its open one and
/// its phase, logged tids not yet published, calls with no answer), by
/// position.
#[derive(Clone, Debug, Default)]
pub struct Inflight {
    held: Vec<Held>,
}

impl Inflight {
    fn at(&mut self, i: usize) -> &mut Held {
        if self.held.len() <= i {
            self.held.resize(i + 1, Held::default());
        }
        &mut self.held[i]
    }

    /// The vote of `tid` starts on `participants`.
    pub fn begin(&mut self, tid: Tid, participants: &[usize]) {
        for &i in participants {
            self.at(i).open = Some((tid, Phase::Voting));
        }
    }

    /// Backend `i`'s vote ended this way.
    pub fn voted(&mut self, i: usize, end: VoteEnd) {
        let h = self.at(i);
        let Some((tid, _)) = h.open else { return };
        match end {
            VoteEnd::Kept => h.open = Some((tid, Phase::Prepared)),
            VoteEnd::Ended => h.open = None,
            VoteEnd::Unknown => {
                h.open = None;
                h.unknown = Some(tid);
            }
        }
    }

    /// The finish of the prepared transaction starts: `optimal(i)` says
    /// whether backend `i` is still in the optimal set. Those that are
    /// get the finish (marked finishing); those that left get an abort.
    pub fn finish_plan(&mut self, optimal: impl Fn(usize) -> bool) -> FinishPlan {
        let mut plan = FinishPlan::default();
        for (i, h) in self.held.iter_mut().enumerate() {
            if let Some((tid, Phase::Prepared)) = h.open {
                if optimal(i) {
                    h.open = Some((tid, Phase::Finishing));
                    plan.finish.push(i);
                } else {
                    plan.abort.push(i);
                }
            }
        }
        plan
    }

    /// Backends holding the open transaction in a phase that an abort
    /// ends (voting, prepared): what `tpc_abort` of the array calls.
    pub fn abortable(&self) -> Vec<usize> {
        self.positions(|h| matches!(h.open, Some((_, Phase::Voting | Phase::Prepared))))
    }

    /// Backend `i` was aborted: it holds the open transaction no more.
    pub fn aborted(&mut self, i: usize) {
        self.at(i).open = None;
    }

    /// Backend `i`'s finish of the open transaction, committed as `tid`
    /// (the array's, or what it said), ended this way.
    pub fn finished(&mut self, i: usize, tid: Tid, end: FinishEnd) {
        let h = self.at(i);
        let open = h.open.take().map(|(t, _)| t).unwrap_or(tid);
        match end {
            FinishEnd::Logged => {
                if !h.logged.contains(&tid) {
                    h.logged.push(tid);
                    h.logged.sort();
                }
            }
            FinishEnd::Committed => {}
            FinishEnd::Unknown => h.unknown = Some(open.max(tid)),
        }
    }

    /// Backends holding a logged, unpublished transaction at or before
    /// `tid`: `make_durable(tid)` and `publish(tid)` go to all of them,
    /// optimal or not.
    pub fn logged_through(&self, tid: Tid) -> Vec<usize> {
        self.positions(|h| h.logged.first().is_some_and(|t| *t <= tid))
    }

    /// Backend `i` published everything up to `tid`.
    pub fn published(&mut self, i: usize, tid: Tid) {
        self.at(i).logged.retain(|t| *t > tid);
    }

    /// Whether a recovery of backend `i` may start.
    pub fn readiness(&self, i: usize) -> Readiness {
        let Some(h) = self.held.get(i) else {
            return Readiness::Idle;
        };
        if let Some((tid, _)) = h.open {
            return Readiness::Busy(tid);
        }
        if let Some(tid) = h.unknown {
            return Readiness::Unknown(tid);
        }
        match h.logged.last() {
            Some(tid) => Readiness::Logged(*tid),
            None => Readiness::Idle,
        }
    }

    /// The recovery resolved backend `i`'s unknown outcome and completed
    /// what was logged on it: it holds nothing of the array's now.
    pub fn settled(&mut self, i: usize) {
        let h = self.at(i);
        h.unknown = None;
        h.logged.clear();
    }

    /// A backend slot added or removed at runtime starts or ends empty.
    pub fn forget(&mut self, i: usize) {
        *self.at(i) = Held::default();
    }

    fn positions(&self, f: impl Fn(&Held) -> bool) -> Vec<usize> {
        (0..self.held.len()).filter(|&i| f(&self.held[i])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of a commit, as the array feeds them.
    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Begin(u64, &'static [usize]),
        Voted(usize, VoteEnd),
        /// The finish starts with these optimal.
        Plan(&'static [usize]),
        Aborted(usize),
        Finished(usize, u64, FinishEnd),
        Published(usize, u64),
        Settled(usize),
    }

    fn run(events: &[Ev]) -> (Inflight, Vec<FinishPlan>) {
        let mut f = Inflight::default();
        let mut plans = Vec::new();
        for ev in events {
            match *ev {
                Ev::Begin(t, p) => f.begin(Tid(t), p),
                Ev::Voted(i, e) => f.voted(i, e),
                Ev::Plan(optimal) => plans.push(f.finish_plan(|i| optimal.contains(&i))),
                Ev::Aborted(i) => f.aborted(i),
                Ev::Finished(i, t, e) => f.finished(i, Tid(t), e),
                Ev::Published(i, t) => f.published(i, Tid(t)),
                Ev::Settled(i) => f.settled(i),
            }
        }
        (f, plans)
    }

    #[test]
    fn readiness_table() {
        use Ev::*;
        use FinishEnd::Committed;
        use Readiness::{Busy, Idle};
        use VoteEnd::{Ended, Kept};
        type Case = (&'static str, Vec<Ev>, [Readiness; 2]);
        let cases: Vec<Case> = vec![
            ("nothing yet", vec![], [Idle, Idle]),
            (
                "voting",
                vec![Begin(5, &[0, 1])],
                [Busy(Tid(5)), Busy(Tid(5))],
            ),
            (
                "prepared",
                vec![Begin(5, &[0, 1]), Voted(0, Kept), Voted(1, Kept)],
                [Busy(Tid(5)), Busy(Tid(5))],
            ),
            (
                "vote refused: ended at once",
                vec![Begin(5, &[0, 1]), Voted(0, Kept), Voted(1, Ended)],
                [Busy(Tid(5)), Idle],
            ),
            (
                "vote without an answer: unknown",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, VoteEnd::Unknown),
                ],
                [Busy(Tid(5)), Readiness::Unknown(Tid(5))],
            ),
            (
                "committed without group commit",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0, 1]),
                    Finished(0, 5, Committed),
                    Finished(1, 5, Committed),
                ],
                [Idle, Idle],
            ),
            (
                "logged, not yet published: still the commit path's",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0, 1]),
                    Finished(0, 5, FinishEnd::Logged),
                    Finished(1, 5, FinishEnd::Logged),
                    Published(0, 5),
                ],
                [Idle, Readiness::Logged(Tid(5))],
            ),
            (
                "left the optimal set after its vote: aborted",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0]),
                    Aborted(1),
                    Finished(0, 5, Committed),
                ],
                [Idle, Idle],
            ),
            (
                "finish failed: unknown until settled",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0, 1]),
                    Finished(0, 5, Committed),
                    Finished(1, 5, FinishEnd::Unknown),
                ],
                [Idle, Readiness::Unknown(Tid(5))],
            ),
            (
                "settled",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(1, VoteEnd::Unknown),
                    Settled(1),
                    Voted(0, Ended),
                ],
                [Idle, Idle],
            ),
            (
                "the next transaction opens while one is logged",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0, 1]),
                    Finished(0, 5, FinishEnd::Logged),
                    Finished(1, 5, FinishEnd::Logged),
                    Begin(6, &[0]),
                ],
                [Busy(Tid(6)), Readiness::Logged(Tid(5))],
            ),
        ];
        for (name, events, want) in cases {
            let (f, _) = run(&events);
            assert_eq!([f.readiness(0), f.readiness(1)], want, "{name}");
        }
    }

    #[test]
    fn finish_plan_table() {
        use Ev::*;
        use VoteEnd::*;
        type Case = (&'static str, Vec<Ev>, FinishPlan);
        let plan = |finish: &[usize], abort: &[usize]| FinishPlan {
            finish: finish.to_vec(),
            abort: abort.to_vec(),
        };
        let cases: Vec<Case> = vec![
            (
                "both optimal",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0, 1]),
                ],
                plan(&[0, 1], &[]),
            ),
            (
                "one disabled after the vote",
                vec![
                    Begin(5, &[0, 1]),
                    Voted(0, Kept),
                    Voted(1, Kept),
                    Plan(&[0]),
                ],
                plan(&[0], &[1]),
            ),
            (
                "one that did not keep its vote is not finished",
                vec![
                    Begin(5, &[0, 1, 2]),
                    Voted(0, Kept),
                    Voted(1, Ended),
                    Voted(2, Kept),
                    Plan(&[0, 1, 2]),
                ],
                plan(&[0, 2], &[]),
            ),
            (
                "not a participant: neither",
                vec![Begin(5, &[0]), Voted(0, Kept), Plan(&[0, 1])],
                plan(&[0], &[]),
            ),
            (
                "all left: all aborted",
                vec![Begin(5, &[0, 1]), Voted(0, Kept), Voted(1, Kept), Plan(&[])],
                plan(&[], &[0, 1]),
            ),
        ];
        for (name, events, want) in cases {
            let (_, plans) = run(&events);
            assert_eq!(plans.last(), Some(&want), "{name}");
        }
    }

    #[test]
    fn logged_through_and_published() {
        let mut f = Inflight::default();
        for (t, who) in [(5u64, &[0usize, 1][..]), (6, &[0][..])] {
            f.begin(Tid(t), who);
            for &i in who {
                f.voted(i, VoteEnd::Kept);
            }
            let plan = f.finish_plan(|_| true);
            for i in plan.finish {
                f.finished(i, Tid(t), FinishEnd::Logged);
            }
        }
        assert_eq!(f.logged_through(Tid(4)), Vec::<usize>::new());
        assert_eq!(f.logged_through(Tid(5)), vec![0, 1]);
        assert_eq!(f.logged_through(Tid(6)), vec![0, 1]);
        f.published(0, Tid(5));
        f.published(1, Tid(5));
        assert_eq!(f.logged_through(Tid(6)), vec![0]);
        assert_eq!(f.readiness(1), Readiness::Idle);
        assert_eq!(f.readiness(0), Readiness::Logged(Tid(6)));
        f.published(0, Tid(6));
        assert_eq!(f.readiness(0), Readiness::Idle);
        assert_eq!(f.abortable(), Vec::<usize>::new());
    }
}
