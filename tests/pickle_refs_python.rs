//! `zeoraid::storage::pickle_refs::references` against ZODB's own
//! `ZODB.serialize.referencesf`, on every record of databases that stock
//! Python ZODB writes: random-ish graphs of Persistent subclasses,
//! PersistentMapping/PersistentList, BTrees large enough to split into
//! buckets, weak references and cross-database references, over several
//! transactions (so old revisions are checked too).
//!
//! The interpreter is `$ZEORAID_PYTHON`, else the crate's `.venv/bin/python`;
//! when neither can import ZODB the test fails (never skips).

mod common;

use std::process::Command;

use zeoraid::storage::pickle_refs::references;
use zeoraid::storage::Oid;

const SCRIPT: &str = r#"
import json, random, sys, binascii
import transaction, ZODB, ZODB.serialize, ZODB.utils
from ZODB.FileStorage import FileStorage
from persistent import Persistent
from persistent.mapping import PersistentMapping
from persistent.list import PersistentList
from persistent.wref import WeakRef
from BTrees.OOBTree import OOBTree
from BTrees.IOBTree import IOBTree

class Node(Persistent):
    pass

class Pair(Persistent):
    def __init__(self, a=None, b=None):
        self.a, self.b = a, b

class Slotted(Persistent):
    # __getnewargs__: references to it are bare oids, without class.
    def __getnewargs__(self):
        return ()

seed, path = int(sys.argv[1]), sys.argv[2]
rnd = random.Random(seed)
databases = {}
db = ZODB.DB(FileStorage(path + '/main.fs'), databases=databases, database_name='main')
other = ZODB.DB(FileStorage(path + '/other.fs'), databases=databases, database_name='other')
conn = db.open()
root = conn.root()
oconn = conn.get_connection('other')
oroot = oconn.root()
foreign = [Node() for _ in range(3)]
for i, f in enumerate(foreign):
    oroot['f%d' % i] = f
transaction.commit()

objs = []
def scalar():
    return rnd.choice([
        None, True, False, rnd.randint(-5, 5), rnd.randint(-2**40, 2**40), 2**80 + rnd.randint(0, 9),
        rnd.random(), 'text', u'\u00e9t\u00e9 \u2603', b'\x00\xffbytes', (1, 'a'), frozenset([1, 2]),
        {1, 2, 3}, bytearray(b'ba'), 1j,
    ])
def value(depth=0):
    r = rnd.random()
    if objs and r < 0.35:
        return rnd.choice(objs)
    if objs and r < 0.42:
        return WeakRef(rnd.choice(objs))
    if r < 0.47:
        return rnd.choice(foreign)
    if depth < 3 and r < 0.6:
        return [value(depth + 1) for _ in range(rnd.randint(0, 4))]
    if depth < 3 and r < 0.7:
        return tuple(value(depth + 1) for _ in range(rnd.randint(0, 4)))
    if depth < 3 and r < 0.8:
        return {'k%d' % i: value(depth + 1) for i in range(rnd.randint(0, 4))}
    return scalar()
def new_object():
    kind = rnd.randrange(7)
    if kind == 0:
        o = Node()
        for i in range(rnd.randint(0, 5)):
            setattr(o, 'a%d' % i, value())
    elif kind == 1:
        o = Pair(value(), value())
    elif kind == 2:
        o = PersistentMapping({'x%d' % i: value() for i in range(rnd.randint(0, 6))})
    elif kind == 3:
        o = PersistentList([value() for _ in range(rnd.randint(0, 6))])
    elif kind == 4:
        o = OOBTree()
        for i in range(rnd.choice([3, 40, 200])):
            o['key%04d' % i] = value()
    elif kind == 5:
        o = IOBTree()
        for i in range(rnd.choice([3, 300])):
            o[i] = value()
    else:
        o = Slotted()
        o.v = value()
    return o

for txn in range(25):
    for _ in range(rnd.randint(1, 8)):
        o = new_object()
        objs.append(o)
        root['o%d' % rnd.randrange(60)] = o
    # Modify a few existing objects, sometimes linking them in cycles.
    for o in rnd.sample(objs, min(3, len(objs))):
        if isinstance(o, (Node, Slotted)):
            o.extra = value()
        elif isinstance(o, Pair):
            o.b = rnd.choice(objs)
        elif isinstance(o, PersistentList):
            o.append(value())
    transaction.commit()

out = sys.stdout
for name, d in (('main', db), ('other', other)):
    for t in d.storage.iterator():
        for r in t:
            if r.data is None:
                continue
            try:
                refs = [ZODB.utils.u64(x) for x in ZODB.serialize.referencesf(r.data)]
                err = None
            except Exception as e:
                refs, err = None, repr(e)
            out.write(json.dumps({'db': name, 'oid': ZODB.utils.u64(r.oid), 'tid': binascii.hexlify(r.tid).decode(),
                                  'data': binascii.hexlify(r.data).decode(), 'refs': refs, 'error': err}) + '\n')
conn.close()
db.close()
other.close()
"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex from python"))
        .collect()
}

fn check_seed(seed: u32) -> usize {
    let py = common::python();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(&py)
        .args(["-c", SCRIPT, &seed.to_string()])
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed (seed {seed}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 json lines");
    let mut n = 0;
    let mut with_refs = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let data = unhex(v["data"].as_str().expect("data"));
        let what = format!(
            "seed {seed}, db {}, oid {}, tid {}",
            v["db"], v["oid"], v["tid"]
        );
        assert!(
            v["error"].is_null(),
            "referencesf failed on {what}: {}",
            v["error"]
        );
        let want: Vec<Oid> = v["refs"]
            .as_array()
            .expect("refs")
            .iter()
            .map(|x| Oid(x.as_u64().expect("oid")))
            .collect();
        let got = references(&data);
        assert_eq!(got.as_ref(), Ok(&want), "{what}\nrecord {}", v["data"]);
        n += 1;
        if !want.is_empty() {
            with_refs += 1;
        }
    }
    assert!(n >= 50, "seed {seed}: only {n} records");
    assert!(
        with_refs * 2 >= n / 2,
        "seed {seed}: few records with references"
    );
    n
}

#[test]
fn references_match_zodb_referencesf() {
    let mut total = 0;
    for seed in [1, 2, 3] {
        total += check_seed(seed);
    }
    assert!(total > 150, "{total} records checked");
}
