//! `FileStorage` against Python ZODB's own `FileStorage`, both ways:
//!
//! - a `Data.fs` written by Python (transactions with metadata and
//!   extensions, an undo, a delete, a pack with GC, more commits) opens here
//!   and every transaction, record, current state and undo-log entry matches
//!   what Python reports;
//! - a `Data.fs` written here (undo, undone creation, delete, restore, pack,
//!   more commits) opens in Python read-only with identical transactions and
//!   records, and `python -m ZODB.scripts.fstest` accepts it;
//! - the `Data.fs.lock` excludes a Python writer while we hold it, and us
//!   while Python holds it.
//!
//! Needs `$ZEORAID_PYTHON` or the crate's `.venv/bin/python` with ZODB
//! (fails, never skips, without it).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rmpv::Value as Mp;
use serde_json::{json, Value};
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};

/// Dump a Data.fs as Python sees it (JSON on stdout).
const PY_DUMP: &str = r#"
import sys, json, binascii, base64
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
def h(b):
    return None if b is None else binascii.hexlify(b).decode()
def j(v):
    if isinstance(v, bytes):
        return {"bytes": h(v)}
    if isinstance(v, (list, tuple)):
        return [j(x) for x in v]
    if isinstance(v, dict):
        return {k: j(x) for k, x in v.items()}
    return v
fs = FileStorage(sys.argv[1], read_only=True)
out = {"txns": [], "current": {}, "undo": []}
oids = set()
for t in fs.iterator():
    recs = []
    for r in t:
        oids.add(r.oid)
        recs.append({"oid": h(r.oid), "tid": h(r.tid), "data": h(r.data),
                     "data_txn": h(r.data_txn)})
    out["txns"].append({"tid": h(t.tid), "status": t.status, "user": h(t.user),
                        "description": h(t.description),
                        "extension": j(dict(t.extension)), "records": recs})
for oid in sorted(oids):
    try:
        data, tid = fs.load(oid)
        out["current"][h(oid)] = [h(data), h(tid)]
    except POSKeyError:
        out["current"][h(oid)] = None
for d in fs.undoLog(0, 1000):
    out["undo"].append(h(base64.decodebytes(d["id"] + b"\n")))
fs.close()
print(json.dumps(out, sort_keys=True))
"#;

/// A Python helper both writer scripts use: undo the transaction with
/// description `note` (uses the script's `db` and `transaction`).
const PY_UNDO: &str = r#"
def undo(note):
    for d in db.undoLog(0, 100):
        desc = d["description"]
        if isinstance(desc, bytes):
            desc = desc.decode()
        if desc == note:
            db.undo(d["id"])
            transaction.get().note("undo " + note)
            transaction.commit()
            return
    raise SystemExit("no such transaction: " + note)
"#;

/// Write a Data.fs with stock ZODB.
const PY_WRITE: &str = r#"
import sys, time, transaction, ZODB
from ZODB.FileStorage import FileStorage
from persistent.mapping import PersistentMapping
db = ZODB.DB(FileStorage(sys.argv[1]))
conn = db.open()
root = conn.root()
def commit(note, **ext):
    t = transaction.get()
    t.note(note)
    t.setUser("alice")
    for k, v in ext.items():
        t.setExtendedInfo(k, v)
    t.commit()
root["a"] = PersistentMapping(x=1); commit("one", color="red", n=3)
root["b"] = PersistentMapping(y=2); commit("two")
root["a"]["x"] = 2; commit("three", tags=["p", "q"], ok=True, f=0.5, raw=b"\x00\xff")
del root["b"]; commit("drop b")
undo("three")
time.sleep(0.05)
db.pack(time.time())
time.sleep(0.05)
root["c"] = PersistentMapping(z=3); commit("after pack", big=2**40)
root["a"]["x"] = 5; commit("five")
undo("five")
db.close()
"#;

fn run_py(script: &str, args: &[&str]) -> String {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    common::run_python(&all)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex8(v: u64) -> String {
    hex(&v.to_be_bytes())
}

fn mp_to_json(v: &Mp) -> Value {
    match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => json!(b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => json!(n),
            (_, Some(n)) => json!(n),
            _ => Value::Null,
        },
        Mp::F32(f) => json!(f64::from(*f)),
        Mp::F64(f) => json!(f),
        Mp::String(s) => json!(s.as_str().unwrap_or_default()),
        Mp::Binary(b) => json!({ "bytes": hex(b) }),
        Mp::Array(a) => Value::Array(a.iter().map(mp_to_json).collect()),
        Mp::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), mp_to_json(v)))
                .collect(),
        ),
        Mp::Ext(..) => Value::Null,
    }
}

/// The same JSON as PY_DUMP, from our storage.
fn dump(s: &FileStorage) -> Value {
    let mut txns = Vec::new();
    let mut oids = std::collections::BTreeSet::new();
    for t in s.iterator(None, None).expect("iterator") {
        let t = t.expect("transaction");
        let ext = if t.meta.extension.is_empty() {
            json!({})
        } else {
            let mut cur = &t.meta.extension[..];
            mp_to_json(&rmpv::decode::read_value(&mut cur).expect("msgpack"))
        };
        let recs: Vec<Value> = t
            .records
            .iter()
            .map(|r| {
                oids.insert(r.oid);
                json!({
                    "oid": hex8(r.oid.0),
                    "tid": hex8(r.tid.0),
                    "data": r.data.as_ref().map(|d| hex(d)),
                    "data_txn": r.data_txn.map(|t| hex8(t.0)),
                })
            })
            .collect();
        txns.push(json!({
            "tid": hex8(t.tid.0),
            "status": (t.status as char).to_string(),
            "user": hex(&t.meta.user),
            "description": hex(&t.meta.description),
            "extension": ext,
            "records": recs,
        }));
    }
    let mut current = serde_json::Map::new();
    for oid in oids {
        let v = match s.load_before(oid, Tid::MAX) {
            Ok(Some(l)) => json!([hex(&l.data), hex8(l.start.0)]),
            _ => Value::Null,
        };
        current.insert(hex8(oid.0), v);
    }
    let undo: Vec<Value> = s
        .undo_log(0, 1000)
        .expect("undo log")
        .iter()
        .map(|e| json!(hex8(e.tid.0)))
        .collect();
    json!({ "txns": txns, "current": current, "undo": undo })
}

fn py_dump(path: &Path) -> Value {
    let out = run_py(PY_DUMP, &[path.to_str().expect("utf-8 path")]);
    serde_json::from_str(&out).expect("python's JSON")
}

#[test]
fn python_written_file_reads_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    run_py(
        &[PY_UNDO, PY_WRITE].concat(),
        &[path.to_str().expect("utf-8 path")],
    );
    let want = py_dump(&path);
    let statuses: Vec<&str> = want["txns"]
        .as_array()
        .expect("txns")
        .iter()
        .map(|t| t["status"].as_str().unwrap_or(""))
        .collect();
    assert!(
        statuses.contains(&"p") && statuses.contains(&" "),
        "{statuses:?}"
    );
    // Read-only first (no index file written), then read-write.
    let ro = FileStorage::open(
        &path,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .expect("open read-only");
    assert_eq!(dump(&ro), want);
    drop(ro);
    let rw = FileStorage::open(&path, FileOptions::default()).expect("open");
    assert_eq!(dump(&rw), want);
    // And we can go on committing to it; Python still reads it.
    let root = rw
        .load_before(Oid(0), Tid::MAX)
        .expect("root")
        .expect("root");
    let txn = Txn {
        meta: TxnMeta {
            user: b"rust".to_vec(),
            description: b"touch root".to_vec(),
            extension: Vec::new(),
        },
        tid: None,
        status: b' ',
        ops: vec![Op::Store {
            oid: Oid(0),
            serial: root.start,
            data: root.data.clone(),
        }],
    };
    assert!(matches!(rw.tpc_vote(&txn), Ok(Vote::Prepared { .. })));
    rw.tpc_finish().expect("finish");
    rw.close();
    let after = dump(&rw);
    drop(rw);
    assert_eq!(py_dump(&path), after);
}

fn ext(entries: Vec<(Mp, Mp)>) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Mp::Map(entries)).expect("encode");
    out
}

fn commit(s: &FileStorage, desc: &str, extension: Vec<u8>, ops: Vec<Op>) -> Tid {
    let txn = Txn {
        meta: TxnMeta {
            user: b"bob".to_vec(),
            description: desc.as_bytes().to_vec(),
            extension,
        },
        tid: None,
        status: b' ',
        ops,
    };
    match s.tpc_vote(&txn) {
        Ok(Vote::Prepared { .. }) => s.tpc_finish().expect("finish"),
        other => panic!("{desc}: {other:?}"),
    }
}

fn store(oid: u64, serial: Tid, data: &[u8]) -> Op {
    Op::Store {
        oid: Oid(oid),
        serial,
        data: Arc::from(data),
    }
}

#[test]
fn our_file_reads_identically_in_python_and_passes_fstest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let s = FileStorage::open(&path, FileOptions::default()).expect("open");
    let e = ext(vec![
        (Mp::from("color"), Mp::from("blue")),
        (Mp::from("n"), Mp::from(7)),
        (Mp::from("ok"), Mp::Boolean(true)),
        (Mp::from("raw"), Mp::Binary(vec![0, 255])),
        (
            Mp::from("tags"),
            Mp::Array(vec![Mp::from("x"), Mp::from(-1)]),
        ),
        (Mp::from("f"), Mp::F64(0.25)),
        (Mp::from("none"), Mp::Nil),
    ]);
    let a = commit(
        &s,
        "one",
        e,
        vec![store(0, Tid::ZERO, b"root"), store(1, Tid::ZERO, b"a1")],
    );
    let b = commit(
        &s,
        "two",
        Vec::new(),
        vec![store(1, a, b"a2"), store(2, Tid::ZERO, b"b1")],
    );
    let c = commit(&s, "three", Vec::new(), vec![store(1, b, b"a3")]);
    let _ = c;
    // Undo "three" (backpointer to two's record), then the creation of 2.
    commit(&s, "undo three", Vec::new(), vec![Op::Undo { txn: c }]);
    let x = commit(&s, "make 3", Vec::new(), vec![store(3, Tid::ZERO, b"c1")]);
    commit(&s, "undo make 3", Vec::new(), vec![Op::Undo { txn: x }]);
    let d = commit(&s, "b2", Vec::new(), vec![store(2, b, b"b2")]);
    commit(
        &s,
        "delete 2",
        Vec::new(),
        vec![Op::Delete {
            oid: Oid(2),
            serial: d,
        }],
    );
    let packtime = zeoraid::storage::timestamp::time_time(s.last_transaction().expect("last"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let e = commit(&s, "after", Vec::new(), vec![store(4, Tid::ZERO, b"d1")]);
    commit(&s, "undo after", Vec::new(), vec![Op::Undo { txn: e }]);
    // A restore pointing back at an earlier transaction.
    let last = s.last_transaction().expect("last");
    let rtid = zeoraid::storage::timestamp::successor(last);
    let cur1 = s.load_before(Oid(1), Tid::MAX).expect("1").expect("1");
    commit_restore(&s, rtid, cur1.data.clone(), b);
    s.pack(packtime, false).expect("pack");
    commit(
        &s,
        "post pack",
        Vec::new(),
        vec![store(5, Tid::ZERO, b"e1")],
    );
    s.close();
    let ours = dump(&s);
    assert!(path.with_file_name("Data.fs.old").exists());
    // Python sees the same while we hold the file, and cannot open it for writing.
    assert_eq!(py_dump(&path), ours);
    let out = run_py(
        "import sys\nfrom ZODB.FileStorage import FileStorage\ntry:\n    FileStorage(sys.argv[1])\n    print('opened')\nexcept Exception as e:\n    print(type(e).__name__)\n",
        &[path.to_str().expect("path")],
    );
    assert_eq!(out.trim(), "LockError");
    drop(s);
    common::assert_fstest_clean(&path);
}

fn commit_restore(s: &FileStorage, tid: Tid, data: zeoraid::storage::Data, prev: Tid) {
    let txn = Txn {
        meta: TxnMeta {
            user: b"copier".to_vec(),
            description: b"restore".to_vec(),
            extension: Vec::new(),
        },
        tid: Some(tid),
        status: b' ',
        ops: vec![Op::Restore {
            oid: Oid(1),
            serial: tid,
            data: Some(data),
            prev_txn: Some(prev),
        }],
    };
    assert!(matches!(s.tpc_vote(&txn), Ok(Vote::Prepared { .. })));
    s.tpc_finish().expect("finish");
}

#[test]
fn a_python_writer_locks_us_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let py = common::python();
    let mut child = Command::new(&py)
        .arg("-c")
        .arg("import sys, time\nfrom ZODB.FileStorage import FileStorage\nfs = FileStorage(sys.argv[1])\nprint('locked', flush=True)\nsys.stdin.read()\n")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
    }
    assert_eq!(line.trim(), "locked");
    let e = FileStorage::open(&path, FileOptions::default()).err();
    let msg = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("Data.fs.lock") && msg.contains("another process"),
        "{msg}"
    );
    drop(child.stdin.take());
    let _ = child.wait();
    // Once Python is gone we get in.
    FileStorage::open(&path, FileOptions::default()).expect("open after python");
}

/// A history for pack: unreachable objects, undo before and after the
/// pack time (records after it pointing back at old revisions).
const PY_HISTORY: &str = r#"
import sys, time, transaction, ZODB
from ZODB.FileStorage import FileStorage
from persistent.mapping import PersistentMapping as PM
db = ZODB.DB(FileStorage(sys.argv[1]))
conn = db.open()
root = conn.root()
def commit(note):
    transaction.get().note(note)
    transaction.commit()
root["a"] = PM(x=1); commit("1")
root["b"] = PM(y=1); commit("2")
root["a"]["x"] = 2; commit("3")
del root["b"]; commit("4")
root["c"] = PM(); root["c"]["d"] = PM(); commit("5")
undo("3")
time.sleep(0.02)
root["a"]["x"] = 3; commit("7")
undo("5")
root["e"] = PM(); commit("9")
db.close()
"#;

const PY_PACK: &str = r#"
import sys
from ZODB.FileStorage import FileStorage
from ZODB.serialize import referencesf
fs = FileStorage(sys.argv[1])
fs.pack(float(sys.argv[2]), referencesf)
fs.close()
"#;

#[test]
fn our_pack_with_gc_matches_python_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("ours.fs");
    let theirs = dir.path().join("theirs.fs");
    run_py(
        &[PY_UNDO, PY_HISTORY].concat(),
        &[theirs.to_str().expect("path")],
    );
    std::fs::copy(&theirs, &ours).expect("copy");
    let before = py_dump(&theirs);
    // Pack between the sixth and seventh transactions.
    let tids: Vec<Tid> = before["txns"]
        .as_array()
        .expect("txns")
        .iter()
        .map(|t| {
            let h = t["tid"].as_str().expect("tid");
            Tid(u64::from_str_radix(h, 16).expect("hex"))
        })
        .collect();
    assert_eq!(tids.len(), 10, "{before}");
    let time = |t: Tid| zeoraid::storage::timestamp::time_time(t);
    let packtime = (time(tids[5]) + time(tids[6])) / 2.0;
    run_py(
        PY_PACK,
        &[theirs.to_str().expect("path"), &packtime.to_string()],
    );
    let s = FileStorage::open(&ours, FileOptions::default()).expect("open");
    s.pack(packtime, true).expect("pack");
    let after = dump(&s);
    s.close();
    drop(s);
    let want = py_dump(&theirs);
    assert_ne!(want, before, "Python's pack changed nothing");
    assert_eq!(py_dump(&ours), want);
    assert_eq!(after, want);
    common::assert_fstest_clean(&ours);
}
