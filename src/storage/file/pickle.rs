//! The transaction extension in `Data.fs`: a Python pickle of a dict.
//!
//! ZEO's M5 protocol carries the extension as a msgpack map, and
//! [`TxnMeta::extension`](crate::storage::TxnMeta) holds those msgpack bytes
//! (empty for an empty map). FileStorage stores `dumps(ext, 3)` (nothing for
//! an empty dict). This module converts between the two for the simple
//! values extensions hold: str, bytes, int, float, bool, None, list, tuple
//! and dict. The writer emits protocol 3 without memo entries (any Python
//! unpickler reads it); the reader understands what CPython's pickler
//! writes for those types with protocols 0–5 (binary opcodes), including
//! memo puts and gets.

use std::collections::HashMap;

use rmpv::Value;

/// The most nested containers the reader and writer accept.
const MAX_DEPTH: usize = 64;

/// msgpack extension bytes → pickle bytes for `Data.fs` (empty for none).
pub fn ext_to_pickle(msgpack: &[u8]) -> Result<Vec<u8>, String> {
    if msgpack.is_empty() {
        return Ok(Vec::new());
    }
    let mut cur = msgpack;
    let v = rmpv::decode::read_value(&mut cur)
        .map_err(|e| format!("the transaction extension is not msgpack: {e}"))?;
    if !cur.is_empty() {
        return Err("trailing bytes after the transaction extension".to_string());
    }
    match &v {
        Value::Map(m) if m.is_empty() => return Ok(Vec::new()),
        Value::Map(_) => {}
        _ => return Err("the transaction extension is not a map".to_string()),
    }
    let mut out = vec![0x80, 3];
    write_value(&mut out, &v, 0)?;
    out.push(b'.');
    Ok(out)
}

/// Pickle bytes from `Data.fs` → msgpack extension bytes (empty for none).
pub fn ext_from_pickle(pickle: &[u8]) -> Result<Vec<u8>, String> {
    if pickle.is_empty() {
        return Ok(Vec::new());
    }
    let v = Unpickler::new(pickle).load()?;
    let Value::Map(m) = v else {
        return Err("the pickled transaction extension is not a dict".to_string());
    };
    if m.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(m)).map_err(|e| e.to_string())?;
    Ok(out)
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &[u8]) -> Result<(), String> {
    let n = u32::try_from(s.len()).map_err(|_| "string too long".to_string())?;
    out.push(b'X');
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s);
    Ok(())
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), String> {
    match u8::try_from(b.len()) {
        Ok(n) => {
            out.push(b'C');
            out.push(n);
        }
        Err(_) => {
            let n = u32::try_from(b.len()).map_err(|_| "bytes too long".to_string())?;
            out.push(b'B');
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.extend_from_slice(b);
    Ok(())
}

pub(crate) fn write_int(out: &mut Vec<u8>, v: i128) {
    if (0..256).contains(&v) {
        out.push(b'K');
        out.push(v as u8);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if (i128::from(i32::MIN)..=i128::from(i32::MAX)).contains(&v) {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    } else {
        // LONG1: the shortest little-endian two's complement.
        let bytes = v.to_le_bytes();
        let mut n = bytes.len();
        while n > 1 {
            let top = bytes[n - 1];
            let next_sign = bytes[n - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.push(0x8a);
        out.push(n as u8);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("the transaction extension is nested too deeply".to_string());
    }
    if let Some(done) = write_scalar(out, v) {
        return done;
    }
    match v {
        Value::Array(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                for i in items {
                    write_value(out, i, depth + 1)?;
                }
                out.push(b'e');
            }
        }
        Value::Map(entries) => {
            out.push(b'}');
            if !entries.is_empty() {
                out.push(b'(');
                for (k, val) in entries {
                    write_value(out, k, depth + 1)?;
                    write_value(out, val, depth + 1)?;
                }
                out.push(b'u');
            }
        }
        Value::Ext(..) => {
            return Err("msgpack extension types cannot be pickled".to_string());
        }
        // Written by write_scalar above.
        _ => {}
    }
    Ok(())
}

/// Pickle a value that is not a container (None, bool, int, float, str,
/// bytes) as protocol 3 does; `None` for a list, dict or extension, which
/// each writer frames its own way. Shared by the extension writer and
/// the ZEO client's pickler.
pub(crate) fn write_scalar(out: &mut Vec<u8>, v: &Value) -> Option<Result<(), String>> {
    match v {
        Value::Nil => out.push(b'N'),
        Value::Boolean(true) => out.push(0x88),
        Value::Boolean(false) => out.push(0x89),
        Value::Integer(i) => {
            let n = i
                .as_i64()
                .map(i128::from)
                .or_else(|| i.as_u64().map(i128::from))
                .unwrap_or(0);
            write_int(out, n);
        }
        Value::F32(f) => {
            out.push(b'G');
            out.extend_from_slice(&f64::from(*f).to_be_bytes());
        }
        Value::F64(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::String(s) => {
            return Some(match s.as_str() {
                Some(t) => write_str(out, t.as_bytes()),
                None => write_bytes(out, s.as_bytes()),
            })
        }
        Value::Binary(b) => return Some(write_bytes(out, b)),
        Value::Array(_) | Value::Map(_) | Value::Ext(..) => return None,
    }
    Some(Ok(()))
}

/// A stack item while unpickling.
#[derive(Clone, Debug)]
enum Item {
    Mark,
    Value(Value),
}

/// A small unpickler for the simple values of a transaction extension.
struct Unpickler<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(input: &'a [u8]) -> Unpickler<'a> {
        Unpickler {
            input,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or_else(|| format!("pickle truncated at {}", self.pos))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32le(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64le(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn sized(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "pickle length overflow".to_string())?;
        self.take(n)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => Err("unexpected mark in pickle".to_string()),
            None => Err("pickle stack underflow".to_string()),
        }
    }

    /// Everything above the topmost mark (which is removed).
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| "pickle mark not found".to_string())?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => Ok(v),
                Item::Mark => Err("nested mark".to_string()),
            })
            .collect()
    }

    fn top_mut(&mut self) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            _ => Err("pickle stack underflow".to_string()),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of dict items in pickle".to_string());
        }
        let Value::Map(m) = self.top_mut()? else {
            return Err("SETITEMS on a non-dict".to_string());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match m.iter_mut().find(|(old, _)| *old == k) {
                Some(slot) => slot.1 = v,
                None => m.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        let Value::Array(a) = self.top_mut()? else {
            return Err("APPENDS on a non-list".to_string());
        };
        a.extend(items);
        Ok(())
    }

    fn text(b: &[u8]) -> Value {
        match std::str::from_utf8(b) {
            Ok(s) => Value::from(s),
            Err(_) => Value::Binary(b.to_vec()),
        }
    }

    fn long(b: &[u8]) -> Result<Value, String> {
        le_int(b).ok_or_else(|| "pickled integer out of range".to_string())
    }

    fn load(mut self) -> Result<Value, String> {
        loop {
            if self.stack.len() > 100_000 {
                return Err("pickle too large".to_string());
            }
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64le()?; // FRAME
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.stack.push(Item::Mark),
                b'}' => self.push(Value::Map(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Map(Vec::new()));
                    self.set_items(items)?;
                }
                b']' | b')' => self.push(Value::Array(Vec::new())),
                b'l' | b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Array(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".to_string());
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Array(items));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => u32::from(self.u8()?),
                        b'r' => self.u32le()?,
                        _ => u32::try_from(self.memo.len()).unwrap_or(u32::MAX),
                    };
                    let v = match self.stack.last() {
                        Some(Item::Value(v)) => v.clone(),
                        _ => return Err("memo put of nothing".to_string()),
                    };
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        u32::from(self.u8()?)
                    } else {
                        self.u32le()?
                    };
                    let v = self
                        .memo
                        .get(&idx)
                        .cloned()
                        .ok_or_else(|| format!("memo {idx} missing"))?;
                    self.push(v);
                }
                b'X' => {
                    let n = self.u32le()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Self::text(b));
                }
                0x8c => {
                    let n = self.u8()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Self::text(b));
                }
                0x8d => {
                    let n = self.u64le()?;
                    let b = self.sized(n)?;
                    self.push(Self::text(b));
                }
                b'B' => {
                    let n = self.u32le()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Value::Binary(b.to_vec()));
                }
                b'C' => {
                    let n = self.u8()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Value::Binary(b.to_vec()));
                }
                0x8e => {
                    let n = self.u64le()?;
                    let b = self.sized(n)?;
                    self.push(Value::Binary(b.to_vec()));
                }
                // Python 2 strings: text when they decode.
                b'T' => {
                    let n = self.u32le()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Self::text(b));
                }
                b'U' => {
                    let n = self.u8()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Self::text(b));
                }
                b'J' => {
                    let v = self.u32le()? as i32;
                    self.push(Value::from(v));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::from(v));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::from(u16::from_le_bytes([b[0], b[1]])));
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.sized(u64::from(n))?;
                    let v = Self::long(b)?;
                    self.push(v);
                }
                0x8b => {
                    let n = self.u32le()?;
                    let b = self.sized(u64::from(n))?;
                    let v = Self::long(b)?;
                    self.push(v);
                }
                b'N' => self.push(Value::Nil),
                0x88 => self.push(Value::Boolean(true)),
                0x89 => self.push(Value::Boolean(false)),
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::F64(f64::from_be_bytes(a)));
                }
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| "pickle stack underflow".to_string())?;
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at {at} in the transaction extension"
                ))
                }
            }
            if self.stack.len() > MAX_DEPTH * 1024 {
                return Err("pickle too large".to_string());
            }
        }
    }
}

/// A pickled `LONG1`/`LONG4` integer (little-endian two's complement,
/// `b.len()` bytes; empty is 0) as a msgpack value, or `None` when it does
/// not fit 64 bits (signed, or unsigned if positive). Shared with ZEO's
/// pickle flavour (`zeo::pickle`).
pub fn le_int(b: &[u8]) -> Option<Value> {
    if b.len() > 16 {
        return None;
    }
    let fill = if b.last().is_some_and(|x| x & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut a = [fill; 16];
    a[..b.len()].copy_from_slice(b);
    let v = i128::from_le_bytes(a);
    if let Ok(i) = i64::try_from(v) {
        Some(Value::from(i))
    } else {
        u64::try_from(v).ok().map(Value::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    #[test]
    fn empty_extension_is_empty_both_ways() {
        assert_eq!(ext_to_pickle(b""), Ok(vec![]));
        assert_eq!(ext_to_pickle(&mp(&Value::Map(vec![]))), Ok(vec![]));
        assert_eq!(ext_from_pickle(b""), Ok(vec![]));
        // pickle.dumps({}, 3)
        assert_eq!(ext_from_pickle(b"\x80\x03}q\x00."), Ok(vec![]));
    }

    #[test]
    fn python_written_pickles_read() {
        // (pickle.dumps(x, protocol) from CPython 3.11, expected value)
        let cases: Vec<(&[u8], Value)> = vec![
            // {'a': 1}, protocol 3
            (
                b"\x80\x03}q\x00X\x01\x00\x00\x00aq\x01K\x01s.",
                Value::Map(vec![(Value::from("a"), Value::from(1))]),
            ),
            // {'x': b'yz', 'n': None, 't': True, 'f': 1.5, 'l': [1, 2], 'big': 2**40, 'neg': -3}, protocol 3
            (
                b"\x80\x03}q\x00(X\x01\x00\x00\x00xq\x01C\x02yzq\x02X\x01\x00\x00\x00nq\x03NX\x01\x00\x00\x00tq\x04\x88X\x01\x00\x00\x00fq\x05G?\xf8\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00lq\x06]q\x07(K\x01K\x02eX\x03\x00\x00\x00bigq\x08\x8a\x06\x00\x00\x00\x00\x00\x01X\x03\x00\x00\x00negq\tJ\xfd\xff\xff\xffu.",
                Value::Map(vec![
                    (Value::from("x"), Value::Binary(b"yz".to_vec())),
                    (Value::from("n"), Value::Nil),
                    (Value::from("t"), Value::Boolean(true)),
                    (Value::from("f"), Value::F64(1.5)),
                    (
                        Value::from("l"),
                        Value::Array(vec![Value::from(1), Value::from(2)]),
                    ),
                    (Value::from("big"), Value::from(1u64 << 40)),
                    (Value::from("neg"), Value::from(-3)),
                ]),
            ),
            // {'k': (1, 'a')}, protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, TUPLE2)
            (
                b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01k\x94K\x01\x8c\x01a\x94\x86\x94s.",
                Value::Map(vec![(
                    Value::from("k"),
                    Value::Array(vec![Value::from(1), Value::from("a")]),
                )]),
            ),
            // {'a': 'v', 'b': 'v'} with a memo get, protocol 3
            (
                b"\x80\x03}q\x00(X\x01\x00\x00\x00aq\x01X\x01\x00\x00\x00vq\x02X\x01\x00\x00\x00bq\x03h\x02u.",
                Value::Map(vec![
                    (Value::from("a"), Value::from("v")),
                    (Value::from("b"), Value::from("v")),
                ]),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(ext_from_pickle(p), Ok(mp(&want)), "{p:?}");
        }
    }

    #[test]
    fn round_trip() {
        let v = Value::Map(vec![
            (Value::from("user"), Value::from("ü")),
            (Value::from("bin"), Value::Binary(vec![0; 300])),
            (Value::from("i"), Value::from(-1)),
            (Value::from("k"), Value::from(255)),
            (Value::from("m"), Value::from(65535)),
            (Value::from("j"), Value::from(-70000)),
            (Value::from("huge"), Value::from(u64::MAX)),
            (Value::from("small"), Value::from(i64::MIN)),
            (Value::from("f"), Value::F64(-0.25)),
            (Value::from("no"), Value::Boolean(false)),
            (
                Value::from("nested"),
                Value::Map(vec![(Value::from(1), Value::Array(vec![]))]),
            ),
        ]);
        let p = ext_to_pickle(&mp(&v)).expect("pickle");
        assert_eq!(&p[..2], b"\x80\x03");
        assert_eq!(ext_from_pickle(&p), Ok(mp(&v)));
    }

    #[test]
    fn bad_input_is_an_error() {
        let bad: &[&[u8]] = &[
            b"\x80\x03}q\x00X\x05\x00\x00\x00a", // truncated
            b"\x80\x03K\x01.",                   // not a dict
            b"\x80\x03cos\nsystem\n.",           // GLOBAL: refused
            b"\x80\x03}(K\x01u.",                // odd items
            b"\x80\x03u.",                       // no mark
            b"\x80\x03h\x05.",                   // memo missing
        ];
        for b in bad {
            assert!(ext_from_pickle(b).is_err(), "{b:?}");
        }
        assert!(ext_to_pickle(b"\x01").is_err()); // not a map
        assert!(ext_to_pickle(b"\xc1").is_err()); // not msgpack
    }
}
