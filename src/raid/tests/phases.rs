//! A backend taken out at every phase of a commit (issue #21): an
//! in-process file mirror whose calls run a test hook at a chosen phase,
//! so each case is hit deterministically. Every case: the commit is
//! acknowledged, the backend is recovered, the histories are identical
//! and every acknowledged commit is on both mirrors.

use super::*;
use crate::storage::file::{FileOptions, FileStorage};

/// A call of the commit path on one backend, before or after it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before `tpc_vote`: for an in-process backend `tpc_begin` and the
    /// stores are part of the vote call, so this is "after its begin and
    /// stores".
    BeforeVote,
    AfterVote,
    /// Before its own `finish_log` (the other backend, listed first, has
    /// finished): "after the other's finish and before its own".
    BeforeFinish,
    /// Logged, not yet durable.
    AfterFinish,
    BeforeDurable,
    BeforePublish,
}

pub(super) const PHASES: [Phase; 6] = [
    Phase::BeforeVote,
    Phase::AfterVote,
    Phase::BeforeFinish,
    Phase::AfterFinish,
    Phase::BeforeDurable,
    Phase::BeforePublish,
];

/// What the hook does at its phase, besides calling the action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Twist {
    /// Nothing: the call goes on as usual.
    None,
    /// The vote prepares, then answers as no other backend does.
    VoteDisagrees,
    /// The finish is done, then reported as failed (may or may not hold).
    FinishFailsAfterDoing,
}

pub(super) type Action = Box<dyn FnOnce() + Send>;

/// A `remove_backend` running on its own thread.
pub(super) type Removal = std::thread::JoinHandle<std::result::Result<(), String>>;

#[derive(Default)]
pub(super) struct HookCell {
    armed: Mutex<Option<(Phase, Twist, Option<Action>)>>,
    pub(super) fired: AtomicU64,
}

impl HookCell {
    pub(super) fn arm(&self, phase: Phase, twist: Twist, action: Action) {
        *lock(&self.armed) = Some((phase, twist, Some(action)));
    }

    /// Forget an arming that did not fire.
    pub(super) fn disarm(&self) {
        *lock(&self.armed) = None;
    }

    /// Run the action if armed for `at`; the twist that applies.
    fn at(&self, at: Phase) -> Twist {
        let taken = {
            let mut g = lock(&self.armed);
            match g.as_mut() {
                Some((p, twist, action)) if *p == at => {
                    let twist = *twist;
                    let action = action.take();
                    *g = None;
                    Some((twist, action))
                }
                _ => None,
            }
        };
        match taken {
            Some((twist, action)) => {
                self.fired.fetch_add(1, Ordering::SeqCst);
                if let Some(a) = action {
                    a();
                }
                twist
            }
            None => Twist::None,
        }
    }
}

/// A storage whose commit calls pass through a [`HookCell`].
pub(super) struct Hooked {
    inner: Arc<dyn Storage>,
    hook: Arc<HookCell>,
}

impl Storage for Hooked {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn supports_undo(&self) -> bool {
        self.inner.supports_undo()
    }
    fn last_transaction(&self) -> Result<Tid> {
        self.inner.last_transaction()
    }
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        self.inner.load_before(oid, before)
    }
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.inner.load_serial(oid, serial)
    }
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.inner.history(oid, size)
    }
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        self.inner.new_oids(n)
    }
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        let twist = self.hook.at(Phase::BeforeVote);
        let v = self.inner.tpc_vote(txn)?;
        let twist = match self.hook.at(Phase::AfterVote) {
            Twist::None => twist,
            t => t,
        };
        if twist == Twist::VoteDisagrees {
            return Err(Error::Transaction("this mirror disagrees (test)".into()));
        }
        Ok(v)
    }
    fn tpc_finish(&self) -> Result<Tid> {
        let tid = self.finish_log()?;
        self.make_durable(tid)?;
        self.publish(tid);
        Ok(tid)
    }
    fn group_commit(&self) -> bool {
        self.inner.group_commit()
    }
    fn finish_log(&self) -> Result<Tid> {
        let twist = self.hook.at(Phase::BeforeFinish);
        let t = self.inner.finish_log()?;
        let twist = match self.hook.at(Phase::AfterFinish) {
            Twist::None => twist,
            t => t,
        };
        if twist == Twist::FinishFailsAfterDoing {
            return Err(Error::Io("the disk said no, perhaps (test)".into()));
        }
        Ok(t)
    }
    fn make_durable(&self, tid: Tid) -> Result<()> {
        self.hook.at(Phase::BeforeDurable);
        self.inner.make_durable(tid)
    }
    fn publish(&self, tid: Tid) {
        self.hook.at(Phase::BeforePublish);
        self.inner.publish(tid)
    }
    fn tpc_abort(&self) {
        self.inner.tpc_abort()
    }
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        self.inner.undo_log(first, last)
    }
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        self.inner.iterator(start, stop)
    }
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        self.inner.record_iternext(next)
    }
    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        self.inner.pack(t, gc)
    }
    fn size_info(&self) -> SizeInfo {
        self.inner.size_info()
    }
    fn close(&self) {
        self.inner.close()
    }
}

fn open_file(
    path: &std::path::Path,
    hook: &Arc<HookCell>,
    sync: bool,
) -> std::result::Result<Arc<dyn Storage>, String> {
    let options = FileOptions {
        sync,
        ..FileOptions::default()
    };
    let fs = FileStorage::open(path, options)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Arc::new(Hooked {
        inner: Arc::new(fs),
        hook: hook.clone(),
    }))
}

/// A file backend "name" at `path` whose hook is `hook` (reopened with
/// the same hook); `sync`: fsync at every commit.
pub(super) fn file_spec(
    name: &str,
    path: std::path::PathBuf,
    hook: &Arc<HookCell>,
    sync: bool,
) -> BackendSpec {
    let s = open_file(&path, hook, sync).expect("the file storage opens");
    let (p, h) = (path.clone(), hook.clone());
    BackendSpec {
        name: name.into(),
        kind: "file",
        source: BackendSource::Local(s),
        // As the real opener does: a reopen that fails (the old handle
        // still holds the file's lock) is an error the array reports.
        reopen: Some(Arc::new(move |_fresh| Ok((open_file(&p, &h, sync)?, None)))),
    }
}

/// An array of file mirrors "a" and "b" in `dir`; b's hook.
fn file_array(dir: &std::path::Path) -> (Arc<RaidStorage>, Arc<HookCell>) {
    let (ha, hb) = (Arc::new(HookCell::default()), Arc::new(HookCell::default()));
    let a = RaidStorage::open(
        opts(),
        vec![
            file_spec("a", dir.join("a.fs"), &ha, true),
            file_spec("b", dir.join("b.fs"), &hb, true),
        ],
    )
    .expect("array opens");
    (Arc::new(a), hb)
}

/// One whole commit as the server runs it (group commit's three steps
/// when the array does group commit).
pub(super) fn server_commit(a: &RaidStorage, ops: Vec<Op>) -> Result<Tid> {
    match a.tpc_vote(&txn(ops))? {
        Vote::Prepared { .. } => {}
        Vote::Conflicts(c) => {
            a.tpc_abort();
            return Err(Error::Value(format!("conflicts: {c:?}")));
        }
    }
    if !a.group_commit() {
        return a.tpc_finish();
    }
    let tid = a.finish_log()?;
    a.make_durable(tid)?;
    a.publish(tid);
    Ok(tid)
}

/// Writes one object per round; remembers what it acknowledged.
pub(super) struct Counter {
    pub(super) oid: Oid,
    serial: Tid,
    pub(super) acked: Vec<(Tid, Vec<u8>)>,
}

impl Counter {
    pub(super) fn new(a: &RaidStorage) -> Counter {
        Counter {
            oid: a.new_oids(1).unwrap()[0],
            serial: Tid::ZERO,
            acked: Vec::new(),
        }
    }

    pub(super) fn bump(&mut self, a: &RaidStorage) -> Result<Tid> {
        let data = format!("value {}", self.acked.len()).into_bytes();
        let t = server_commit(a, vec![store(self.oid, self.serial, &data)])?;
        self.serial = t;
        self.acked.push((t, data));
        Ok(t)
    }

    /// Every acknowledged revision is on `s`.
    pub(super) fn check_on(&self, s: &dyn Storage, what: &str) {
        for (t, data) in &self.acked {
            let got = s
                .load_serial(self.oid, *t)
                .unwrap_or_else(|e| panic!("{what}: acknowledged {t} missing: {e}"));
            assert_eq!(&got[..], &data[..], "{what}: {t}");
        }
    }
}

/// What is done to "b" at the phase.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Disable,
    Remove,
    Twisted(Twist),
}

fn run_case(phase: Phase, fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let (a, hook) = file_array(dir.path());
    let what = format!("{fault:?} at {phase:?}");
    let mut c = Counter::new(&a);
    for _ in 0..3 {
        c.bump(&a).unwrap();
    }
    let removing: Arc<Mutex<Option<Removal>>> = Arc::default();
    let (twist, action): (Twist, Action) = match fault {
        Fault::Disable => {
            let arr = a.clone();
            (
                Twist::None,
                Box::new(move || arr.disable("b").expect("b disabled")),
            )
        }
        Fault::Remove => {
            // Removing waits for the array's commit lock: from another
            // thread, as `zeoraid ctl remove` does; the commit goes on.
            let (arr, slot) = (a.clone(), removing.clone());
            (
                Twist::None,
                Box::new(move || {
                    *lock(&slot) = Some(std::thread::spawn(move || arr.remove_backend("b")));
                    std::thread::sleep(Duration::from_millis(20));
                }),
            )
        }
        Fault::Twisted(t) => (t, Box::new(|| {})),
    };
    hook.arm(phase, twist, action);
    c.bump(&a)
        .unwrap_or_else(|e| panic!("{what}: the client's commit failed: {e}"));
    assert_eq!(hook.fired.load(Ordering::SeqCst), 1, "{what}: phase hit");
    // Removing completes once the commit has ended.
    if let Some(h) = lock(&removing).take() {
        h.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: removing b: {e}"));
        assert!(a.position("b").is_err(), "{what}: b removed");
    }
    for _ in 0..3 {
        c.bump(&a)
            .unwrap_or_else(|e| panic!("{what}: a later commit failed: {e}"));
    }
    match fault {
        Fault::Remove => {
            let hb = Arc::new(HookCell::default());
            let spec = file_spec("b", dir.path().join("b.fs"), &hb, true);
            a.add_backend(
                spec,
                crate::config::BackendConfig::file("b", dir.path().join("b.fs")),
            )
            .unwrap_or_else(|e| panic!("{what}: adding b back: {e}"));
            if states_by_name(&a).get("b").map(String::as_str) != Some("optimal") {
                a.recover("b", false)
                    .unwrap_or_else(|e| panic!("{what}: recovery after re-adding: {e}"));
            }
        }
        _ => {
            if states_by_name(&a).get("b").map(String::as_str) != Some("optimal") {
                a.recover("b", false)
                    .unwrap_or_else(|e| panic!("{what}: recovery: {e}"));
            }
        }
    }
    assert_eq!(
        states_by_name(&a).get("b").map(String::as_str),
        Some("optimal"),
        "{what}"
    );
    let v = a
        .verify("b")
        .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
    assert_eq!(v.difference, None, "{what}: histories differ");
    c.bump(&a).unwrap();
    for i in 0..a.core.backends.len() {
        let b = &a.core.backends[i];
        if b.is_removed() {
            continue;
        }
        c.check_on(
            b.storage().unwrap().as_ref(),
            &format!("{what}, {}", b.name),
        );
    }
    a.close();
}

pub(super) fn states_by_name(a: &RaidStorage) -> std::collections::HashMap<String, String> {
    a.core
        .backends
        .iter()
        .filter(|b| !b.is_removed())
        .map(|b| (b.name.clone(), b.role().label().to_string()))
        .collect()
}

#[test]
fn disabled_at_every_phase_is_recovered() {
    for phase in PHASES {
        run_case(phase, Fault::Disable);
    }
}

#[test]
fn removed_at_every_phase_is_added_back_and_recovered() {
    for phase in PHASES {
        run_case(phase, Fault::Remove);
    }
}

#[test]
fn a_vote_that_disagrees_after_preparing_is_recovered() {
    for phase in [Phase::BeforeVote, Phase::AfterVote] {
        run_case(phase, Fault::Twisted(Twist::VoteDisagrees));
    }
}

#[test]
fn a_finish_reported_failed_after_it_was_done_is_recovered() {
    for phase in [Phase::BeforeFinish, Phase::AfterFinish] {
        run_case(phase, Fault::Twisted(Twist::FinishFailsAfterDoing));
    }
}
