//! Pack's garbage collection: which objects (and which of their old
//! revisions) survive a pack with `gc = true`.
//!
//! Pure decisions, no storage inside: callers hand in closures that load a
//! record. The rules are ZODB FileStorage's (`ZODB/FileStorage/fspack.py`,
//! class `GC`), so a memory and a file backend of one array pack alike:
//!
//! 1. **At the pack time** ([`PackGc::mark_from`]): starting from the root
//!    (oid 0), follow the references ([`super::pickle_refs`]) in the revision
//!    of each object that is current at the pack time. Every object reached
//!    keeps that revision; every other revision up to the pack time goes.
//! 2. **From the future** ([`PackGc::note_future_backpointer`]): records
//!    written after the pack time are all kept, whatever is reachable. One of
//!    them that points back (undo, `data_txn`) at a revision up to the pack
//!    time keeps that revision too. If its object was already reachable, the
//!    old revision's references are followed as in step 1 (its return value
//!    says so); if not, the revision is kept without following it. (This
//!    copies `findReachableFromFuture`, including its quirk that a second
//!    such record of a then-unreachable object *is* followed.)
//!
//! Objects only written after the pack time are untouched, since pack only
//! drops revisions up to the pack time.
//!
//! Differences from FileStorage, both on damaged databases: a reference to
//! an object that does not exist at the pack time is ignored (FileStorage's
//! pack fails with `KeyError`; nothing is lost by ignoring it), while a
//! record that cannot be scanned fails the whole pack with an error naming
//! the object (never drop what we cannot read). Traversal is iterative.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;

use super::pickle_refs::{references_into, RefError};
use super::{Data, Oid};

/// The root object every reachability walk starts from.
pub const ROOT: Oid = Oid(0);

/// Why garbage collection failed (the pack must then change nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcError {
    /// The record of `oid` is not a pickle this scanner understands.
    Unreadable { oid: Oid, error: RefError },
}

impl fmt::Display for GcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcError::Unreadable { oid, error } => write!(
                f,
                "cannot find the references of object {oid}: {error}; \
                 pack refused so that nothing reachable is dropped"
            ),
        }
    }
}

impl std::error::Error for GcError {}

/// The oids reachable from `root`, where `load(oid)` returns the record to
/// follow for `oid` (`None`: the object does not exist, and is skipped).
/// The root itself is included only when it exists.
pub fn reachable(
    root: Oid,
    mut load: impl FnMut(Oid) -> Option<Data>,
) -> Result<HashSet<Oid>, GcError> {
    let mut gc: PackGc<()> = PackGc::new();
    gc.mark_from([root], |oid| load(oid).map(|d| ((), d)))?;
    Ok(gc.reachable.into_keys().collect())
}

/// FileStorage's pack GC state. `R` names a revision (a tid for the memory
/// storage, a file position for a file storage).
#[derive(Debug, Clone)]
pub struct PackGc<R> {
    /// Reachable oids and the revision up to the pack time each keeps.
    reachable: HashMap<Oid, R>,
    /// Further old revisions kept because later records point back at them.
    extra: HashMap<Oid, Vec<R>>,
}

impl<R: Copy + Eq> Default for PackGc<R> {
    fn default() -> Self {
        PackGc::new()
    }
}

impl<R: Copy + Eq> PackGc<R> {
    pub fn new() -> PackGc<R> {
        PackGc {
            reachable: HashMap::new(),
            extra: HashMap::new(),
        }
    }

    /// Mark everything reachable from `roots` as of the pack time
    /// (`findReachableAtPacktime`). `current(oid)` returns the revision of
    /// `oid` current at the pack time and its data, `None` when the object
    /// does not exist then. Objects already marked are not revisited.
    pub fn mark_from(
        &mut self,
        roots: impl IntoIterator<Item = Oid>,
        mut current: impl FnMut(Oid) -> Option<(R, Data)>,
    ) -> Result<(), GcError> {
        let mut todo: Vec<Oid> = roots.into_iter().collect();
        let mut refs = Vec::new();
        while let Some(oid) = todo.pop() {
            if self.reachable.contains_key(&oid) {
                continue;
            }
            let Some((rev, data)) = current(oid) else {
                continue;
            };
            refs.clear();
            references_into(&data, &mut refs)
                .map_err(|error| GcError::Unreadable { oid, error })?;
            self.reachable.insert(oid, rev);
            todo.extend(refs.iter().filter(|o| !self.reachable.contains_key(o)));
        }
        Ok(())
    }

    /// A record written after the pack time points back at revision `back`
    /// (up to the pack time) of `oid`: keep that revision. Returns `true`
    /// when the caller must follow the references of `back` with
    /// [`PackGc::mark_from`] (`findReachableFromFuture`'s extra roots) after
    /// noting every such record, in commit order.
    pub fn note_future_backpointer(&mut self, oid: Oid, back: R) -> bool {
        match self.reachable.entry(oid) {
            Entry::Occupied(_) => {
                let kept = self.extra.entry(oid).or_default();
                if kept.contains(&back) {
                    false
                } else {
                    kept.push(back);
                    true
                }
            }
            Entry::Vacant(v) => {
                v.insert(back);
                false
            }
        }
    }

    /// Whether `oid` is reachable (keeps at least one old revision).
    pub fn is_reachable(&self, oid: Oid) -> bool {
        self.reachable.contains_key(&oid)
    }

    /// Whether revision `rev` (up to the pack time) of `oid` survives.
    pub fn keeps(&self, oid: Oid, rev: R) -> bool {
        self.reachable.get(&oid) == Some(&rev)
            || self.extra.get(&oid).is_some_and(|v| v.contains(&rev))
    }

    /// How many objects are reachable.
    pub fn reachable_count(&self) -> usize {
        self.reachable.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A ZODB-like record whose state references `refs` (protocol 3,
    /// `(oid, None)` persistent ids), plus weak references to `weak`.
    fn record(refs: &[u64], weak: &[u64]) -> Data {
        let mut v = b"\x80\x03cm\nK\nq\x00.\x80\x03]q\x01(".to_vec();
        for r in refs {
            v.push(b'C');
            v.push(8);
            v.extend_from_slice(&r.to_be_bytes());
            v.extend_from_slice(b"h\x00\x86Q");
        }
        for w in weak {
            v.extend_from_slice(b"](\x8c\x01wC\x08");
            v.extend_from_slice(&w.to_be_bytes());
            v.extend_from_slice(b"\x85eQ");
        }
        v.extend_from_slice(b"e.");
        Arc::from(v)
    }

    fn graph(edges: &[(u64, &[u64])]) -> BTreeMap<Oid, Data> {
        edges
            .iter()
            .map(|(o, refs)| (Oid(*o), record(refs, &[])))
            .collect()
    }

    fn set(v: &[u64]) -> HashSet<Oid> {
        v.iter().map(|o| Oid(*o)).collect()
    }

    #[test]
    fn record_helper_is_scanned() {
        assert_eq!(
            references_into(&record(&[1, 2], &[3]), &mut Vec::new()),
            Ok(())
        );
        assert_eq!(
            super::super::pickle_refs::references(&record(&[1, 2], &[3])),
            Ok(vec![Oid(1), Oid(2)])
        );
    }

    #[test]
    fn reachable_table() {
        type Case = (&'static str, Vec<(u64, &'static [u64])>, &'static [u64]);
        let cases: Vec<Case> = vec![
            ("empty storage", vec![], &[]),
            ("root only", vec![(0, &[])], &[0]),
            ("unreachable object", vec![(0, &[]), (1, &[])], &[0]),
            (
                "chain",
                vec![(0, &[1]), (1, &[2]), (2, &[]), (3, &[])],
                &[0, 1, 2],
            ),
            (
                "diamond",
                vec![(0, &[1, 2]), (1, &[3]), (2, &[3]), (3, &[])],
                &[0, 1, 2, 3],
            ),
            (
                "cycle through the root",
                vec![(0, &[1]), (1, &[0])],
                &[0, 1],
            ),
            (
                "unreachable cycle",
                vec![(0, &[]), (1, &[2]), (2, &[1])],
                &[0],
            ),
            (
                "missing reference ignored",
                vec![(0, &[7, 1]), (1, &[])],
                &[0, 1],
            ),
            ("self reference", vec![(0, &[0])], &[0]),
            ("no root", vec![(1, &[2]), (2, &[])], &[]),
        ];
        for (name, edges, want) in cases {
            let g = graph(&edges);
            let got = reachable(ROOT, |o| g.get(&o).cloned());
            assert_eq!(got, Ok(set(want)), "{name}");
        }
    }

    #[test]
    fn weak_references_are_not_followed() {
        let g: BTreeMap<Oid, Data> = [
            (Oid(0), record(&[1], &[2])),
            (Oid(1), record(&[], &[])),
            (Oid(2), record(&[], &[])),
        ]
        .into();
        assert_eq!(reachable(ROOT, |o| g.get(&o).cloned()), Ok(set(&[0, 1])));
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let n = 200_000u64;
        let g: HashMap<Oid, Data> = (0..n)
            .map(|i| {
                let next = [i + 1];
                let refs: &[u64] = if i + 1 < n { &next } else { &[] };
                (Oid(i), record(refs, &[]))
            })
            .collect();
        let got = reachable(ROOT, |o| g.get(&o).cloned()).expect("gc");
        assert_eq!(got.len() as u64, n);
    }

    #[test]
    fn an_unreadable_record_fails_and_names_the_object() {
        let mut g = graph(&[(0, &[1]), (1, &[2]), (2, &[])]);
        g.insert(Oid(1), Arc::from(&b"\x80\x03garbage"[..]));
        match reachable(ROOT, |o| g.get(&o).cloned()) {
            Err(e @ GcError::Unreadable { oid: Oid(1), .. }) => {
                assert!(e.to_string().contains("0x0000000000000001"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // An unreachable unreadable record does not matter.
        let mut g = graph(&[(0, &[]), (1, &[])]);
        g.insert(Oid(1), Arc::from(&b"junk"[..]));
        assert_eq!(reachable(ROOT, |o| g.get(&o).cloned()), Ok(set(&[0])));
    }

    #[test]
    fn each_object_is_loaded_once() {
        let g = graph(&[(0, &[1, 2, 1]), (1, &[2, 0]), (2, &[1])]);
        let mut loads = Vec::new();
        let got = reachable(ROOT, |o| {
            loads.push(o);
            g.get(&o).cloned()
        });
        assert_eq!(got, Ok(set(&[0, 1, 2])));
        loads.sort();
        assert_eq!(loads, vec![Oid(0), Oid(1), Oid(2)]);
    }

    /// (name, graph at the pack time as (oid, current rev, refs),
    ///  old revisions as (oid, rev, refs), future backpointers (oid, back),
    ///  expected kept (oid, rev)).
    type FutureCase = (
        &'static str,
        Vec<(u64, u32, &'static [u64])>,
        Vec<(u64, u32, &'static [u64])>,
        Vec<(u64, u32)>,
        Vec<(u64, u32)>,
    );

    #[test]
    fn future_backpointers_table() {
        let cases: Vec<FutureCase> = vec![
            (
                "no future records",
                vec![(0, 2, &[1]), (1, 1, &[]), (2, 1, &[])],
                vec![],
                vec![],
                vec![(0, 2), (1, 1)],
            ),
            (
                // An undo after the pack time restores root@1, which
                // referenced 2: 2 is kept (the extra root is followed).
                "undo of a reachable object follows the old revision",
                vec![(0, 3, &[1]), (1, 1, &[]), (2, 1, &[])],
                vec![(0, 1, &[2])],
                vec![(0, 1)],
                vec![(0, 3), (0, 1), (1, 1), (2, 1)],
            ),
            (
                // Object 5 is unreachable: its pointed-at revision is kept
                // but not followed, so 6 goes.
                "backpointer of an unreachable object is kept, not followed",
                vec![(0, 1, &[]), (5, 4, &[]), (6, 1, &[])],
                vec![(5, 2, &[6])],
                vec![(5, 2)],
                vec![(0, 1), (5, 2)],
            ),
            (
                // fspack's quirk: the second backpointer of that object is
                // an extra root, since the first made it "reachable".
                "second backpointer of an unreachable object is followed",
                vec![(0, 1, &[]), (5, 4, &[]), (6, 1, &[]), (7, 1, &[])],
                vec![(5, 2, &[6]), (5, 3, &[7])],
                vec![(5, 2), (5, 3)],
                vec![(0, 1), (5, 2), (5, 3), (7, 1)],
            ),
            (
                "same backpointer twice is followed once",
                vec![(0, 3, &[]), (2, 1, &[])],
                vec![(0, 1, &[2])],
                vec![(0, 1), (0, 1)],
                vec![(0, 3), (0, 1), (2, 1)],
            ),
            (
                "backpointer to the current revision",
                vec![(0, 3, &[1]), (1, 1, &[])],
                vec![],
                vec![(0, 3)],
                vec![(0, 3), (1, 1)],
            ),
        ];
        for (name, current, old, future, want) in cases {
            let cur: HashMap<Oid, (u32, Data)> = current
                .iter()
                .map(|(o, r, refs)| (Oid(*o), (*r, record(refs, &[]))))
                .collect();
            let mut revs: HashMap<(Oid, u32), Data> = old
                .iter()
                .map(|(o, r, refs)| ((Oid(*o), *r), record(refs, &[])))
                .collect();
            for (o, (r, d)) in &cur {
                revs.insert((*o, *r), d.clone());
            }
            let mut gc: PackGc<u32> = PackGc::new();
            gc.mark_from([ROOT], |o| cur.get(&o).cloned())
                .expect("mark");
            let mut extra_roots = Vec::new();
            for (o, back) in &future {
                if gc.note_future_backpointer(Oid(*o), *back) {
                    extra_roots.push((Oid(*o), *back));
                }
            }
            for (o, back) in extra_roots {
                let d = revs.get(&(o, back)).cloned().expect("revision");
                let refs = super::super::pickle_refs::references(&d).expect("refs");
                gc.mark_from(refs, |o| cur.get(&o).cloned()).expect("mark");
            }
            let mut all: Vec<(u64, u32)> = revs.keys().map(|(o, r)| (o.0, *r)).collect();
            all.sort();
            let mut kept: Vec<(u64, u32)> = all
                .into_iter()
                .filter(|(o, r)| gc.keeps(Oid(*o), *r))
                .collect();
            let mut want = want;
            want.sort();
            want.dedup();
            kept.sort();
            assert_eq!(kept, want, "{name}");
        }
    }
}
