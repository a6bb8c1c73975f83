//! The array's shared object cache (issue #24): object revisions in
//! memory, shared by every client of the array, answering `loadBefore`
//! and `loadSerial` exactly as the backends would.
//!
//! Every write goes through the array, so the array knows when each
//! object changes. The cache holds, per object, up to [`MAX_REVISIONS`]
//! revisions `(start, end, data)`: `end` is the tid that replaced it, or
//! `None` for the current one. A revision answers `loadBefore(oid,
//! before)` when `start < before` and (`end` is `None` or `before <=
//! end`): that is the backends' own answer, for old and new snapshots.
//!
//! **Filled** by loads (what a backend answered) and by the array's own
//! commits (their data is in hand), **changed** at the commit that
//! changes an object, when that commit is published (visible on the
//! backends and durable), never before. Undo, a client-side resolution
//! the backend did (`resolved`), deletions and blob stores are forgotten
//! instead of filled; a pack, a backend written to directly and a change
//! of controller (fencing) forget everything.
//!
//! **The race that matters** is a load that read a revision from a
//! backend just before a commit replaced it, and puts it in after the
//! commit's change: it would serve a stale "current" revision forever.
//! Every change bumps a generation of the object's stripe
//! ([`STRIPES`] of them) under the stripe's lock; a load takes a
//! [`Ticket`] (the generation) before it asks a backend, and its answer
//! goes in only if the generation has not moved. A change during the load
//! costs one fill, never correctness.
//!
//! Decisions ([`Revisions::answer`], [`Revisions::with_load`],
//! [`Revisions::with_commit`], [`changes`]) are pure and table-tested;
//! the [`Cache`] around them is the locks and the counters. Eviction is
//! `quick_cache`'s S3-FIFO by bytes: a scan of cold objects passes
//! through its small queue without flushing the hot ones.

use crate::locks::lock;
use crate::storage::{Data, Loaded, Oid, Op, Tid};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Revisions kept per object: the current one and a few before it, for
/// readers of older snapshots (long transactions, a client's MVCC).
pub const MAX_REVISIONS: usize = 4;

/// Lock stripes of the generations (a power of two).
pub const STRIPES: usize = 64;

/// Bytes counted per object beyond its data: the map slot, the revision
/// list and the allocations' headers (measured: `cargo bench --bench
/// cache -- memory`; the README's memory figure).
pub const OBJECT_OVERHEAD: u64 = 160;

/// Bytes counted per revision beyond its data (its slot in the list, the
/// data's allocation header).
pub const REVISION_OVERHEAD: u64 = 64;

/// The most shards a cache has (see [`Cache::new`]).
pub const SHARDS: usize = 16;

/// Shards for a cache of `capacity` bytes: one per MB, a power of two,
/// 1 to [`SHARDS`].
pub fn shards_for(capacity: u64) -> usize {
    let per_mb = (capacity >> 20).clamp(1, SHARDS as u64) as usize;
    1 << per_mb.ilog2()
}

/// `cache-size`'s default: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;

/// One revision of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    pub start: Tid,
    /// The tid that replaced it; `None`: current.
    pub end: Option<Tid>,
    pub data: Data,
}

/// What the cache knows of one object, newest first; at most one
/// revision is current, and only the newest.
#[derive(Clone, Debug, PartialEq)]
pub struct Revisions {
    revs: Vec<Revision>,
    weight: u64,
}

impl Revisions {
    fn new(mut revs: Vec<Revision>) -> Revisions {
        revs.truncate(MAX_REVISIONS);
        let weight = OBJECT_OVERHEAD
            + revs
                .iter()
                .map(|r| REVISION_OVERHEAD + r.data.len() as u64)
                .sum::<u64>();
        Revisions { revs, weight }
    }

    /// The revisions, newest first.
    pub fn revisions(&self) -> &[Revision] {
        &self.revs
    }

    /// The bytes this object counts for.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// `loadBefore(oid, before)`'s answer, if a revision covers `before`.
    pub fn answer(&self, before: Tid) -> Option<Loaded> {
        self.revs
            .iter()
            .find(|r| r.start < before && r.end.is_none_or(|e| before <= e))
            .map(|r| Loaded {
                data: r.data.clone(),
                start: r.start,
                end: r.end,
            })
    }

    /// `loadSerial(oid, serial)`'s answer.
    pub fn data_of(&self, serial: Tid) -> Option<Data> {
        self.revs
            .iter()
            .find(|r| r.start == serial)
            .map(|r| r.data.clone())
    }

    /// With what a backend answered a load (`None`: keep as is). A current
    /// revision older than the current one held is out of date (dropped);
    /// one newer replaces everything (the backend shows a commit the
    /// cache has not seen published yet); revisions never overlap.
    pub fn with_load(old: Option<&Revisions>, loaded: &Loaded) -> Option<Revisions> {
        if loaded.end.is_some_and(|e| e <= loaded.start) {
            return None;
        }
        let new = Revision {
            start: loaded.start,
            end: loaded.end,
            data: loaded.data.clone(),
        };
        let Some(old) = old else {
            return Some(Revisions::new(vec![new]));
        };
        if old.revs.iter().any(|r| r.start == new.start) {
            return None;
        }
        let current = old.revs.first().filter(|r| r.end.is_none());
        match (new.end, current) {
            (None, Some(c)) if c.start > new.start => None,
            (None, Some(_)) => Some(Revisions::new(vec![new])),
            _ => {
                let overlaps = |r: &Revision| {
                    let r_end = r.end.unwrap_or(Tid(u64::MAX));
                    let n_end = new.end.unwrap_or(Tid(u64::MAX));
                    r.start < n_end && new.start < r_end
                };
                if old.revs.iter().any(overlaps) {
                    return None;
                }
                let mut revs = old.revs.clone();
                let at = revs
                    .iter()
                    .position(|r| r.start < new.start)
                    .unwrap_or(revs.len());
                revs.insert(at, new);
                Some(Revisions::new(revs))
            }
        }
    }

    /// After a published commit at `tid` wrote `data`: the new current
    /// revision, the old current one closed at `tid`. `None`: forget the
    /// object (the cache holds something newer, which cannot be).
    pub fn with_commit(old: Option<&Revisions>, tid: Tid, data: Data) -> Option<Revisions> {
        let new = Revision {
            start: tid,
            end: None,
            data,
        };
        let Some(old) = old else {
            return Some(Revisions::new(vec![new]));
        };
        match old.revs.first() {
            Some(c) if c.start > tid => None,
            // A load already brought this commit in.
            Some(c) if c.start == tid => Some(Revisions::new(vec![new])),
            _ => {
                let mut revs = Vec::with_capacity(old.revs.len() + 1);
                revs.push(new);
                revs.extend(old.revs.iter().cloned().map(|mut r| {
                    if r.end.is_none() {
                        r.end = Some(tid);
                    }
                    r
                }));
                Some(Revisions::new(revs))
            }
        }
    }
}

/// What a commit does to one object: its new data, or `None`: forget it.
pub type Change = (Oid, Option<Data>);

/// The cache's changes for a voted transaction: the data it stores, or
/// forgetting for what the storage wrote itself (undo, `resolved`:
/// conflicts the backend resolved, deletions, blob stores, and anything
/// else in `invalidated`). A later store of the same object wins.
pub fn changes(ops: &[Op], resolved: &[Oid], invalidated: &[Oid]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    let mut put = |oid: Oid, data: Option<Data>| match out.iter_mut().find(|(o, _)| *o == oid) {
        Some(slot) => slot.1 = data,
        None => out.push((oid, data)),
    };
    for op in ops {
        match op {
            Op::Store { oid, data, .. } => put(*oid, Some(data.clone())),
            Op::Restore { oid, data, .. } => put(*oid, data.clone()),
            Op::Delete { oid, .. } | Op::StoreBlob { oid, .. } | Op::RestoreBlob { oid, .. } => {
                put(*oid, None)
            }
            Op::CheckCurrent { .. } | Op::Undo { .. } => {}
        }
    }
    for oid in resolved {
        put(*oid, None);
    }
    for oid in invalidated {
        if !out.iter().any(|(o, _)| o == oid) {
            out.push((*oid, None));
        }
    }
    out
}

/// A load's ticket: the generation of its object's stripe when it asked.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    stripe: usize,
    generation: u64,
}

/// The counters shown in `ctl details` and `/metrics`.
pub type Counters = crate::status::CacheStatus;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Oid, Arc<Revisions>> for Weigh {
    fn weight(&self, _oid: &Oid, v: &Arc<Revisions>) -> u64 {
        v.weight
    }
}

/// Counts evictions; what is evicted is dropped after the shard's lock.
/// `quick_cache` reports a value replaced by an insert of its key the same
/// way: [`Insert::of`] names the insert, so that a replacement is not
/// counted (an insert too heavy to keep, rejected at once, is).
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

/// One insert's state for [`Evictions`].
#[derive(Default)]
struct Insert {
    key: Option<Oid>,
    new: Option<*const Revisions>,
    dropped: Vec<Arc<Revisions>>,
}

impl Insert {
    fn of(key: Oid, new: &Arc<Revisions>) -> Insert {
        Insert {
            key: Some(key),
            new: Some(Arc::as_ptr(new)),
            dropped: Vec::new(),
        }
    }
}

impl quick_cache::Lifecycle<Oid, Arc<Revisions>> for Evictions {
    type RequestState = Insert;

    fn on_evict(&self, state: &mut Insert, oid: Oid, v: Arc<Revisions>) {
        let replaced = state.key == Some(oid) && state.new != Some(Arc::as_ptr(&v));
        if !replaced {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        state.dropped.push(v);
    }
}

type Map = quick_cache::sync::Cache<
    Oid,
    Arc<Revisions>,
    Weigh,
    std::collections::hash_map::RandomState,
    Evictions,
>;

fn insert(map: &Map, oid: Oid, revisions: Revisions) {
    let value = Arc::new(revisions);
    let mut state = Insert::of(oid, &value);
    map.insert_with_lifecycle(oid, value, &mut state);
}

/// See the module doc. `capacity` 0: off (every call is a no-op).
pub struct Cache {
    map: Option<Map>,
    capacity: AtomicU64,
    generations: Box<[Mutex<u64>]>,
    /// Changes of logged transactions, until they are published.
    logged: Mutex<Vec<(Tid, Vec<Change>)>>,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_saved: AtomicU64,
    evictions: Evictions,
}

impl Cache {
    /// A cache of at most `capacity` bytes (0: off).
    pub fn new(capacity: u64) -> Cache {
        let evictions = Evictions::default();
        let map = (capacity > 0).then(|| {
            // Items are a few hundred bytes to a few kB in most databases.
            let items = (capacity / 512).clamp(64, 1 << 24) as usize;
            // quick_cache splits the capacity among its shards, and an
            // object heavier than a shard's share is never kept: at most
            // 16 (its default grows with the cores), and one per MB of
            // cache-size, so shares stay at least 1 MB or the whole.
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(items)
                .weight_capacity(capacity)
                .shards(shards_for(capacity))
                .build();
            match options {
                Ok(o) => Map::with_options(
                    o,
                    Weigh,
                    std::collections::hash_map::RandomState::new(),
                    evictions.clone(),
                ),
                Err(_) => Map::with(
                    items,
                    capacity,
                    Weigh,
                    std::collections::hash_map::RandomState::new(),
                    evictions.clone(),
                ),
            }
        });
        Cache {
            map,
            capacity: AtomicU64::new(capacity),
            generations: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            logged: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_saved: AtomicU64::new(0),
            evictions,
        }
    }

    /// Whether the cache is on (`cache-size` above 0 at start).
    pub fn enabled(&self) -> bool {
        self.map.is_some()
    }

    fn stripe(oid: Oid) -> usize {
        // Oids are dense: the low bits spread them.
        (oid.0 as usize) & (STRIPES - 1)
    }

    /// `loadBefore` from memory, counting a hit or a miss.
    pub fn load_before(&self, oid: Oid, before: Tid) -> Option<Loaded> {
        let map = self.map.as_ref()?;
        let hit = map.get(&oid).and_then(|r| r.answer(before));
        self.count(hit.as_ref().map(|l| l.data.len()));
        hit
    }

    /// `loadSerial` from memory, counting a hit or a miss.
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Option<Data> {
        let map = self.map.as_ref()?;
        let hit = map.get(&oid).and_then(|r| r.data_of(serial));
        self.count(hit.as_ref().map(|d| d.len()));
        hit
    }

    fn count(&self, hit: Option<usize>) {
        match hit {
            Some(n) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.bytes_saved.fetch_add(n as u64, Ordering::Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Taken before a load asks a backend: see the module doc. With the
    /// cache off nothing is locked (no fill will come).
    pub fn ticket(&self, oid: Oid) -> Ticket {
        let stripe = Self::stripe(oid);
        let generation = match self.map {
            Some(_) => *lock(&self.generations[stripe]),
            None => 0,
        };
        Ticket { stripe, generation }
    }

    /// What a backend answered the load that took `ticket`: in, unless
    /// the object changed meanwhile.
    pub fn fill(&self, oid: Oid, ticket: Ticket, loaded: &Loaded) {
        let Some(map) = &self.map else { return };
        let generation = lock(&self.generations[ticket.stripe]);
        if *generation != ticket.generation {
            return;
        }
        let old = map.peek(&oid);
        if let Some(new) = Revisions::with_load(old.as_deref(), loaded) {
            insert(map, oid, new);
        }
    }

    /// A transaction was finished at `tid` on the backends (logged, not
    /// yet visible or durable): its changes wait for [`Cache::published`].
    pub fn logged(&self, tid: Tid, changes: Vec<Change>) {
        if self.map.is_none() || changes.is_empty() {
            return;
        }
        lock(&self.logged).push((tid, changes));
    }

    /// Transactions up to `tid` are visible on the backends and durable:
    /// apply their changes, in tid order.
    pub fn published(&self, tid: Tid) {
        let Some(map) = &self.map else { return };
        let ready: Vec<(Tid, Vec<Change>)> = {
            let mut logged = lock(&self.logged);
            let split = logged.partition_point(|(t, _)| *t <= tid);
            logged.drain(..split).collect()
        };
        for (t, changes) in ready {
            for (oid, data) in changes {
                let mut generation = lock(&self.generations[Self::stripe(oid)]);
                *generation += 1;
                let old = map.peek(&oid);
                match data.and_then(|d| Revisions::with_commit(old.as_deref(), t, d)) {
                    Some(new) => insert(map, oid, new),
                    None => {
                        map.remove(&oid);
                    }
                }
            }
        }
    }

    /// Forget everything (a pack, a backend written to directly, another
    /// controller's commits); loads in flight do not put anything back.
    pub fn forget_all(&self, why: &str) {
        let Some(map) = &self.map else { return };
        for g in self.generations.iter() {
            *lock(g) += 1;
        }
        let held = map.len();
        map.clear();
        if held > 0 {
            log::info!("object cache emptied ({held} objects): {why}");
        }
    }

    /// A new `cache-size` (a reload); 0 or turning it on needs a restart.
    pub fn resize(&self, capacity: u64) -> Result<bool, String> {
        let Some(map) = &self.map else {
            return if capacity == 0 {
                Ok(false)
            } else {
                Err("the object cache was off at start (cache-size = 0): turning it on needs a restart".into())
            };
        };
        if capacity == 0 {
            return Err("turning the object cache off (cache-size = 0) needs a restart".into());
        }
        if self.capacity.swap(capacity, Ordering::Relaxed) == capacity {
            return Ok(false);
        }
        map.set_capacity(capacity);
        Ok(true)
    }

    /// The counters (all zero when off).
    pub fn counters(&self) -> Counters {
        let Some(map) = &self.map else {
            return Counters::default();
        };
        Counters {
            capacity: self.capacity.load(Ordering::Relaxed),
            size: map.weight(),
            objects: map.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.0.load(Ordering::Relaxed),
            bytes_saved: self.bytes_saved.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Data {
        s.as_bytes().to_vec().into()
    }

    fn rev(start: u64, end: Option<u64>, data: &str) -> Revision {
        Revision {
            start: Tid(start),
            end: end.map(Tid),
            data: d(data),
        }
    }

    fn loaded(start: u64, end: Option<u64>, data: &str) -> Loaded {
        Loaded {
            data: d(data),
            start: Tid(start),
            end: end.map(Tid),
        }
    }

    fn starts(r: &Revisions) -> Vec<(u64, Option<u64>)> {
        r.revs
            .iter()
            .map(|r| (r.start.0, r.end.map(|e| e.0)))
            .collect()
    }

    #[test]
    fn answers_like_a_backend() {
        // Revisions 10..20, 20..30, 30.. (current).
        let r = Revisions::new(vec![
            rev(30, None, "c"),
            rev(20, Some(30), "b"),
            rev(10, Some(20), "a"),
        ]);
        type Want = Option<(&'static str, u64, Option<u64>)>;
        let table: &[(u64, Want)] = &[
            // before <= first start: not in the cache (the backend may
            // say "did not exist" or hold an older revision).
            (5, None),
            (10, None),
            (11, Some(("a", 10, Some(20)))),
            (20, Some(("a", 10, Some(20)))),
            (21, Some(("b", 20, Some(30)))),
            (30, Some(("b", 20, Some(30)))),
            (31, Some(("c", 30, None))),
            (u64::MAX, Some(("c", 30, None))),
        ];
        for &(before, want) in table {
            let got = r.answer(Tid(before));
            let want = want.map(|(data, s, e)| loaded(s, e, data));
            assert_eq!(got, want, "loadBefore(before={before})");
        }
        assert_eq!(r.data_of(Tid(20)), Some(d("b")));
        assert_eq!(r.data_of(Tid(25)), None);
    }

    #[test]
    fn a_gap_between_revisions_is_a_miss() {
        // 10..20 known, 20..30 not (evicted or never loaded), 30.. known.
        let r = Revisions::new(vec![rev(30, None, "c"), rev(10, Some(20), "a")]);
        assert_eq!(r.answer(Tid(25)), None);
        assert_eq!(r.answer(Tid(20)).map(|l| l.start), Some(Tid(10)));
    }

    #[test]
    fn loads_go_in_where_they_fit() {
        type Case = (
            &'static str,
            Vec<Revision>,
            Loaded,
            Option<Vec<(u64, Option<u64>)>>,
        );
        let table: Vec<Case> = vec![
            (
                "empty",
                vec![],
                loaded(10, None, "a"),
                Some(vec![(10, None)]),
            ),
            (
                "older revision below the current",
                vec![rev(20, None, "b")],
                loaded(10, Some(20), "a"),
                Some(vec![(20, None), (10, Some(20))]),
            ),
            (
                "a stale current revision is dropped",
                vec![rev(20, None, "b"), rev(10, Some(20), "a")],
                loaded(10, None, "a"),
                None,
            ),
            (
                "a newer current replaces all (a commit not yet published here)",
                vec![rev(20, None, "b"), rev(10, Some(20), "a")],
                loaded(30, None, "c"),
                Some(vec![(30, None)]),
            ),
            (
                "the same revision again",
                vec![rev(20, None, "b")],
                loaded(20, None, "b"),
                None,
            ),
            (
                "overlapping history is refused",
                vec![rev(20, None, "b"), rev(10, Some(20), "a")],
                loaded(15, Some(25), "x"),
                None,
            ),
            (
                "a nonsensical range is refused",
                vec![],
                loaded(20, Some(20), "x"),
                None,
            ),
        ];
        for (what, old, load, want) in table {
            let old = (!old.is_empty()).then(|| Revisions::new(old));
            let got = Revisions::with_load(old.as_ref(), &load);
            assert_eq!(got.as_ref().map(starts), want, "{what}");
        }
    }

    #[test]
    fn commits_close_the_current_revision() {
        let one = Revisions::with_commit(None, Tid(10), d("a")).unwrap();
        assert_eq!(starts(&one), vec![(10, None)]);
        let two = Revisions::with_commit(Some(&one), Tid(20), d("b")).unwrap();
        assert_eq!(starts(&two), vec![(20, None), (10, Some(20))]);
        assert_eq!(two.answer(Tid(15)).unwrap().data, d("a"));
        assert_eq!(two.answer(Tid(21)).unwrap().data, d("b"));
        // Already loaded from a backend that showed it first.
        let again = Revisions::with_commit(Some(&two), Tid(20), d("b")).unwrap();
        assert_eq!(starts(&again), vec![(20, None)]);
        // Older than what is held: forget, never guess.
        assert_eq!(Revisions::with_commit(Some(&two), Tid(15), d("x")), None);
        // Bounded history.
        let mut r = two;
        for t in 3..10 {
            r = Revisions::with_commit(Some(&r), Tid(t * 10), d("n")).unwrap();
        }
        assert_eq!(r.revs.len(), MAX_REVISIONS);
        assert_eq!(r.revs[0].start, Tid(90));
    }

    #[test]
    fn weight_counts_data_and_overhead() {
        let r = Revisions::new(vec![rev(20, None, "bbbb"), rev(10, Some(20), "aa")]);
        assert_eq!(r.weight(), OBJECT_OVERHEAD + 2 * REVISION_OVERHEAD + 6);
    }

    #[test]
    fn changes_of_a_transaction() {
        let (a, b, c, e, f) = (Oid(1), Oid(2), Oid(3), Oid(4), Oid(5));
        let ops = vec![
            Op::Store {
                oid: a,
                serial: Tid(0),
                data: d("a1"),
            },
            Op::Store {
                oid: a,
                serial: Tid(0),
                data: d("a2"),
            },
            Op::Store {
                oid: b,
                serial: Tid(0),
                data: d("b"),
            },
            Op::CheckCurrent {
                oid: c,
                serial: Tid(0),
            },
            Op::Delete {
                oid: e,
                serial: Tid(0),
            },
            Op::Undo { txn: Tid(7) },
        ];
        let got = changes(&ops, &[b], &[a, b, e, f]);
        assert_eq!(
            got,
            vec![(a, Some(d("a2"))), (b, None), (e, None), (f, None)]
        );
    }

    #[test]
    fn a_load_racing_a_commit_stays_out() {
        let cache = Cache::new(1 << 20);
        let oid = Oid(7);
        cache.logged(Tid(10), vec![(oid, Some(d("v1")))]);
        cache.published(Tid(10));
        // A reader asks a backend, which answers v1 as current ...
        let ticket = cache.ticket(oid);
        // ... while v2 commits and is published ...
        cache.logged(Tid(20), vec![(oid, Some(d("v2")))]);
        cache.published(Tid(20));
        cache.forget_all("test");
        // ... and its answer arrives after: it must not go in.
        cache.fill(oid, ticket, &loaded(10, None, "v1"));
        assert_eq!(cache.load_before(oid, Tid(u64::MAX)), None);
        // A fresh load does.
        let ticket = cache.ticket(oid);
        cache.fill(oid, ticket, &loaded(20, None, "v2"));
        assert_eq!(cache.load_before(oid, Tid(30)).unwrap().data, d("v2"));
        let c = cache.counters();
        assert_eq!((c.hits, c.misses, c.objects), (1, 1, 1));
    }

    #[test]
    fn changes_wait_for_publication() {
        let cache = Cache::new(1 << 20);
        let oid = Oid(1);
        cache.logged(Tid(10), vec![(oid, Some(d("v1")))]);
        assert_eq!(
            cache.load_before(oid, Tid(11)),
            None,
            "logged is not visible"
        );
        cache.logged(Tid(20), vec![(oid, Some(d("v2")))]);
        cache.published(Tid(10));
        assert_eq!(cache.load_before(oid, Tid(u64::MAX)).unwrap().data, d("v1"));
        cache.published(Tid(20));
        assert_eq!(cache.load_before(oid, Tid(15)).unwrap().data, d("v1"));
        assert_eq!(cache.load_before(oid, Tid(21)).unwrap().data, d("v2"));
        // Undo (forget): nothing served for it any more.
        cache.logged(Tid(30), vec![(oid, None)]);
        cache.published(Tid(30));
        assert_eq!(cache.load_before(oid, Tid(15)), None);
    }

    #[test]
    fn shards_keep_a_sizeable_share() {
        for (capacity, want) in [
            (2048, 1),
            (1 << 20, 1),
            (3 << 20, 2),
            (64 << 20, 16),
            (1 << 40, 16),
        ] {
            assert_eq!(shards_for(capacity), want, "{capacity}");
        }
    }

    #[test]
    fn a_replaced_object_is_not_an_eviction() {
        let cache = Cache::new(1 << 20);
        let oid = Oid(3);
        for t in 1..=5u64 {
            cache.logged(Tid(t * 10), vec![(oid, Some(d("v")))]);
            cache.published(Tid(t * 10));
        }
        let c = cache.counters();
        assert_eq!((c.objects, c.evictions), (1, 0), "{c:?}");
        // One too heavy for its shard is not kept, and counts.
        let big = Cache::new(4 << 20);
        let ticket = big.ticket(oid);
        big.fill(oid, ticket, &loaded(10, None, &"x".repeat(2 << 20)));
        let c = big.counters();
        assert_eq!((c.objects, c.evictions), (0, 1), "{c:?}");
    }

    #[test]
    fn stays_within_its_size() {
        let cache = Cache::new(64 * 1024);
        for i in 0..10_000u64 {
            let ticket = cache.ticket(Oid(i));
            cache.fill(Oid(i), ticket, &loaded(10, None, &"x".repeat(100)));
        }
        let c = cache.counters();
        assert!(c.size <= 64 * 1024, "{c:?}");
        assert!(c.evictions > 0 && c.objects > 100, "{c:?}");
        assert_eq!(cache.resize(32 * 1024), Ok(true));
        assert!(cache.counters().size <= 32 * 1024);
        assert!(cache.resize(0).is_err());
        let off = Cache::new(0);
        assert!(!off.enabled());
        assert_eq!(off.load_before(Oid(1), Tid(5)), None);
        assert_eq!(off.counters(), Counters::default());
        assert!(off.resize(10).is_err());
    }
}
