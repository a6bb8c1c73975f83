//! Server-side conflict resolution for undo, through a Python helper.
//!
//! ZEO 5 clients resolve write conflicts themselves, but undoing a
//! transaction whose objects were changed later needs the *server* to merge
//! states: Python's FileStorage calls `tryToResolveConflict` there, which
//! imports the application's class and runs its `_p_resolveConflict` (what
//! lets a BTree change be undone after later, unrelated changes to the
//! same bucket). zeoraid has no Python inside, so it asks a helper process:
//! `[conflict-resolution] python` names an interpreter that can import
//! ZODB and the application's classes; [`PythonResolver`] runs
//! `resolve.py` in it and talks to it over pipes, with a deadline on every
//! call. Without it, such undos fail with `UndoError` (the storage's rules
//! say so in [`crate::storage::rules::UNDO_MODIFIED_LATER`]).
//!
//! The framing is pure ([`encode_request`], [`decode_reply_header`]); the
//! process lives on a named thread that owns its pipes; a call that misses
//! its deadline kills the helper, which is started again for the next. For
//! one `timeout` after a missed deadline merges are refused at once: an undo
//! of many objects whose class's merge hangs holds the commit lock for one
//! timeout, not one per object.

use crate::locks::lock;
use crate::storage::{Data, Oid};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Merges two changes of one object (ZODB's `_p_resolveConflict`).
pub trait ConflictResolver: Send + Sync {
    /// `old` was changed to `committed` by others and to `new` by us: the
    /// merged state, or why there is none.
    fn resolve(&self, oid: Oid, old: &Data, committed: &Data, new: &Data) -> Result<Data, String>;
}

/// The state an undo writes when a later transaction changed the object,
/// as FileStorage's `_transactionalUndoRecord`: the change the undo makes
/// (undone state → the state before it) merged with the later changes
/// (undone state → current state). `None` when any state is missing or the
/// merge fails (the undo then fails as without a resolver).
pub fn resolve_undo(
    resolver: Option<&dyn ConflictResolver>,
    oid: Oid,
    undone: Option<&Data>,
    current: Option<&Data>,
    before: Option<&Data>,
) -> Option<Data> {
    let (r, old, committed, new) = (resolver?, undone?, current?, before?);
    match r.resolve(oid, old, committed, new) {
        Ok(d) if !d.is_empty() => Some(d),
        Ok(_) => None,
        Err(why) => {
            log::info!("undo of {oid}: conflict resolution failed: {why}");
            None
        }
    }
}

/// The helper's source, run with `python -c`.
const HELPER: &str = include_str!("resolve.py");

/// Status bytes of a reply.
const RESOLVED: u8 = 0;
const UNRESOLVABLE: u8 = 1;

/// A request frame: field count, then each field with its length.
pub fn encode_request(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A reply header: (status, body length).
pub fn decode_reply_header(b: [u8; 5]) -> (u8, usize) {
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    (b[0], len as usize)
}

/// What a reply means: the merged state, or why not.
pub fn reply_outcome(status: u8, body: Vec<u8>) -> Result<Data, String> {
    let text = || String::from_utf8_lossy(&body).into_owned();
    match status {
        RESOLVED => Ok(Data::from(body.clone())),
        UNRESOLVABLE => Err(format!("not resolvable: {}", text())),
        _ => Err(format!("the resolver failed: {}", text())),
    }
}

/// How to run the helper (`[conflict-resolution]` in the config).
#[derive(Clone, Debug, PartialEq)]
pub struct PythonOptions {
    /// An interpreter that can import ZODB and the application's classes.
    pub python: PathBuf,
    /// Put in front of the helper's `sys.path`.
    pub path: Vec<PathBuf>,
    /// Deadline of one resolution (and of the start-up check).
    pub timeout: Duration,
}

struct Request {
    id: u64,
    fields: Vec<Data>,
    reply: Sender<Result<Data, String>>,
}

/// Which request the helper is working on, and which queued ones were
/// given up (so a caller at its deadline kills the helper only when it is
/// busy with *its* request, and a given-up request is never started).
#[derive(Default)]
struct Progress {
    serving: Option<u64>,
    abandoned: std::collections::HashSet<u64>,
}

/// The helper process, on the thread `zeoraid-resolver`.
pub struct PythonResolver {
    opts: PythonOptions,
    requests: Mutex<Option<Sender<Request>>>,
    next_id: std::sync::atomic::AtomicU64,
    progress: Arc<Mutex<Progress>>,
    /// Until when merges are refused after a missed deadline.
    cooling: Mutex<Option<std::time::Instant>>,
    /// The running helper, for killing it when a call misses its deadline.
    child: Arc<Mutex<Option<Child>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PythonResolver {
    /// Start the helper and check that it answers (so a wrong interpreter
    /// is reported at start-up, not at the first undo).
    pub fn start(opts: PythonOptions) -> Result<PythonResolver, String> {
        let (tx, rx) = unbounded();
        let child = Arc::new(Mutex::new(None));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (o, c, p) = (opts.clone(), child.clone(), progress.clone());
        let thread = std::thread::Builder::new()
            .name("zeoraid-resolver".into())
            .spawn(move || serve(&o, &rx, &c, &p))
            .map_err(|e| format!("cannot start the resolver thread: {e}"))?;
        let r = PythonResolver {
            opts,
            requests: Mutex::new(Some(tx)),
            next_id: std::sync::atomic::AtomicU64::new(0),
            progress,
            cooling: Mutex::new(None),
            child,
            thread: Mutex::new(Some(thread)),
        };
        r.call(Vec::new()).map_err(|e| {
            format!(
                "conflict-resolution: {} does not work as a resolver: {e}; \
                 it must be a Python that can `import ZODB` (and the application's classes)",
                r.opts.python.display()
            )
        })?;
        Ok(r)
    }

    fn call(&self, fields: Vec<Data>) -> Result<Data, String> {
        if let Some(until) = *lock(&self.cooling) {
            if std::time::Instant::now() < until {
                return Err(format!(
                    "refused: a merge missed its {:?} deadline moments ago \
                     (merges resume after that long; see the log for the class)",
                    self.opts.timeout
                ));
            }
        }
        let (reply, answer) = bounded(1);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = lock(&self.requests)
            .as_ref()
            .map(|tx| tx.send(Request { id, fields, reply }).is_ok());
        if sent != Some(true) {
            return Err("the resolver is stopped".into());
        }
        match answer.recv_timeout(self.opts.timeout) {
            Ok(r) => r,
            Err(_) => {
                let mut progress = lock(&self.progress);
                if progress.serving == Some(id) {
                    // Unblock the thread: it sees the pipe close and starts
                    // a new helper for the next call.
                    if let Some(c) = lock(&self.child).as_mut() {
                        let _ = c.kill();
                    }
                } else {
                    progress.abandoned.insert(id);
                }
                drop(progress);
                *lock(&self.cooling) = Some(std::time::Instant::now() + self.opts.timeout);
                Err(format!(
                    "no answer within {:?}; the helper was killed",
                    self.opts.timeout
                ))
            }
        }
    }

    /// Stop the helper and join the thread.
    pub fn stop(&self) {
        drop(lock(&self.requests).take());
        if let Some(c) = lock(&self.child).as_mut() {
            let _ = c.kill();
        }
        if let Some(h) = lock(&self.thread).take() {
            if h.join().is_err() {
                log::error!("the resolver thread panicked");
            }
        }
    }
}

impl Drop for PythonResolver {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ConflictResolver for PythonResolver {
    fn resolve(&self, oid: Oid, old: &Data, committed: &Data, new: &Data) -> Result<Data, String> {
        let oid = Data::from(&oid.to_bytes()[..]);
        self.call(vec![oid, old.clone(), committed.clone(), new.clone()])
    }
}

type Pipes = (ChildStdin, BufReader<ChildStdout>);

/// The thread: one request at a time, (re)starting the helper as needed.
fn serve(
    opts: &PythonOptions,
    rx: &Receiver<Request>,
    child: &Mutex<Option<Child>>,
    progress: &Mutex<Progress>,
) {
    let mut pipes: Option<Pipes> = None;
    for req in rx.iter() {
        {
            let mut p = lock(progress);
            if p.abandoned.remove(&req.id) {
                continue; // its caller gave up while it was queued
            }
            p.serving = Some(req.id);
        }
        let result = run_one(opts, &mut pipes, child, &req.fields);
        lock(progress).serving = None;
        let _ = req.reply.send(result);
    }
    if let Some(c) = lock(child).as_mut() {
        let _ = c.kill();
    }
    reap(child);
}

/// One request, (re)starting the helper first when there is none.
fn run_one(
    opts: &PythonOptions,
    pipes: &mut Option<Pipes>,
    child: &Mutex<Option<Child>>,
    fields: &[Data],
) -> Result<Data, String> {
    if pipes.is_none() {
        let (c, p) = spawn(opts)?;
        *lock(child) = Some(c);
        *pipes = Some(p);
    }
    let p = pipes.as_mut().ok_or("the helper is not running")?;
    match exchange(p, fields) {
        Ok(r) => r,
        Err(e) => {
            // The helper died, hung or spoke nonsense: start afresh.
            *pipes = None;
            reap(child);
            Err(e)
        }
    }
}

fn reap(child: &Mutex<Option<Child>>) {
    if let Some(mut c) = lock(child).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn spawn(opts: &PythonOptions) -> Result<(Child, Pipes), String> {
    let mut c = Command::new(&opts.python)
        .arg("-c")
        .arg(HELPER)
        .args(&opts.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", opts.python.display()))?;
    match (c.stdin.take(), c.stdout.take()) {
        (Some(i), Some(o)) => Ok((c, (i, BufReader::new(o)))),
        _ => {
            let _ = c.kill();
            let _ = c.wait();
            Err("the helper has no pipes".into())
        }
    }
}

/// One request and its reply. `Err`: the pipe broke (the helper is gone).
fn exchange(p: &mut Pipes, fields: &[Data]) -> Result<Result<Data, String>, String> {
    let refs: Vec<&[u8]> = fields.iter().map(|f| &f[..]).collect();
    let broken = |e: std::io::Error| format!("the helper stopped answering: {e}");
    p.0.write_all(&encode_request(&refs)).map_err(broken)?;
    p.0.flush().map_err(broken)?;
    let mut head = [0u8; 5];
    p.1.read_exact(&mut head).map_err(broken)?;
    let (status, len) = decode_reply_header(head);
    let mut body = Vec::new();
    p.1.by_ref()
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(broken)?;
    if body.len() != len {
        return Err("the helper's reply was cut short".into());
    }
    Ok(reply_outcome(status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames() {
        assert_eq!(encode_request(&[]), vec![0, 0, 0, 0]);
        assert_eq!(
            encode_request(&[b"ab", b""]),
            vec![0, 0, 0, 2, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }

    #[test]
    fn reply_table() {
        assert_eq!(decode_reply_header([1, 0, 0, 1, 2]), (1, 258));
        let cases: Vec<(u8, &[u8], Result<Data, String>)> = vec![
            (0, b"merged", Ok(Data::from(&b"merged"[..]))),
            (1, b"why", Err("not resolvable: why".into())),
            (2, b"boom", Err("the resolver failed: boom".into())),
            (9, b"?", Err("the resolver failed: ?".into())),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                reply_outcome(status, body.to_vec()),
                want,
                "status {status}"
            );
        }
    }

    struct Fixed(Result<Data, String>);
    impl ConflictResolver for Fixed {
        fn resolve(&self, _: Oid, _: &Data, _: &Data, _: &Data) -> Result<Data, String> {
            self.0.clone()
        }
    }

    #[test]
    fn resolve_undo_table() {
        let d = |s: &str| Data::from(s.as_bytes());
        let ok = Fixed(Ok(d("m")));
        let fails = Fixed(Err("no".into()));
        let empty = Fixed(Ok(d("")));
        let (a, b, c) = (d("a"), d("b"), d("c"));
        type Case<'a> = (
            Option<&'a dyn ConflictResolver>,
            [Option<&'a Data>; 3],
            Option<Data>,
        );
        let cases: Vec<Case> = vec![
            (Some(&ok), [Some(&a), Some(&b), Some(&c)], Some(d("m"))),
            (None, [Some(&a), Some(&b), Some(&c)], None),
            (Some(&fails), [Some(&a), Some(&b), Some(&c)], None),
            (Some(&empty), [Some(&a), Some(&b), Some(&c)], None),
            (Some(&ok), [None, Some(&b), Some(&c)], None),
            (Some(&ok), [Some(&a), None, Some(&c)], None),
            (Some(&ok), [Some(&a), Some(&b), None], None),
        ];
        for (i, (r, [u, cur, before], want)) in cases.into_iter().enumerate() {
            assert_eq!(resolve_undo(r, Oid(1), u, cur, before), want, "case {i}");
        }
    }
}
