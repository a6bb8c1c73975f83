//! The pickle flavour's client-side decoder: replies and server calls of a
//! default-config `runzeo` ("Z5") decoded per second by zeoraid's
//! [`zeoraid::zeo::pickle::decode`] vs by Python ZEO's own client decoder
//! (`ZEO.asyncio.marshal.pickle_decode`, what `ClientStorage` runs on every
//! message, zodbpickle's C unpickler), over the same bytes, side by side in
//! one run (target ≥ 3×).
//!
//! The messages are made by ZEO's server encoder
//! (`ZEO.asyncio.marshal.encoder(b"Z5", server=True)`, the bytes runzeo
//! writes): `loadBefore` results with a 300-byte data record (current, and
//! with an end tid; their message id is `(oid, tid)`, as ZEO's client
//! sends it), `vote` results (no conflict, and one conflict dict
//! with its 300-byte data), `tpc_finish`'s tid, and an
//! `invalidateTransaction` call with five oids. Each figure is the median
//! of `ZEORAID_BENCH_REPEAT` (default 3) interleaved runs of
//! `ZEORAID_BENCH_SECONDS` (default 1) per message; the table is markdown.
//!
//! Run: `cargo bench --bench pickle_decode`. Needs a Python with ZODB 6 +
//! ZEO 6: `$ZEORAID_PYTHON` or `.venv/bin/python`. Asserts nothing about
//! timing (only that both decoders accept every message).

mod common;
use common::{env, mark, median, python, ratio};
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

/// Makes the messages (`make OUT`: length-prefixed name and payload
/// pairs) and times Python's client decoder on them (`time IN SECONDS`:
/// one line `NAME RATE` per message).
const PY: &str = r#"
import struct, sys, time
from ZEO.asyncio.marshal import encoder, pickle_decode

def messages():
    enc = encoder(b"Z5", server=True)
    tid, end = b"\x03\xec\xa2\x8b\x11\x22\x33\x44", b"\x03\xec\xa2\x8b\x55\x66\x77\x88"
    oid = b"\x00\x00\x00\x00\x00\x01\x02\x03"
    # A ZODB record: the class pickle, then the state, ~300 bytes.
    import pickle
    state = {"title": "A page", "body": "x" * 200, "tags": ["a", "b"], "n": 42}
    data = (pickle.dumps(("persistent.mapping", "PersistentMapping"), 3)
            + pickle.dumps(state, 3))[:300].ljust(300, b".")
    oids = [struct.pack(">Q", 4096 + 7 * i) for i in range(5)]
    return [
        # ZEO's client sends loadBefore with the message id (oid, tid).
        ("loadBefore, current (300 B record)", enc((oid, end), 0, ".reply", (data, tid, None))),
        ("loadBefore, with end tid", enc((oid, tid), 0, ".reply", (data, tid, end))),
        ("vote, no conflict", enc(1203, 0, ".reply", [])),
        ("vote, one conflict (300 B data)", enc(1204, 0, ".reply",
            [dict(oid=oid, serials=(end, tid), data=data)])),
        ("tpc_finish", enc(1205, 0, ".reply", end)),
        ("invalidateTransaction, 5 oids", enc(0, True, "invalidateTransaction", (end, oids))),
    ]

def read(path):
    out, f = [], open(path, "rb").read()
    i = 0
    while i < len(f):
        n = struct.unpack(">I", f[i:i + 4])[0]; i += 4
        name = f[i:i + n].decode(); i += n
        n = struct.unpack(">I", f[i:i + 4])[0]; i += 4
        out.append((name, f[i:i + n])); i += n
    return out

if sys.argv[1] == "make":
    with open(sys.argv[2], "wb") as f:
        for name, msg in messages():
            b = name.encode()
            f.write(struct.pack(">I", len(b)) + b + struct.pack(">I", len(msg)) + msg)
else:
    seconds = float(sys.argv[3])
    for name, msg in read(sys.argv[2]):
        pickle_decode(msg)
        n, start = 0, time.perf_counter()
        while True:
            for _ in range(1000):
                pickle_decode(msg)
            n += 1000
            took = time.perf_counter() - start
            if took >= seconds:
                break
        print(f"{name}\t{n / took}", flush=True)
"#;

fn py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(PY)
        .args(args)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "Python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_messages(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::read(path).expect("read the messages");
    let mut out = Vec::new();
    let mut rest = &f[..];
    let take = |rest: &mut &[u8]| {
        let n = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let (v, r) = rest[4..].split_at(n);
        *rest = r;
        v.to_vec()
    };
    while !rest.is_empty() {
        let name = String::from_utf8(take(&mut rest)).expect("utf-8 name");
        out.push((name, take(&mut rest)));
    }
    out
}

/// Decodes per second of `msg` by zeoraid's pickle decoder.
fn rust_rate(msg: &[u8], phase: Duration) -> f64 {
    let mut n = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..1000 {
            let m = zeoraid::zeo::pickle::decode(black_box(msg)).expect("decode");
            black_box(m);
        }
        n += 1000;
        let took = start.elapsed();
        if took >= phase {
            return n as f64 / took.as_secs_f64();
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let seconds: f64 = env("ZEORAID_BENCH_SECONDS").unwrap_or(1.0);
    let repeat = env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages");
    let path_s = path.to_str().expect("utf-8 path");
    py(&["make", path_s]);
    let msgs = read_messages(&path);
    for (name, msg) in &msgs {
        let m = zeoraid::zeo::pickle::decode(msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = if name.starts_with("invalidate") {
            "invalidateTransaction"
        } else {
            ".reply"
        };
        assert_eq!(m.method, want, "{name}: {m:?}");
        if name.starts_with("loadBefore") {
            let record = m.args.as_array().and_then(|a| a.first());
            assert_eq!(
                record.and_then(|r| r.as_slice()).map(<[u8]>::len),
                Some(300),
                "{name}: {m:?}"
            );
        }
    }
    let mut ours = vec![Vec::new(); msgs.len()];
    let mut theirs = vec![Vec::new(); msgs.len()];
    let phase = Duration::from_secs_f64(seconds);
    for rep in 0..repeat {
        eprintln!("pickle decode: repeat {} of {repeat}", rep + 1);
        for (i, (_, msg)) in msgs.iter().enumerate() {
            ours[i].push(rust_rate(msg, phase));
        }
        let out = py(&["time", path_s, &seconds.to_string()]);
        for (i, line) in out.lines().enumerate() {
            let rate = line.rsplit('\t').next().and_then(|r| r.parse::<f64>().ok());
            theirs[i].push(rate.expect("a rate per line from Python"));
        }
    }
    println!(
        "### Pickle flavour: replies decoded per second, zeoraid's client vs Python ZEO's\n\n\
         Messages made by ZEO's server encoder (the bytes a default-config runzeo writes); \
         Python: `ZEO.asyncio.marshal.pickle_decode` (zodbpickle's C unpickler); \
         zeoraid: `zeo::pickle::decode`; one thread each, {seconds} s per message, median of {repeat}.\n"
    );
    println!("| message | bytes | zeoraid decodes/s | Python decodes/s | ratio |");
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (name, msg)) in msgs.iter().enumerate() {
        let (o, t) = (median(&ours[i]), median(&theirs[i]));
        let r = ratio(o, t);
        ratios.push(r);
        println!("| {name} | {} | {o:.0} | {t:.0} | **{r:.1}x** |", msg.len());
    }
    let worst = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "\nTarget ≥ 3x on every message: {} (lowest {worst:.1}x).",
        mark(worst >= 3.0)
    );
}
