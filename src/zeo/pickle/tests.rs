//! Vectors written by ZEO 6's own pickle encoder (`ZEO.asyncio.marshal.
//! encoder(b"Z5")`, CPython 3.11), hostile input, and a short seeded fuzz.

use super::*;
use crate::storage::{Error as E, Oid, Tid};
use crate::zeo::message::error_from_wire;

fn b(x: &[u8]) -> Value {
    Value::Binary(x.to_vec())
}
fn oid(n: u64) -> Value {
    b(&n.to_be_bytes())
}

/// Replies and server calls as a Python ZEO server pickles them.
const REPLIES: &[(&str, &[u8])] = &[
    ("conflict", b"\x80\x03(K\x05K\x02X\x06\x00\x00\x00.replyX\x1f\x00\x00\x00ZODB.POSException.ConflictError}(X\x07\x00\x00\x00messageX\x17\x00\x00\x00database conflict errorX\x03\x00\x00\x00oidC\x08\x00\x00\x00\x00\x00\x00\x00\x01X\n\x00\x00\x00class_nameNX\x07\x00\x00\x00serialsC\x08\x00\x00\x00\x00\x00\x00\x00\x03C\x08\x00\x00\x00\x00\x00\x00\x00\x02\x86u\x86t."),
    ("multiundo", b"\x80\x03(K\x06K\x02X\x06\x00\x00\x00.replyX$\x00\x00\x00ZODB.POSException.MultipleUndoErrors}(X\x07\x00\x00\x00_reasonX\x04\x00\x00\x00boomX\x04\x00\x00\x00_oidC\x08\x00\x00\x00\x00\x00\x00\x00\tX\x05\x00\x00\x00_errs]X\x04\x00\x00\x00boomC\x08\x00\x00\x00\x00\x00\x00\x00\t\x86au\x86t."),
    ("poskey", b"\x80\x03(K\x07K\x02X\x06\x00\x00\x00.replyX\x1d\x00\x00\x00ZODB.POSException.POSKeyErrorC\x08\x00\x00\x00\x00\x00\x00\x00\x07\x85\x86t."),
    ("readonly", b"\x80\x03(K\x07K\x02X\x06\x00\x00\x00.replyX\x1f\x00\x00\x00ZODB.POSException.ReadOnlyError)\x86t."),
    ("load", b"\x80\x03(K\x08K\x00X\x06\x00\x00\x00.replyC\x04dataC\x08\x00\x00\x00\x00\x00\x00\x00\x00N\x87t."),
    ("inval", b"\x80\x03(K\x00\x88X\x15\x00\x00\x00invalidateTransactionC\x08\x01\x01\x01\x01\x01\x01\x01\x01](C\x08\x00\x00\x00\x00\x00\x00\x00\x00C\x08\x00\x00\x00\x00\x00\x00\x00\x01e\x86t."),
    ("recon", b"\x80\x03(K\tK\x02X\x06\x00\x00\x00.replyX\x01\x00\x00\x00x}X\x01\x00\x00\x00ecZODB.POSException\n_recon\ncZODB.POSException\nUndoError\n}(X\x07\x00\x00\x00_reasonX\x01\x00\x00\x00rX\x04\x00\x00\x00_oidC\x08\x00\x00\x00\x00\x00\x00\x00\x00X\x04\x00\x00\x00argsX\x01\x00\x00\x00rC\x08\x00\x00\x00\x00\x00\x00\x00\x00\x86u\x86Rs\x86t."),
    ("scalars", b"\x80\x03(K\nK\x00X\x06\x00\x00\x00.reply](K\x01M,\x01Jp\x11\x01\x00J\xff\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01G?\xf8\x00\x00\x00\x00\x00\x00\x88}X\x01\x00\x00\x00a]K\x01asX\x02\x00\x00\x00\xc3\xa9et."),
];

fn reply(name: &str) -> Message {
    let (_, p) = REPLIES.iter().find(|(n, _)| *n == name).expect("vector");
    decode(p).expect("decodes")
}

#[test]
fn python_replies_decode() {
    let m = reply("load");
    assert_eq!(
        (m.msgid_i64(), m.flags, m.method.as_str()),
        (Some(8), 0, REPLY)
    );
    assert_eq!(m.args, Value::Array(vec![b(b"data"), oid(0), Value::Nil]));
    let m = reply("inval");
    assert!(m.is_oneway());
    assert_eq!(
        m.args,
        Value::Array(vec![b(&[1; 8]), Value::Array(vec![oid(0), oid(1)])])
    );
    let m = reply("scalars");
    assert_eq!(
        m.args,
        Value::Array(vec![
            Value::from(1),
            Value::from(300),
            Value::from(70000),
            Value::from(-1),
            Value::from(1u64 << 40),
            Value::F64(1.5),
            Value::Boolean(true),
            Value::Map(vec![(Value::from("a"), Value::Array(vec![Value::from(1)]))]),
            Value::from("é"),
        ])
    );
    // A pickled exception object becomes reduce_exception's shape.
    let m = reply("recon");
    let Value::Array(a) = &m.args else { panic!() };
    let Value::Map(state) = &a[1] else { panic!() };
    let Value::Array(exc) = &state[0].1 else {
        panic!()
    };
    assert_eq!(exc[0], Value::from("ZODB.POSException.UndoError"));
}

#[test]
fn pickled_errors_map_like_msgpack_ones() {
    let table = vec![
        (
            "conflict",
            E::Conflict {
                oid: Oid(1),
                committed: Tid(3),
                read: Tid(2),
                message: "database conflict error".into(),
                read_conflict: false,
                class_name: None,
            },
        ),
        ("poskey", E::PosKey(Oid(7))),
        ("readonly", E::ReadOnly),
        (
            "multiundo",
            E::Undo {
                message: "boom".into(),
                oid: Some(Oid(9)),
            },
        ),
        (
            "recon",
            E::Remote {
                class: "x".into(),
                message: "{\"e\": [\"ZODB.POSException.UndoError\", {\"_reason\": \"r\", \"_oid\": [0, 0, 0, 0, 0, 0, 0, 0], \"args\": [\"r\", [0, 0, 0, 0, 0, 0, 0, 0]]}]}".into(),
            },
        ),
    ];
    for (name, want) in table {
        let m = reply(name);
        assert_eq!(m.flags, 2, "{name}");
        let got = error_from_wire(&m.args);
        match (&got, &want) {
            (E::Remote { class, .. }, E::Remote { class: w, .. }) => assert_eq!(class, w),
            _ => assert_eq!(got, want, "{name}"),
        }
    }
}

/// Requests as a Python ZEO client pickles them, byte for byte.
#[test]
fn requests_match_python_bytes() {
    let z8 = b(&[0; 8]);
    let storea_python: &[u8] = b"\x80\x03(K\x00\x88X\x06\x00\x00\x00storea(C\x08\x00\x00\x00\x00\x00\x00\x00\x00C\x08\x00\x00\x00\x00\x00\x00\x00\x00B,\x01\x00\x00";
    let data = vec![b'x'; 300];
    let (prefix, suffix) = oneway_parts(
        "storea",
        &[z8.clone(), z8.clone()],
        Some(data.len()),
        &[Value::from(1)],
    );
    assert_eq!(prefix, storea_python);
    assert_eq!(suffix, b"K\x01tt.");
    let whole = encode(
        &Value::from(0),
        1,
        "storea",
        &Value::Array(vec![z8.clone(), z8.clone(), b(&data), Value::from(1)]),
    );
    assert_eq!(whole, [prefix, data, suffix].concat());
    let table: Vec<(Vec<u8>, &[u8])> = vec![
        (
            encode(&Value::from(-1), 0, REPLY, &Value::Nil),
            b"\x80\x03(J\xff\xff\xff\xffK\x00X\x06\x00\x00\x00.replyNt.",
        ),
        (
            encode(
                &Value::from(1),
                0,
                "register",
                &Value::Array(vec![Value::from("1"), Value::Boolean(false)]),
            ),
            b"\x80\x03(K\x01\x89X\x08\x00\x00\x00registerX\x01\x00\x00\x001\x89\x86t.",
        ),
        (
            encode(
                &Value::from(0),
                1,
                "tpc_begin",
                &Value::Array(vec![
                    Value::from(1),
                    b(b"user"),
                    b(b"desc"),
                    Value::Map(vec![(Value::from("k"), Value::from("v"))]),
                    Value::Nil,
                    Value::from(" "),
                ]),
            ),
            b"\x80\x03(K\x00\x88X\t\x00\x00\x00tpc_begin(K\x01C\x04userC\x04desc}X\x01\x00\x00\x00kX\x01\x00\x00\x00vsNX\x01\x00\x00\x00 tt.",
        ),
    ];
    for (got, want) in table {
        assert_eq!(got, want);
    }
    // None as the data (restorea of a deletion record).
    let (p, s) = oneway_parts(
        "restorea",
        &[z8.clone(), z8],
        None,
        &[Value::Nil, Value::from(3)],
    );
    let m = decode(&[p, s].concat()).expect("decodes");
    assert_eq!(m.arg_list()[2], Value::Nil);
    assert_eq!(m.arg_list().len(), 5);
}

#[test]
fn hostile_pickles_are_errors() {
    let deep: Vec<u8> = [&b"\x80\x03N"[..], &[0x85; 100], b"."].concat();
    let deep_lists: Vec<u8> = [
        &b"\x80\x03"[..],
        &b"]"[..].repeat(40),
        &b"a".repeat(39),
        b".",
    ]
    .concat();
    let table: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("no stop", b"\x80\x03N".to_vec()),
        (
            "os.system",
            b"\x80\x03cos\nsystem\nX\x02\x00\x00\x00lsR.".to_vec(),
        ),
        ("builtins.eval", b"\x80\x03cbuiltins\neval\n.".to_vec()),
        (
            "bare class",
            b"\x80\x03cZODB.POSException\nConflictError\n.".to_vec(),
        ),
        ("huge bytes", b"\x80\x03B\xff\xff\xff\xff.".to_vec()),
        ("huge str", b"\x80\x03X\xff\xff\xff\x7fab.".to_vec()),
        ("memo put", b"\x80\x03Nq\x00.".to_vec()),
        ("memo get", b"\x80\x03h\x00.".to_vec()),
        ("nested tuples", deep),
        ("nested lists", deep_lists),
        ("underflow", b"\x80\x03\x86.".to_vec()),
        ("no mark", b"\x80\x03Nt.".to_vec()),
        ("append to int", b"\x80\x03K\x01Na.".to_vec()),
        ("odd dict", b"\x80\x03}(K\x01u.".to_vec()),
        (
            "wide long",
            b"\x80\x03\x8a\x0a\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01.".to_vec(),
        ),
        ("proto 9", b"\x80\x09N.".to_vec()),
        ("trailing", b"\x80\x03N.N".to_vec()),
        ("bad utf8", b"\x80\x03X\x01\x00\x00\x00\xff.".to_vec()),
        (
            "long global",
            [&b"\x80\x03c"[..], &[b'a'; 300], b"\nb\n."].concat(),
        ),
        ("not 4-tuple", b"\x80\x03K\x01K\x02\x86.".to_vec()),
        (
            "recon of a non-class",
            b"\x80\x03cZODB.POSException\n_recon\nK\x01}\x86\x85R.".to_vec(),
        ),
        ("reduce of a str", b"\x80\x03X\x00\x00\x00\x00)R.".to_vec()),
    ];
    for (name, p) in table {
        assert!(decode(&p).is_err(), "{name}: {:?}", decode(&p));
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Random bytes, every truncation and random mutations of the real
/// replies: the decoder answers (value or error), never panics; a
/// truncation is always an error.
#[test]
fn fuzz_decoder_short_run() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for (name, p) in REPLIES {
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_err(), "{name} cut at {cut}");
        }
        for _ in 0..400 {
            let mut m = p.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                match rng.below(3) {
                    0 => m[i] = rng.next() as u8,
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, rng.next() as u8),
                }
                if m.is_empty() {
                    break;
                }
            }
            let _ = decode(&m);
        }
    }
    const OPS: &[u8] = b"()]}NKMJGXCBtlaeus\x85\x86\x87\x88\x89\x8a.cR";
    for _ in 0..3000 {
        let n = rng.below(64);
        let mut m = vec![0x80, 3];
        for _ in 0..n {
            m.push(if rng.below(2) == 0 {
                OPS[rng.below(OPS.len())]
            } else {
                rng.next() as u8
            });
        }
        let _ = decode(&m);
    }
}

#[test]
fn encode_decode_round_trip() {
    let args = Value::Array(vec![
        oid(5),
        Value::Nil,
        Value::from(i64::MIN),
        Value::from(u64::MAX),
        Value::F64(-0.5),
        Value::from("ü"),
        b(&vec![7; 70_000]),
        Value::Map(
            (0..1500)
                .map(|i| (Value::from(i), Value::from(i)))
                .collect(),
        ),
        Value::Array(vec![]),
        Value::Array(vec![Value::Array(vec![Value::from(1)])]),
    ]);
    for msgid in [Value::from(3), Value::Array(vec![oid(1), oid(2)])] {
        let m = decode(&encode(&msgid, 0, "x", &args)).expect("decodes");
        assert_eq!((m.msgid, m.flags, m.args.clone()), (msgid, 0, args.clone()));
    }
}
