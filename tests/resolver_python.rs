//! The `[conflict-resolution]` helper against a real Python with ZODB:
//! merges by the application class's `_p_resolveConflict` (here ZODB's test
//! `PCounter`, found through the helper's `path`), refuses classes that
//! cannot merge, reports a wrong interpreter at start, and survives a
//! resolution that hangs (killed at the deadline; merges are refused for one
//! timeout, then work again on a restarted helper).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::storage::resolve::{ConflictResolver, PythonOptions, PythonResolver};
use zeoraid::storage::{Data, Oid};

/// Pickles of counters with the given values, of `class` from `module`.
fn pickles(module: &str, class: &str, values: &[i64]) -> Vec<Data> {
    let script = format!(
        "import sys, binascii\n\
         from ZODB.tests.StorageTestBase import zodb_pickle\n\
         from {module} import {class} as C\n\
         for v in sys.argv[1:]:\n\
         \x20   o = C(); o._value = int(v)\n\
         \x20   print(binascii.hexlify(zodb_pickle(o)).decode())\n"
    );
    let mut args = vec!["-c".to_string(), script];
    args.extend(values.iter().map(|v| v.to_string()));
    common::run_python(&args)
        .lines()
        .map(|l| Data::from(unhex(l)))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `_value` of a pickled counter, as Python reads it.
fn value(pickle: &Data) -> i64 {
    let script = "import sys, binascii\n\
                  from ZODB.tests.StorageTestBase import zodb_unpickle\n\
                  print(zodb_unpickle(binascii.unhexlify(sys.argv[1]))._value)\n";
    common::run_python(&["-c", script, &hex(pickle)])
        .trim()
        .parse()
        .expect("a number")
}

fn opts(path: Vec<PathBuf>, timeout: Duration) -> PythonOptions {
    PythonOptions {
        python: common::python(),
        path,
        timeout,
    }
}

#[test]
fn merges_with_the_application_class() {
    let r = PythonResolver::start(opts(Vec::new(), Duration::from_secs(20))).expect("start");
    let p = pickles("ZODB.tests.ConflictResolution", "PCounter", &[2, 3, 1]);
    // old 2, committed 3, new 1: PCounter merges to 3 + 1 - 2.
    let merged = r.resolve(Oid(7), &p[0], &p[1], &p[2]).expect("merged");
    assert_eq!(value(&merged), 2);
    // A class without _p_resolveConflict cannot merge.
    let q = pickles("ZODB.tests.MinPO", "MinPO", &[2, 3, 1]);
    let e = r.resolve(Oid(7), &q[0], &q[1], &q[2]);
    assert!(
        matches!(&e, Err(m) if m.contains("not resolvable")),
        "{e:?}"
    );
    // Garbage is an error, and the helper stays usable.
    let g = Data::from(&b"not a pickle"[..]);
    assert!(r.resolve(Oid(7), &g, &g, &g).is_err());
    let again = r
        .resolve(Oid(7), &p[0], &p[1], &p[2])
        .expect("merged again");
    assert_eq!(value(&again), 2);
    r.stop();
}

#[test]
fn a_wrong_interpreter_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-python");
    let e = PythonResolver::start(PythonOptions {
        python: missing.clone(),
        path: Vec::new(),
        timeout: Duration::from_secs(5),
    })
    .err()
    .expect("refused");
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("import ZODB"),
        "{e}"
    );
    // An interpreter that starts but never answers: refused at the deadline.
    let silent = dir.path().join("silent-python");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 60\n").expect("write");
    let mut perm = std::fs::metadata(&silent).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&silent, perm).expect("chmod");
    let started = Instant::now();
    let e = PythonResolver::start(PythonOptions {
        python: silent,
        path: Vec::new(),
        timeout: Duration::from_millis(500),
    })
    .err()
    .expect("refused");
    assert!(e.contains("no answer within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_hanging_resolution_is_cut_off_and_the_helper_restarted() {
    // An application module (found through `path`) whose merge hangs.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("slowapp.py"),
        "import time\n\
         from persistent import Persistent\n\
         class Slow(Persistent):\n\
         \x20   def _p_resolveConflict(self, old, committed, new):\n\
         \x20       time.sleep(60)\n\
         \x20       return committed\n",
    )
    .expect("module");
    let r = Arc::new(
        PythonResolver::start(opts(vec![dir.path().to_path_buf()], Duration::from_secs(2)))
            .expect("start"),
    );
    let slow = {
        let script = format!(
            "import sys, binascii\nsys.path.insert(0, {:?})\n\
             from ZODB.tests.StorageTestBase import zodb_pickle\nfrom slowapp import Slow\n\
             o = Slow(); o._value = 1\n\
             print(binascii.hexlify(zodb_pickle(o)).decode())\n",
            dir.path().display().to_string()
        );
        Data::from(unhex(common::run_python(&["-c", &script]).trim()))
    };
    let started = Instant::now();
    let e = r.resolve(Oid(1), &slow, &slow, &slow);
    assert!(
        matches!(&e, Err(m) if m.contains("no answer within")),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Right after, merges are refused at once (an undo of many such
    // objects must not hold the commit lock for one timeout each) ...
    let p = pickles("ZODB.tests.ConflictResolution", "PCounter", &[5, 9, 1]);
    let started = Instant::now();
    let e = r.resolve(Oid(2), &p[0], &p[1], &p[2]);
    assert!(matches!(&e, Err(m) if m.contains("refused")), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // ... and after one timeout they work again, on a fresh helper.
    std::thread::sleep(Duration::from_secs(2));
    let merged = r.resolve(Oid(2), &p[0], &p[1], &p[2]).expect("works again");
    assert_eq!(value(&merged), 5);
    r.stop();
}
