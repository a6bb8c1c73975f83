//! Why a backend is not optimal ([`Reason`]), and why a recovery was
//! refused or failed ([`RecoveryError`]): typed, so decisions match on
//! them instead of reading strings; their `Display` is what operators read
//! in logs, `ctl details` and the state file (say what happened and what
//! to do).

use crate::storage::{Oid, Tid};
use std::fmt;
use std::time::Duration;

/// Why a backend left the optimal set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It could not be opened or connected (at start, or when it was
    /// added): the opener's words.
    Unavailable(String),
    /// The state file named it: it was degraded before the restart, for
    /// the reason given then (as text: the file keeps words, not types).
    BeforeRestart(String),
    /// At start-up its last transaction is behind another backend's.
    Behind { last: Tid, newest: Tid },
    /// A call at start-up or at a takeover failed (`lastTransaction`,
    /// `new_oids`); `error` says which of the two.
    StartUp { call: &'static str, error: String },
    /// Added while the array ran: it is recovered before it serves, or
    /// cannot be reached yet.
    Added(Option<String>),
    /// The operator took it out (`zeoraid ctl disable`).
    Disabled,
    /// A call failed with an error that is the backend's, not the
    /// storage's answer (`what` names the call; `error` is its class and
    /// message).
    Failed { what: String, error: String },
    /// A call missed `backend-timeout`.
    TimedOut { what: String, after: Duration },
    /// Its vote disagreed with the majority's, or failed.
    Vote { tid: Tid, why: String },
    /// Its pack disagreed with the majority's, or failed.
    Pack(String),
    /// `make_durable` failed after the transaction was logged.
    NotDurable { tid: Tid, error: String },
    /// It committed the array's transaction under another tid.
    WrongTid {
        what: String,
        committed: Tid,
        given: Tid,
    },
    /// Its finish failed: it may or may not hold the transaction.
    FinishFailed {
        what: String,
        tid: Tid,
        error: String,
    },
    /// A read found an object it lacks that another backend has.
    MissingObject { oid: Oid, on: String },
    /// A ZEO backend told of a transaction committed on it by another
    /// client.
    WrittenDirectly { tid: Tid, objects: usize },
    /// A ZEO backend's connection dropped.
    ConnectionLost(String),
    /// `verify` found its history different from an optimal backend's.
    Diverged {
        difference: String,
        reference: String,
    },
    /// A recovery of it started and failed.
    RecoveryFailed(String),
    /// Its storage is not open (shown for an optimal backend without one).
    NotOpen,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unavailable(why) => f.write_str(why),
            Reason::BeforeRestart(why) => write!(f, "degraded before the restart: {why}"),
            Reason::Behind { last, newest } => write!(
                f,
                "missing transactions: its last transaction is {last}, another backend has \
                 {newest}; recover it"
            ),
            Reason::StartUp { call, error } => write!(f, "{call} failed: {error}"),
            Reason::Added(None) => {
                f.write_str("added at runtime: it is recovered from an optimal backend")
            }
            Reason::Added(Some(problem)) => write!(f, "added at runtime; {problem}"),
            Reason::Disabled => f.write_str(
                "disabled by the operator (zeoraid ctl disable); `zeoraid ctl recover` brings it \
                 back",
            ),
            Reason::Failed { what, error } => write!(f, "{what} failed: {error}"),
            Reason::TimedOut { what, after } => write!(
                f,
                "{what} did not answer within backend-timeout ({:.1} s)",
                after.as_secs_f64()
            ),
            Reason::Vote { tid, why } => write!(f, "vote of {tid}: {why}"),
            Reason::Pack(why) => write!(f, "pack: {why}"),
            Reason::NotDurable { tid, error } => write!(
                f,
                "could not make {tid} durable: {error}; it may lack recent transactions, recover it"
            ),
            Reason::WrongTid {
                what,
                committed,
                given,
            } => write!(
                f,
                "{what} committed as {committed}, the array gave it {given}; recover it"
            ),
            Reason::FinishFailed { what, tid, error } => write!(
                f,
                "{what} of {tid} failed: {error}; it may or may not hold that transaction, \
                 recover it"
            ),
            Reason::MissingObject { oid, on } => {
                write!(f, "missing object: {oid} is on backend {on:?}; recover it")
            }
            Reason::WrittenDirectly { tid, objects } => write!(
                f,
                "written to directly: transaction {tid} ({objects} objects) was committed on it \
                 by another client, not through the array; stop writing to backends directly \
                 and recover it"
            ),
            Reason::ConnectionLost(why) => {
                write!(f, "connection lost: {why}; recover it once it is back")
            }
            Reason::Diverged {
                difference,
                reference,
            } => write!(
                f,
                "{difference} (found by verify against {reference:?}); recover it with force to \
                 rebuild it, or investigate which copy is right"
            ),
            Reason::RecoveryFailed(why) => write!(f, "recovery failed: {why}"),
            Reason::NotOpen => f.write_str("not open"),
        }
    }
}

/// How a recovery target's history departs from the source's: nothing may
/// be written to it (only a forced recovery rebuilds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The target's last transaction.
    pub at: Tid,
    pub how: DivergenceKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DivergenceKind {
    /// It holds transactions the source lacks.
    Ahead { source_last: Tid },
    /// Its last transaction is not in the source's history.
    NotInSource,
    /// Its own last transaction could not be read back.
    Unreadable,
    /// The transaction differs from the source's.
    Differs,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at;
        match &self.how {
            DivergenceKind::Ahead { source_last } => write!(
                f,
                "diverged at {at}: it holds transactions the source lacks (its last is {at}, the \
                 source's {source_last})"
            ),
            DivergenceKind::NotInSource => write!(
                f,
                "diverged at {at}: its last transaction is not in the source's history"
            ),
            DivergenceKind::Unreadable => write!(
                f,
                "diverged at {at}: its own last transaction could not be read back"
            ),
            DivergenceKind::Differs => write!(
                f,
                "diverged at {at}: the transaction differs from the source's (metadata or records)"
            ),
        }
    }
}

/// Why a recovery did not bring its backend back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    /// The target diverged: auto-recovery leaves it to the operator.
    Diverged(Divergence),
    /// Anything else (unreachable, no source, a copy that failed): retried.
    Failed(String),
}

impl RecoveryError {
    pub fn is_divergence(&self) -> bool {
        matches!(self, RecoveryError::Diverged(_))
    }
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Diverged(d) => d.fmt(f),
            RecoveryError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for RecoveryError {
    fn from(why: String) -> Self {
        RecoveryError::Failed(why)
    }
}

impl From<&str> for RecoveryError {
    fn from(why: &str) -> Self {
        RecoveryError::Failed(why.to_string())
    }
}

impl From<Divergence> for RecoveryError {
    fn from(d: Divergence) -> Self {
        RecoveryError::Diverged(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What operators read: each reason says what happened and, where
    /// there is something to do, what.
    #[test]
    fn reasons_read_as_before() {
        let t = Tid(0x03d0);
        let table: Vec<(Reason, &str)> = vec![
            (
                Reason::Behind {
                    last: Tid(1),
                    newest: t,
                },
                "missing transactions: its last transaction is 0x0000000000000001, another \
                 backend has 0x00000000000003d0; recover it",
            ),
            (
                Reason::TimedOut {
                    what: "tpc_vote".into(),
                    after: Duration::from_millis(2500),
                },
                "tpc_vote did not answer within backend-timeout (2.5 s)",
            ),
            (
                Reason::Vote {
                    tid: t,
                    why: "answered x".into(),
                },
                "vote of 0x00000000000003d0: answered x",
            ),
            (Reason::Added(None), "added at runtime: it is recovered"),
            (
                Reason::Added(Some("cannot connect".into())),
                "added at runtime; cannot connect",
            ),
            (
                Reason::ConnectionLost("reset".into()),
                "connection lost: reset; recover it once it is back",
            ),
            (Reason::Disabled, "disabled by the operator"),
            (
                Reason::BeforeRestart("x".into()),
                "degraded before the restart: x",
            ),
            (
                Reason::RecoveryFailed("no source".into()),
                "recovery failed: no source",
            ),
        ];
        for (r, want) in table {
            let got = r.to_string();
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn divergences_say_where_and_are_told_apart() {
        let d = Divergence {
            at: Tid(16),
            how: DivergenceKind::Differs,
        };
        assert!(d
            .to_string()
            .starts_with("diverged at 0x0000000000000010: "));
        assert!(RecoveryError::from(d).is_divergence());
        assert!(!RecoveryError::from("diverged, said a string").is_divergence());
    }
}
