//! The ZODB storage rules both storages apply: pure decisions, no IO.
//!
//! [`MemoryStorage`](super::memory::MemoryStorage) keeps revisions in memory
//! and [`FileStorage`](super::file::FileStorage) keeps records at positions in
//! a `Data.fs`, but they decide alike, as Python's `FileStorage` does (so RAID
//! mirrors of either kind answer alike): the tid of a new transaction, the
//! per-operation checks of a vote (store serials, deletes, `checkCurrent`,
//! restores, undo), the undo log window, oid allocation, pack times, and the
//! error messages clients see. Each rule takes the facts it needs; where a
//! rule names a record it is generic over how the storage names one (a tid
//! in memory, a file position in the file storage).

use std::sync::Arc;

use super::gc::{self, GcError};
use super::{timestamp, Conflict, Data, Error, Oid, Result, Tid};

/// Transaction status of an ordinary (undoable) transaction.
pub const STATUS_NORMAL: u8 = b' ';
/// Transaction status of a transaction touched by pack (not undoable).
pub const STATUS_PACKED: u8 = b'p';
/// FileStorage's legacy "undone" mark: accepted, never undoable.
pub const STATUS_UNDONE: u8 = b'u';
/// Statuses a transaction may be committed (restored) with.
pub const VALID_STATUSES: &[u8] = b" pu";

/// The most oids one `new_oids` call hands out (ZEO clients ask for 100).
pub const MAX_NEW_OIDS: usize = 65_536;

pub const CONFLICT_MESSAGE: &str = "database conflict error";
pub const READ_CONFLICT_MESSAGE: &str = "database read conflict error";
pub const UNDO_INVALID_TXN: &str = "Invalid transaction id";
pub const UNDO_NOT_UNDOABLE: &str = "non-undoable transaction";
pub const UNDO_INVALID_RECORD: &str = "Invalid undo transaction id";
pub const UNDO_LOADBACK_FAILED: &str = "_loadBack() failed";
pub const UNDO_ADD_CONFLICT: &str =
    "Can't undo an add transaction followed by conflicting transactions.";
pub const UNDO_MODIFIED_LATER: &str = "Some data were modified by a later transaction";

/// A storage may vote a transaction: it is writable, and the status is
/// valid.
pub fn check_vote(read_only: bool, status: u8) -> Result<()> {
    if read_only {
        return Err(Error::ReadOnly);
    }
    check_status(status)
}

/// A transaction may be committed with `status` ([`VALID_STATUSES`]).
pub fn check_status(status: u8) -> Result<()> {
    if VALID_STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "invalid transaction status {:?}",
            char::from(status)
        )))
    }
}

/// Hand out `n` oids after `*max` (the largest one handed out or stored so
/// far; the first is 1, 0 is the root) and advance it. At most
/// [`MAX_NEW_OIDS`] per call.
pub fn allocate_oids(max: &mut u64, n: usize) -> Result<Vec<Oid>> {
    if n > MAX_NEW_OIDS {
        return Err(Error::Value(format!(
            "new_oids({n}): at most {MAX_NEW_OIDS} at a time"
        )));
    }
    let end = u64::try_from(n)
        .ok()
        .and_then(|n| max.checked_add(n))
        .ok_or_else(|| Error::Value("the oid space is exhausted".to_string()))?;
    let oids = (*max + 1..=end).map(Oid).collect();
    *max = end;
    Ok(oids)
}

/// The tid of a new transaction: the explicit one (restore, RAID) if it is
/// newer than `last`, else a fresh TimeStamp after `last`.
pub fn choose_tid(explicit: Option<Tid>, last: Tid, now_unix: f64) -> Result<Tid> {
    match explicit {
        Some(t) if t > last => Ok(t),
        Some(t) => Err(Error::Transaction(format!(
            "transaction id {t} is not later than the last transaction {last}"
        ))),
        None => Ok(timestamp::new_tid(now_unix, last)),
    }
}

/// The conflict of a store with `serial`, given the tid of the object's
/// committed record. As in FileStorage, an object that does not exist yet
/// never conflicts; an undone creation still has its (data-less) record's tid.
pub fn store_conflict(
    oid: Oid,
    committed: Option<Tid>,
    serial: Tid,
    data: &Data,
) -> Option<Conflict> {
    match committed {
        Some(c) if c != serial => Some(Conflict {
            oid,
            committed: c,
            read: serial,
            data: data.clone(),
        }),
        _ => None,
    }
}

/// Note a store's outcome in the vote's `conflicts`: a conflict is collected
/// for the client to resolve (replacing an earlier one of the object), and a
/// later successful store of the same object (the resolved re-store) clears
/// it, as ZEO's server does. True when the store goes ahead.
pub fn note_store(conflicts: &mut Vec<Conflict>, oid: Oid, conflict: Option<Conflict>) -> bool {
    match conflict {
        Some(conflict) => {
            match conflicts.iter_mut().find(|c| c.oid == oid) {
                Some(c) => *c = conflict,
                None => conflicts.push(conflict),
            }
            false
        }
        None => {
            conflicts.retain(|c| c.oid != oid);
            true
        }
    }
}

/// A delete with `serial`, given the tid of the object's committed record
/// (`None`: it never existed, PosKey). A stale serial is a ConflictError.
pub fn check_delete(oid: Oid, committed: Option<Tid>, serial: Tid) -> Result<()> {
    check_serial(oid, committed, serial, false)
}

/// `checkCurrentSerialInTransaction`, given the tid of the object's
/// committed record when that record has data (`None`: missing, deleted or
/// creation undone, PosKey). A stale serial is a ReadConflictError.
pub fn check_current(oid: Oid, committed_with_data: Option<Tid>, serial: Tid) -> Result<()> {
    check_serial(oid, committed_with_data, serial, true)
}

/// `serial` must be the `committed` tid (`None`: PosKey); a stale one is a
/// ConflictError, or a ReadConflictError with `read_conflict`.
fn check_serial(oid: Oid, committed: Option<Tid>, serial: Tid, read_conflict: bool) -> Result<()> {
    let committed = committed.ok_or(Error::PosKey(oid))?;
    if committed != serial {
        let message = if read_conflict {
            READ_CONFLICT_MESSAGE
        } else {
            CONFLICT_MESSAGE
        };
        return Err(Error::Conflict {
            oid,
            committed,
            read: serial,
            message: message.to_string(),
            read_conflict,
            class_name: None,
        });
    }
    Ok(())
}

/// A restored record must carry the transaction's own tid.
pub fn check_restore_serial(oid: Oid, serial: Tid, tid: Tid) -> Result<()> {
    if serial != tid {
        return Err(Error::Transaction(format!(
            "restore of {oid} under {serial} in transaction {tid}"
        )));
    }
    Ok(())
}

/// Whether two object states are the same bytes.
pub fn same_data(a: &Data, b: &Data) -> bool {
    Arc::ptr_eq(a, b) || a[..] == b[..]
}

/// The backpointer a restored record keeps: `prev` is the object's record
/// in `prev_txn` and its data, when this storage has it. Point back only
/// when the restored data is the same (FileStorage treats `prev_txn` as a
/// hint); `None`: write the data itself.
pub fn restore_backpointer<P>(prev: Option<(P, Option<&Data>)>, data: &Option<Data>) -> Option<P> {
    match (prev?, data) {
        ((p, None), None) => Some(p),
        ((p, Some(a)), Some(b)) if same_data(a, b) => Some(p),
        _ => None,
    }
}

/// The transaction to undo, as the storage found it (`None`: unknown, or
/// behind a packed transaction, where FileStorage's `_txn_find` stops): it
/// must have the ordinary status.
pub fn undo_target<T>(found: Option<T>, status: impl Fn(&T) -> u8) -> Result<T> {
    let invalid = |m: &str| Error::Undo {
        message: m.to_string(),
        oid: None,
    };
    let found = found.ok_or_else(|| invalid(UNDO_INVALID_TXN))?;
    if status(&found) != STATUS_NORMAL {
        return Err(invalid(UNDO_NOT_UNDOABLE));
    }
    Ok(found)
}

/// An object's current state as undo sees it (staged in the transaction so
/// far, or committed), `P` naming records.
#[derive(Clone, Debug, PartialEq)]
pub struct UndoView<P> {
    /// The current record (`None`: staged, not yet anywhere).
    pub record: Option<P>,
    /// The record holding its data (FileStorage's `cdataptr`): itself, or
    /// the one it points back at; `None` when neither.
    pub data_ptr: Option<P>,
    /// The state itself.
    pub data: Option<Data>,
}

/// FileStorage's `_transactionalUndoRecord` without conflict resolution:
/// whether the record `undone` (with its state `undone_data`; `creation`
/// when no record of the object precedes it) may be undone given the
/// object's `current` state. `Err` is the UndoError reason. Server-side
/// conflict resolution needs the application's classes, so where
/// FileStorage would try it, undo fails with [`UNDO_MODIFIED_LATER`].
pub fn undo_check<P: PartialEq>(
    undone: P,
    undone_data: Option<&Data>,
    creation: bool,
    current: &UndoView<P>,
) -> std::result::Result<(), &'static str> {
    let same_record =
        current.record.as_ref() == Some(&undone) || current.data_ptr.as_ref() == Some(&undone);
    if same_record {
        return Ok(());
    }
    // Something later changed the object: undo only if the current state
    // is the state being undone.
    let (Some(u), Some(c)) = (undone_data, &current.data) else {
        return Err(UNDO_LOADBACK_FAILED);
    };
    if !same_data(u, c) {
        return Err(if creation {
            UNDO_ADD_CONFLICT
        } else {
            UNDO_MODIFIED_LATER
        });
    }
    Ok(())
}

/// Whether an undo that [`undo_check`] refused may still succeed by
/// merging states (FileStorage tries `tryToResolveConflict` exactly when
/// the object has an earlier state and was changed later).
pub fn undo_may_resolve(reason: &str) -> bool {
    reason == UNDO_MODIFIED_LATER
}

/// The outcome of an undo: the first failure (object, reason), if any.
pub fn undo_outcome(failure: Option<(Oid, &str)>) -> Result<()> {
    match failure {
        Some((oid, m)) => Err(Error::Undo {
            message: m.to_string(),
            oid: Some(oid),
        }),
        None => Ok(()),
    }
}

/// The undo log window `[first, last)` over transactions newest first: the
/// ordinary ones, up to the first packed one (FileStorage's `UndoSearch`).
pub fn undo_window<T>(
    newest_first: impl IntoIterator<Item = T>,
    status: impl Fn(&T) -> u8,
    first: usize,
    last: usize,
) -> Vec<T> {
    newest_first
        .into_iter()
        .take_while(|e| status(e) != STATUS_PACKED)
        .filter(|e| status(e) == STATUS_NORMAL)
        .skip(first)
        .take(last.saturating_sub(first))
        .collect()
}

/// The tid of a pack time given as Unix time.
pub fn pack_time(t: f64) -> Result<Tid> {
    if !t.is_finite() {
        return Err(Error::Value(format!("invalid pack time {t}")));
    }
    Ok(timestamp::from_unix(t))
}

/// The tid to pack to: `requested` clamped to the last transaction (a pack
/// "tomorrow" packs as of now); `None` when not later than the previous
/// pack (nothing to do).
pub fn pack_tid(requested: Tid, last: Tid, previous: Option<Tid>) -> Option<Tid> {
    let packtid = requested.min(last);
    match previous {
        Some(p) if packtid <= p => None,
        _ => Some(packtid),
    }
}

/// A failure of pack's garbage collection.
pub fn gc_error(e: GcError) -> Error {
    Error::Value(format!("pack garbage collection failed: {e}"))
}

/// Pack with GC refuses (FileStorage's KeyError) when the root does not
/// exist at the pack time but object `oid` does.
pub fn gc_without_root(oid: Oid) -> Error {
    Error::Value(format!(
        "pack with garbage collection refused: the root object {} \
         does not exist at the pack time, but object {oid} does",
        gc::ROOT
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::{d, t, BASE};

    #[test]
    fn choose_tid_table() {
        let now = BASE + 10.0;
        let cases: &[(Option<Tid>, Tid, std::result::Result<Tid, ()>)] = &[
            (None, Tid::ZERO, Ok(timestamp::from_unix(now))),
            (None, t(5), Ok(timestamp::from_unix(now))),
            // The clock is behind the last transaction: successor.
            (None, t(20), Ok(timestamp::successor(t(20)))),
            (Some(t(3)), t(2), Ok(t(3))),
            (Some(Tid(1)), Tid::ZERO, Ok(Tid(1))),
            (Some(t(2)), t(2), Err(())),
            (Some(t(1)), t(2), Err(())),
            (Some(Tid::ZERO), Tid::ZERO, Err(())),
        ];
        for (explicit, last, want) in cases {
            let got = choose_tid(*explicit, *last, now);
            match want {
                Ok(w) => assert_eq!(got, Ok(*w), "{explicit:?} after {last}"),
                Err(()) => assert!(
                    matches!(got, Err(Error::Transaction(_))),
                    "{explicit:?} after {last}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn check_status_table() {
        for s in [b' ', b'p', b'u'] {
            assert_eq!(check_status(s), Ok(()), "{s}");
        }
        for s in [b'c', b'x', 0] {
            assert!(matches!(check_status(s), Err(Error::Value(_))), "{s}");
        }
        assert_eq!(check_vote(false, b' '), Ok(()));
        assert_eq!(check_vote(true, b' '), Err(Error::ReadOnly));
        assert_eq!(check_vote(true, b'x'), Err(Error::ReadOnly));
        assert!(matches!(check_vote(false, b'x'), Err(Error::Value(_))));
    }

    #[test]
    fn allocate_oids_table() {
        let mut max = 0;
        assert_eq!(allocate_oids(&mut max, 1), Ok(vec![Oid(1)]));
        assert_eq!(allocate_oids(&mut max, 2), Ok(vec![Oid(2), Oid(3)]));
        assert_eq!(allocate_oids(&mut max, 0), Ok(vec![]));
        assert_eq!(max, 3);
        assert!(matches!(
            allocate_oids(&mut max, MAX_NEW_OIDS + 1),
            Err(Error::Value(_))
        ));
        assert_eq!(max, 3);
        let mut max = u64::MAX - 1;
        assert_eq!(allocate_oids(&mut max, 1), Ok(vec![Oid(u64::MAX)]));
        assert!(matches!(allocate_oids(&mut max, 1), Err(Error::Value(_))));
        assert_eq!(max, u64::MAX);
    }

    #[test]
    fn store_conflicts_table() {
        let cases = [
            (None, Tid::ZERO, false),
            (None, t(1), false), // FileStorage: a new object never conflicts
            (Some(t(1)), t(1), false),
            (Some(t(2)), t(1), true),
            (Some(t(1)), Tid::ZERO, true),
        ];
        for (committed, serial, want) in cases {
            let got = store_conflict(Oid(7), committed, serial, &d("x"));
            let want = want.then(|| Conflict {
                oid: Oid(7),
                committed: committed.unwrap_or(Tid::ZERO),
                read: serial,
                data: d("x"),
            });
            assert_eq!(got, want, "{committed:?} {serial}");
        }
    }

    #[test]
    fn note_store_collects_replaces_and_clears() {
        let c = |oid: u64, data: &str| Conflict {
            oid: Oid(oid),
            committed: t(2),
            read: t(1),
            data: d(data),
        };
        let mut conflicts = Vec::new();
        assert!(!note_store(&mut conflicts, Oid(1), Some(c(1, "a"))));
        assert!(!note_store(&mut conflicts, Oid(2), Some(c(2, "b"))));
        assert!(!note_store(&mut conflicts, Oid(1), Some(c(1, "a2"))));
        assert_eq!(conflicts, vec![c(1, "a2"), c(2, "b")]);
        assert!(note_store(&mut conflicts, Oid(1), None));
        assert_eq!(conflicts, vec![c(2, "b")]);
        assert!(note_store(&mut conflicts, Oid(3), None));
        assert_eq!(conflicts, vec![c(2, "b")]);
    }

    #[test]
    fn serial_checks_table() {
        let conflict = |read_conflict: bool| Error::Conflict {
            oid: Oid(1),
            committed: t(2),
            read: t(1),
            message: if read_conflict {
                READ_CONFLICT_MESSAGE
            } else {
                CONFLICT_MESSAGE
            }
            .to_string(),
            read_conflict,
            class_name: None,
        };
        // (committed, serial, delete, check_current)
        let cases = [
            (Some(t(2)), t(2), Ok(()), Ok(())),
            (Some(t(2)), t(1), Err(conflict(false)), Err(conflict(true))),
            (
                None,
                t(1),
                Err(Error::PosKey(Oid(1))),
                Err(Error::PosKey(Oid(1))),
            ),
        ];
        for (committed, serial, delete, current) in cases {
            assert_eq!(check_delete(Oid(1), committed, serial), delete);
            assert_eq!(check_current(Oid(1), committed, serial), current);
        }
        assert_eq!(check_restore_serial(Oid(1), t(1), t(1)), Ok(()));
        assert!(matches!(
            check_restore_serial(Oid(1), t(1), t(2)),
            Err(Error::Transaction(_))
        ));
    }

    #[test]
    fn restore_backpointer_table() {
        let a = d("a");
        let b = d("b");
        type Case<'a> = (Option<(u64, Option<&'a Data>)>, Option<Data>, Option<u64>);
        let cases: Vec<Case> = vec![
            (None, Some(a.clone()), None),
            (None, None, None),
            (Some((7, Some(&a))), Some(a.clone()), Some(7)),
            (Some((7, Some(&a))), Some(d("a")), Some(7)),
            (Some((7, Some(&a))), Some(b.clone()), None),
            (Some((7, None)), None, Some(7)),
            (Some((7, Some(&a))), None, None),
            (Some((7, None)), Some(a.clone()), None),
        ];
        for (i, (prev, data, want)) in cases.into_iter().enumerate() {
            assert_eq!(restore_backpointer(prev, &data), want, "case {i}");
        }
    }

    #[test]
    fn undo_target_table() {
        let undo_err = |m: &str| Error::Undo {
            message: m.to_string(),
            oid: None,
        };
        let cases = [
            (Some(STATUS_NORMAL), Ok(STATUS_NORMAL)),
            (Some(STATUS_PACKED), Err(undo_err(UNDO_NOT_UNDOABLE))),
            (Some(STATUS_UNDONE), Err(undo_err(UNDO_NOT_UNDOABLE))),
            (None, Err(undo_err(UNDO_INVALID_TXN))),
        ];
        for (found, want) in cases {
            assert_eq!(undo_target(found, |s| *s), want, "{found:?}");
        }
    }

    #[test]
    fn undo_check_table() {
        let a = d("a");
        let b = d("b");
        let view = |record: Option<u64>, ptr: Option<u64>, data: Option<&Data>| UndoView {
            record,
            data_ptr: ptr,
            data: data.cloned(),
        };
        // (undone record, undone data, creation, current, result)
        type Case<'a> = (
            u64,
            Option<&'a Data>,
            bool,
            UndoView<u64>,
            std::result::Result<(), &'a str>,
        );
        let cases: Vec<Case> = vec![
            // The undone record is current.
            (
                100,
                Some(&a),
                false,
                view(Some(100), Some(100), Some(&a)),
                Ok(()),
            ),
            (
                100,
                Some(&a),
                true,
                view(Some(100), Some(100), Some(&a)),
                Ok(()),
            ),
            // The current record points back at the undone one.
            (
                100,
                Some(&a),
                false,
                view(Some(200), Some(100), Some(&a)),
                Ok(()),
            ),
            (
                100,
                Some(&b),
                false,
                view(Some(200), Some(100), Some(&a)),
                Ok(()),
            ),
            // Later record with equal data (committed or staged).
            (
                100,
                Some(&a),
                false,
                view(Some(200), Some(200), Some(&a)),
                Ok(()),
            ),
            (100, Some(&a), false, view(None, None, Some(&a)), Ok(())),
            // Later record with other data.
            (
                100,
                Some(&a),
                false,
                view(Some(200), Some(200), Some(&b)),
                Err(UNDO_MODIFIED_LATER),
            ),
            (
                100,
                Some(&a),
                true,
                view(Some(200), Some(200), Some(&b)),
                Err(UNDO_ADD_CONFLICT),
            ),
            // Later delete, or undone record without data.
            (
                100,
                Some(&a),
                false,
                view(Some(200), None, None),
                Err(UNDO_LOADBACK_FAILED),
            ),
            (
                100,
                None,
                false,
                view(Some(200), Some(200), Some(&a)),
                Err(UNDO_LOADBACK_FAILED),
            ),
        ];
        for (i, (undone, data, creation, cur, want)) in cases.into_iter().enumerate() {
            assert_eq!(undo_check(undone, data, creation, &cur), want, "case {i}");
        }
    }

    #[test]
    fn undo_outcome_table() {
        assert_eq!(undo_outcome(None), Ok(()));
        assert_eq!(
            undo_outcome(Some((Oid(3), UNDO_MODIFIED_LATER))),
            Err(Error::Undo {
                message: UNDO_MODIFIED_LATER.to_string(),
                oid: Some(Oid(3)),
            })
        );
    }

    #[test]
    fn undo_window_table() {
        let n = STATUS_NORMAL;
        let p = STATUS_PACKED;
        let u = STATUS_UNDONE;
        // (statuses newest first, first, last, indexes)
        let cases: Vec<(Vec<u8>, usize, usize, Vec<usize>)> = vec![
            (vec![n, n, n], 0, 20, vec![0, 1, 2]),
            (vec![n, n, n], 1, 2, vec![1]),
            (vec![n, u, n], 0, 20, vec![0, 2]),
            (vec![n, p, n], 0, 20, vec![0]),
            (vec![p, n], 0, 20, vec![]),
            (vec![n, n], 5, 3, vec![]),
            (vec![n, u, n, p, n], 0, 100, vec![0, 2]),
            (vec![n, u, n, p, n], 1, 100, vec![2]),
        ];
        for (st, first, last, want) in cases {
            let got: Vec<usize> = undo_window(st.iter().enumerate(), |(_, s)| **s, first, last)
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            assert_eq!(got, want, "{st:?} {first} {last}");
        }
    }

    #[test]
    fn pack_times_table() {
        assert_eq!(pack_time(BASE), Ok(timestamp::from_unix(BASE)));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(pack_time(bad), Err(Error::Value(_))), "{bad}");
        }
        let cases = [
            (t(5), t(9), None, Some(t(5))),
            // A pack "tomorrow" packs as of the last transaction.
            (t(20), t(9), None, Some(t(9))),
            (t(5), t(9), Some(t(4)), Some(t(5))),
            // Not later than the previous pack: nothing to do.
            (t(5), t(9), Some(t(5)), None),
            (t(20), t(9), Some(t(9)), None),
        ];
        for (requested, last, previous, want) in cases {
            assert_eq!(pack_tid(requested, last, previous), want);
        }
    }
}
