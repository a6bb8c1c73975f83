//! The persistent references inside a ZODB data record: our
//! `ZODB.serialize.referencesf`.
//!
//! A ZODB record is two pickles back to back: the class metadata, then the
//! object state. References to other persistent objects are *persistent
//! ids* (`BINPERSID`, or `PERSID` in protocol 0) whose argument is built on
//! the pickle stack. Pack's garbage collection ([`super::gc`]) follows
//! exactly the references `referencesf` returns, so this module copies its
//! rules (ZODB 6, `serialize.py`):
//!
//! | persistent id | meaning | returned |
//! | --- | --- | --- |
//! | `(oid, class)` | ordinary reference with class hint | `oid` |
//! | `oid` (bytes or str) | ordinary reference without class | `oid` |
//! | `['w', (oid[, db])]` | weak reference | nothing |
//! | `['m', (db, oid, class)]`, `['n', (db, oid)]` | cross-database | nothing |
//!
//! Like `referencesf`, the scanner runs a "no-load" pickle machine: nothing
//! is constructed, every object built by `GLOBAL`, `REDUCE`, `NEWOBJ`, ... is
//! an opaque value, and only the values a persistent id is made of (bytes,
//! strings, tuples, lists) are tracked. The memo is shared by the two pickles
//! (ZODB pickles both with one pickler, so the state pickle may `GET` the
//! class stored by the first). Bytes after the second `STOP` are ignored,
//! as ZODB does.
//!
//! Protocols 0–5 are understood (zodbpickle's `noload` itself stops at 3).
//! Oids come back in the order found, duplicates kept (like `referencesf`).
//!
//! Divergences, all on input `referencesf` rejects: a Python 2 `str` oid
//! (`SHORT_BINSTRING`/`BINSTRING`/`STRING`) is taken as its bytes even when
//! some are ≥ 0x80 (ZODB on Python 3 raises `UnicodeDecodeError`; ZODB on
//! Python 2 returned those bytes); numeric literals of protocol 0 are not
//! parsed. An oid that is not 8 bytes long is an error here (FileStorage's
//! pack would fail on it with a `KeyError`). Every error names the byte
//! offset of the opcode at fault; nothing panics.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use super::Oid;

/// Why a record could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefError {
    /// Offset in the record of the opcode (or argument) at fault.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad pickle at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for RefError {}

/// The persistent references (oids) of a ZODB data record, in the order
/// found, duplicates kept: what `ZODB.serialize.referencesf` returns.
pub fn references(record: &[u8]) -> Result<Vec<Oid>, RefError> {
    let mut out = Vec::new();
    references_into(record, &mut out)?;
    Ok(out)
}

/// [`references`], appending to `out` (which is left as it was on error).
pub fn references_into(record: &[u8], out: &mut Vec<Oid>) -> Result<(), RefError> {
    let mut vm = Vm::new(record);
    let mut pids: Vec<(usize, Value)> = Vec::new();
    // Class metadata, then state; anything after is ignored (as ZODB does).
    vm.run(&mut pids)?;
    vm.run(&mut pids)?;
    let before = out.len();
    for (offset, pid) in &pids {
        match reference_oid(record, pid) {
            Ok(Some(oid)) => out.push(oid),
            Ok(None) => {}
            Err(message) => {
                out.truncate(before);
                return Err(RefError {
                    offset: *offset,
                    message,
                });
            }
        }
    }
    Ok(())
}

/// What a persistent id refers to: `Some(oid)` for an ordinary reference,
/// `None` for weak and cross-database ones (lists), as `referencesf` does.
fn reference_oid(record: &[u8], pid: &Value) -> Result<Option<Oid>, String> {
    let oid = match pid {
        Value::List => return Ok(None),
        Value::Tuple(items) => match items.first() {
            Some(first) => first,
            None => return Err("persistent id is an empty tuple".to_string()),
        },
        other => other,
    };
    let bytes: &[u8] = match oid {
        Value::Bytes(s, e) | Value::Str(s, e) => record.get(*s..*e).unwrap_or_default(),
        Value::Owned(b) => b,
        Value::NonAscii => return Err("persistent id oid is a non-ASCII string".to_string()),
        _ => {
            return Err(format!(
                "persistent id is not an oid, (oid, class) tuple or list: {}",
                oid.kind()
            ))
        }
    };
    if matches!(oid, Value::Str(..)) && !bytes.is_ascii() {
        return Err("persistent id oid is a non-ASCII string".to_string());
    }
    Oid::from_slice(bytes)
        .map(Some)
        .ok_or_else(|| format!("persistent id oid has {} bytes, not 8", bytes.len()))
}

/// A value on the no-load stack. Only what persistent ids are made of is
/// kept; everything else is `Other`.
#[derive(Clone, Debug)]
enum Value {
    /// Bytes (or a Python 2 str) at `record[start..end]`.
    Bytes(usize, usize),
    /// Bytes decoded from a protocol-0 `STRING`.
    Owned(Rc<[u8]>),
    /// A unicode string at `record[start..end]` (UTF-8).
    Str(usize, usize),
    /// A unicode string known to hold non-ASCII characters.
    NonAscii,
    Tuple(Rc<[Value]>),
    /// A list; its items never matter (`referencesf` skips list ids).
    List,
    /// Anything else: None, numbers, dicts, objects, classes.
    Other,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(..) | Value::Owned(_) => "bytes",
            Value::Str(..) | Value::NonAscii => "str",
            Value::Tuple(_) => "tuple",
            Value::List => "list",
            Value::Other => "another object",
        }
    }
}

/// The no-load pickle machine over one record. The memo survives between
/// the two pickles; stack and marks are reset by each run.
struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Offset of the opcode being executed (for errors).
    op_at: usize,
}

type R<T> = Result<T, RefError>;

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Vm<'a> {
        Vm {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            op_at: 0,
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> R<T> {
        Err(RefError {
            offset: self.op_at,
            message: message.into(),
        })
    }

    /// Take `n` bytes; returns their start offset.
    fn take(&mut self, n: usize) -> R<usize> {
        let start = self.pos;
        match start.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                self.pos = end;
                Ok(start)
            }
            _ => self.err(format!(
                "truncated: the argument needs {n} bytes, {} left",
                self.data.len().saturating_sub(start)
            )),
        }
    }

    fn byte(&mut self) -> R<u8> {
        let at = self.take(1)?;
        Ok(self.data[at])
    }

    fn le(&mut self, n: usize) -> R<u64> {
        let at = self.take(n)?;
        let mut v: u64 = 0;
        for (i, b) in self.data[at..at + n].iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        Ok(v)
    }

    /// A signed 32-bit little-endian count that must not be negative.
    fn count_i32(&mut self, what: &str) -> R<usize> {
        let v = self.le(4)? as u32 as i32;
        match usize::try_from(v) {
            Ok(n) => Ok(n),
            Err(_) => self.err(format!("{what} has a negative length {v}")),
        }
    }

    fn count_u64(&mut self) -> R<usize> {
        let v = self.le(8)?;
        match usize::try_from(v) {
            Ok(n) => Ok(n),
            Err(_) => self.err(format!("length {v} is too large")),
        }
    }

    /// A newline-terminated argument; returns (start, end) without the newline.
    fn line(&mut self) -> R<(usize, usize)> {
        let start = self.pos;
        match self.data[start..].iter().position(|b| *b == b'\n') {
            Some(n) => {
                self.pos = start + n + 1;
                Ok((start, start + n))
            }
            None => self.err("truncated: the argument line has no newline"),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return self.err("stack underflow");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> R<Value> {
        match self.stack.last() {
            Some(v) => Ok(v.clone()),
            None => self.err("stack underflow: nothing to memoize or copy"),
        }
    }

    /// Pop the innermost mark; returns the values pushed since it.
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        match self.marks.pop() {
            Some(m) if m <= self.stack.len() => Ok(self.stack.split_off(m)),
            _ => self.err("no mark on the stack"),
        }
    }

    /// Pop the innermost mark and drop the values pushed since it; returns
    /// how many there were.
    fn drop_to_mark(&mut self) -> R<usize> {
        match self.marks.pop() {
            Some(m) if m <= self.stack.len() => {
                let n = self.stack.len() - m;
                self.stack.truncate(m);
                Ok(n)
            }
            _ => self.err("no mark on the stack"),
        }
    }

    /// Pop the innermost mark and drop what it covers, checking that the
    /// mark has an object below it (the list, dict or set being extended).
    fn pop_mark_onto(&mut self) -> R<()> {
        self.drop_to_mark()?;
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return self.err("stack underflow: no object below the mark");
        }
        Ok(())
    }

    fn tuple(&mut self, n: usize) -> R<()> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return self.err("stack underflow");
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push(Value::Tuple(items.into()));
        Ok(())
    }

    /// Drop `n` values then push an opaque result (REDUCE, NEWOBJ, ...).
    fn replace(&mut self, n: usize) -> R<()> {
        for _ in 0..n {
            self.pop()?;
        }
        self.push(Value::Other);
        Ok(())
    }

    fn memo_put(&mut self, idx: u64) -> R<()> {
        let v = self.top()?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> R<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
            None => self.err(format!("memo key {idx} was never stored")),
        }
    }

    /// A decimal memo index on a line (GET / PUT).
    fn line_index(&mut self) -> R<u64> {
        let (s, e) = self.line()?;
        let text = std::str::from_utf8(&self.data[s..e]).unwrap_or("");
        match text.trim().parse::<u64>() {
            Ok(v) => Ok(v),
            Err(_) => self.err("memo index is not a decimal number"),
        }
    }

    fn persistent_id(&mut self, pid: Value, pids: &mut Vec<(usize, Value)>) {
        pids.push((self.op_at, pid));
        // persistent_load (list.append) returns None.
        self.push(Value::Other);
    }

    /// Run one pickle up to and including its STOP.
    fn run(&mut self, pids: &mut Vec<(usize, Value)>) -> R<()> {
        self.stack.clear();
        self.marks.clear();
        loop {
            self.op_at = self.pos;
            if self.pos >= self.data.len() {
                return self.err("truncated: end of record before STOP");
            }
            let op = self.byte()?;
            match op {
                b'.' => {
                    // STOP
                    self.pop()?;
                    return Ok(());
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    // POP: a value, or the mark just pushed.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.drop_to_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.push(v);
                }
                // Numbers and other values whose content never matters.
                b'N' | 0x88 | 0x89 => self.push(Value::Other),
                b'I' | b'L' | b'F' => {
                    self.line()?;
                    self.push(Value::Other);
                }
                b'J' => {
                    self.take(4)?;
                    self.push(Value::Other);
                }
                b'K' => {
                    self.take(1)?;
                    self.push(Value::Other);
                }
                b'M' => {
                    self.take(2)?;
                    self.push(Value::Other);
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Other);
                }
                0x8a => {
                    let n = usize::from(self.byte()?);
                    self.take(n)?;
                    self.push(Value::Other);
                }
                0x8b => {
                    let n = self.count_i32("LONG4")?;
                    self.take(n)?;
                    self.push(Value::Other);
                }
                // Byte strings (Python 2 str, Python 3 bytes).
                b'S' => {
                    let (s, e) = self.line()?;
                    match decode_string_literal(&self.data[s..e]) {
                        Some(b) => self.push(Value::Owned(b.into())),
                        None => return self.err("STRING argument is not a quoted string"),
                    }
                }
                b'T' => {
                    let n = self.count_i32("BINSTRING")?;
                    let s = self.take(n)?;
                    self.push(Value::Bytes(s, s + n));
                }
                b'U' | b'C' => {
                    let n = usize::from(self.byte()?);
                    let s = self.take(n)?;
                    self.push(Value::Bytes(s, s + n));
                }
                b'B' => {
                    let n = self.le(4)? as usize;
                    let s = self.take(n)?;
                    self.push(Value::Bytes(s, s + n));
                }
                0x8e => {
                    let n = self.count_u64()?;
                    let s = self.take(n)?;
                    self.push(Value::Bytes(s, s + n));
                }
                0x96 => {
                    // BYTEARRAY8: not bytes for referencesf.
                    let n = self.count_u64()?;
                    self.take(n)?;
                    self.push(Value::Other);
                }
                // Unicode strings.
                b'V' => {
                    let (s, e) = self.line()?;
                    let raw = &self.data[s..e];
                    // raw-unicode-escape: non-ASCII is either a raw byte
                    // ≥ 0x80 or a \u / \U escape.
                    let plain =
                        raw.is_ascii() && !raw.windows(2).any(|w| w == b"\\u" || w == b"\\U");
                    self.push(if plain {
                        Value::Str(s, e)
                    } else {
                        Value::NonAscii
                    });
                }
                b'X' => {
                    let n = self.le(4)? as usize;
                    let s = self.take(n)?;
                    self.push(Value::Str(s, s + n));
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    let s = self.take(n)?;
                    self.push(Value::Str(s, s + n));
                }
                0x8d => {
                    let n = self.count_u64()?;
                    let s = self.take(n)?;
                    self.push(Value::Str(s, s + n));
                }
                // Containers.
                b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
                0x85 => self.tuple(1)?,
                0x86 => self.tuple(2)?,
                0x87 => self.tuple(3)?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()));
                }
                b']' => self.push(Value::List),
                b'l' => {
                    self.drop_to_mark()?;
                    self.push(Value::List);
                }
                b'}' | 0x8f => self.push(Value::Other),
                b'd' | 0x91 => {
                    // DICT, FROZENSET
                    self.drop_to_mark()?;
                    self.push(Value::Other);
                }
                b'a' => {
                    // APPEND: the list stays.
                    self.pop()?;
                    if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
                        return self.err("stack underflow: APPEND without a list");
                    }
                }
                b's' => {
                    // SETITEM: the dict stays.
                    self.pop()?;
                    self.pop()?;
                    if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
                        return self.err("stack underflow: SETITEM without a dict");
                    }
                }
                b'e' | b'u' | 0x90 => self.pop_mark_onto()?, // APPENDS, SETITEMS, ADDITEMS
                // Classes and objects: opaque.
                b'c' => {
                    self.line()?;
                    self.line()?;
                    self.push(Value::Other);
                }
                0x93 => self.replace(2)?,        // STACK_GLOBAL
                b'R' | 0x81 => self.replace(2)?, // REDUCE, NEWOBJ
                0x92 => self.replace(3)?,        // NEWOBJ_EX
                b'b' => {
                    // BUILD: the object stays.
                    self.pop()?;
                    if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
                        return self.err("stack underflow: BUILD without an object");
                    }
                }
                b'o' => {
                    if self.drop_to_mark()? == 0 {
                        return self.err("OBJ without a class");
                    }
                    self.push(Value::Other);
                }
                b'i' => {
                    self.line()?;
                    self.line()?;
                    self.drop_to_mark()?;
                    self.push(Value::Other);
                }
                0x82 => {
                    self.take(1)?;
                    self.push(Value::Other);
                }
                0x83 => {
                    self.take(2)?;
                    self.push(Value::Other);
                }
                0x84 => {
                    self.take(4)?;
                    self.push(Value::Other);
                }
                // Memo.
                b'p' => {
                    let idx = self.line_index()?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = u64::from(self.byte()?);
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = self.le(4)?;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let idx = self.line_index()?;
                    self.memo_get(idx)?;
                }
                b'h' => {
                    let idx = u64::from(self.byte()?);
                    self.memo_get(idx)?;
                }
                b'j' => {
                    let idx = self.le(4)?;
                    self.memo_get(idx)?;
                }
                // Persistent ids.
                b'P' => {
                    let (s, e) = self.line()?;
                    if !self.data[s..e].is_ascii() {
                        return self.err("PERSID argument is not ASCII");
                    }
                    self.persistent_id(Value::Str(s, e), pids);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent_id(pid, pids);
                }
                // Framing and protocol.
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                0x97 => self.push(Value::Other), // NEXT_BUFFER
                0x98 => {
                    self.top()?; // READONLY_BUFFER
                }
                other => return self.err(format!("unknown opcode 0x{other:02x}")),
            }
        }
    }
}

/// The bytes of a protocol-0 `STRING` argument: a Python `repr` of a str,
/// quoted with `'` or `"`, with backslash escapes.
fn decode_string_literal(arg: &[u8]) -> Option<Vec<u8>> {
    let (&q, rest) = arg.split_first()?;
    let (&last, body) = rest.split_last()?;
    if !(q == b'\'' || q == b'"') || last != q {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&c) = body.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'\\' | b'\'' | b'"' => out.push(c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\n' => {}
            b'x' => {
                let hex = body.get(i..i + 2)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut k = 0;
                while k < 2 {
                    match body.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                            k += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// Is `record` the record of a `ZODB.blob.Blob` (ZODB's `is_blob_record`:
/// its class pickle is exactly that class)? Blob records have a blob file
/// beside them; copies and undo must bring it along (pure).
pub fn is_blob_record(record: &[u8]) -> bool {
    const GLOBAL: &[u8] = b"cZODB.blob\nBlob\n";
    let mut rest = match record {
        [0x80, _, rest @ ..] => rest,
        rest => rest,
    };
    let Some(after) = rest.strip_prefix(GLOBAL) else {
        return false;
    };
    rest = after;
    // An optional memo store, then the end of the class pickle.
    rest = match rest {
        [b'q', _, r @ ..] => r,
        [b'r', _, _, _, _, r @ ..] => r,
        [0x94, r @ ..] => r,
        [b'p', r @ ..] => match r.iter().position(|&b| b == b'\n') {
            Some(n) => &r[n + 1..],
            None => return false,
        },
        r => r,
    };
    rest.first() == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn oids(v: &[u64]) -> Vec<Oid> {
        v.iter().map(|n| Oid(*n)).collect()
    }

    /// Records written by ZODB 6.4 (MappingStorage, multi-database) and the
    /// oids `ZODB.serialize.referencesf` returned for them.
    const ZODB_RECORDS: &[(&str, &str, &[u64])] = &[
        (
            "root PersistentMapping",
            "80036370657273697374656e742e6d617070696e670a50657273697374656e744d617070696e670a71002e80037d710158040000006461746171027d7103285801000000617104430800000000000000017105635f5f6d61696e5f5f0a500a7106867107515801000000627108430800000000000000027109680686710a51580400000074726565710b43080000000000000003710c634254726565732e4f4f42547265650a4f4f42547265650a710d86710e51580100000077710f43080000000000000004711068068671115158010000006d71124308000000000000000571136806867114515802000000706c71154308000000000000000671166370657273697374656e742e6c6973740a50657273697374656e744c6973740a7117867118515803000000626967711943080000000000000007711a680686711b5175732e",
            &[1, 2, 3, 4, 5, 6, 7],
        ),
        (
            "leaf without references",
            "8003635f5f6d61696e5f5f0a500a71002e80037d710158040000006e616d6571025801000000617103732e",
            &[],
        ),
        (
            "list with repeated references (memo across pickles)",
            "8003635f5f6d61696e5f5f0a500a71002e80037d710128580400000070656572710243080000000000000001710368008671045158050000006974656d7371055d710628680368008671075168036800867108514b0358010000007871094740040000000000004e8865752e",
            &[1, 1, 1],
        ),
        (
            "OOBTree bucket state",
            "8003634254726565732e4f4f42547265650a4f4f42547265650a71002e80032858020000006b317101430800000000000000017102635f5f6d61696e5f5f0a500a71038671045158020000006b32710543080000000000000002710668038671075174710885710985710a85710b2e",
            &[1, 2],
        ),
        (
            "weak reference skipped",
            "8003635f5f6d61696e5f5f0a500a71002e80037d71012858040000007765616b71025d7103285801000000777104430800000000000000017105857106655158060000007374726f6e677107430800000000000000027108680086710951752e",
            &[2],
        ),
        (
            "cross-database reference skipped",
            "8003635f5f6d61696e5f5f0a500a71002e80037d710128580500000063726f737371025d71032858010000006d710458050000006f7468657271054308000000000000000171066800877107655158050000006c6f63616c7108430800000000000000017109680086710a51752e",
            &[1],
        ),
        (
            "PersistentList with a dict",
            "80036370657273697374656e742e6c6973740a50657273697374656e744c6973740a71002e80037d710158040000006461746171025d710328430800000000000000017104635f5f6d61696e5f5f0a500a7105867106514308000000000000000271076805867108517d7109580100000064710a43080000000000000004710b680586710c517365732e",
            &[1, 2, 4],
        ),
        (
            "nested dict and tuples",
            "8003635f5f6d61696e5f5f0a500a71002e80037d71012858040000007265667371027d7103284b004308000000000000000871046800867105514b014308000000000000000971066800867107514b024308000000000000000a710868008671095175580100000074710a43080000000000000001710b680086710c5143080000000000000002710d680086710e5143080000000000000005710f680086711051867111867112752e",
            &[8, 9, 10, 1, 2, 5],
        ),
        (
            "every reference shape, protocol 3 (zodbpickle)",
            "8003635f5f6d61696e5f5f0a4b6c6173730a71004e8671012e80037d71022858010000006171034308000000000000000171045158010000006271055d7106284308000000000000000271076800867108515d710928580100000077710a43080000000000000003710b85710c65514b074d2c014a701101008a090000000000000000404affffffff473ff80000000000005802000000c3a9710d43027879710e65580100000063710f285d711028680a43080000000000000004711158050000006f74686572711286711365515d71142858010000006d71156812430800000000000000057116680087711765515d71182858010000006e7119681243080000000000000006711a86711b655143080000000000000009711c680086711d5188894e2974711e752e",
            &[1, 2, 9],
        ),
        (
            "Python 2 ZODB, protocol 1, str oids",
            "286370657273697374656e742e6d617070696e670a50657273697374656e744d617070696e670a71014e742e7d710255046461746171037d710428550161710528550800000000000000017106636d6f640a4b0a7107745155016271085508000000000000000251550163710928550800000000000000036807745175732e",
            &[1, 2, 3],
        ),
        (
            "Python 2 ZODB, protocol 2, weak reference",
            "8002636d6f640a4b0a71014e862e80027d7102285501787103550800000000000000046801865155017971045d710528550177710655080000000000000005856551752e",
            &[4],
        ),
        (
            "protocol 0 with PERSID",
            "28636d6f640a4b0a70300a4e742e286470310a532761270a70320a5000000000000000070a70330a73532762270a70340a4931320a73532763270a70350a4c354c0a73532764270a70360a46312e350a73532765270a70370a56780a70380a732e",
            &[7],
        ),
        // Stock pickle, protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE,
        // STACK_GLOBAL): zodbpickle's noload refuses it; the same state as
        // the protocol 3 case above.
        (
            "every reference shape, protocol 4 (stock pickle)",
            "80049519000000000000008c085f5f6d61696e5f5f948c054b6c6173739493944e86942e800495d9000000000000007d94288c0161944308000000000000000194518c0162945d9428430800000000000000029468028694515d94288c0177944308000000000000000394859465514b074d2c014a701101008a090000000000000000404affffffff473ff80000000000008c02c3a9944302787994658c016394285d9428680c43080000000000000004948c056f7468657294869465515d94288c016d94681443080000000000000005946802879465515d94288c016e9468144308000000000000000694869465514308000000000000000994680286945188894e297494752e",
            &[1, 2, 9],
        ),
    ];

    #[test]
    fn zodb_records_table() {
        for (name, hex, want) in ZODB_RECORDS {
            let rec = unhex(hex);
            assert_eq!(references(&rec), Ok(oids(want)), "{name}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for (name, hex, _) in ZODB_RECORDS {
            let rec = unhex(hex);
            for cut in 0..rec.len() {
                let r = references(&rec[..cut]);
                assert!(r.is_err(), "{name} cut at {cut}: {r:?}");
                if let Err(e) = r {
                    assert!(e.offset <= cut, "{name} cut at {cut}: {e}");
                }
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Flip every byte of every record to a few values: an error or some
        // result, never a panic.
        for (_, hex, _) in ZODB_RECORDS {
            let rec = unhex(hex);
            for i in 0..rec.len() {
                for v in [0x00u8, 0x28, 0x2e, 0x51, 0x68, 0x71, 0x80, 0xff] {
                    let mut r = rec.clone();
                    r[i] = v;
                    let _ = references(&r);
                }
            }
        }
    }

    /// Two pickles: an empty class pickle, then `state`.
    fn rec(state: &[u8]) -> Vec<u8> {
        let mut v = b"\x80\x03N.".to_vec();
        v.extend_from_slice(state);
        v
    }

    const OID1: &[u8] = b"C\x08\x00\x00\x00\x00\x00\x00\x00\x01";

    #[test]
    fn reference_shapes_table() {
        let cat = |parts: &[&[u8]]| parts.concat();
        // (name, state pickle, expected oids or the error offset in the record;
        // the state pickle starts at 4)
        type Case = (&'static str, Vec<u8>, Result<Vec<u64>, usize>);
        let cases: Vec<Case> = vec![
            ("bare oid", cat(&[OID1, b"Q."]), Ok(vec![1])),
            ("tuple oid, class", cat(&[OID1, b"N\x86Q."]), Ok(vec![1])),
            ("one-tuple", cat(&[OID1, b"\x85Q."]), Ok(vec![1])),
            (
                "weak list",
                cat(&[b"](X\x01\x00\x00\x00w", OID1, b"\x85eQ."]),
                Ok(vec![]),
            ),
            (
                "unicode ascii oid",
                cat(&[b"\x8c\x08\x00\x00\x00\x00\x00\x00\x00\x02Q."]),
                Ok(vec![2]),
            ),
            (
                "unicode non-ascii oid",
                cat(&[b"\x8c\x08\x00\x00\x00\x00\x00\x00\xc3\xa9Q."]),
                Err(4 + 10),
            ),
            ("empty tuple", b")Q.".to_vec(), Err(4 + 1)),
            ("None pid", b"NQ.".to_vec(), Err(4 + 1)),
            ("int pid", b"K\x05Q.".to_vec(), Err(4 + 2)),
            ("short oid", b"C\x02abQ.".to_vec(), Err(4 + 4)),
            ("tuple of tuple", cat(&[OID1, b"\x85\x85Q."]), Err(4 + 12)),
            (
                "pid memoized then got",
                cat(&[OID1, b"q\x05Qh\x05Q\x86."]),
                Ok(vec![1, 1]),
            ),
            ("dup", cat(&[OID1, b"2Q0Q."]), Ok(vec![1, 1])),
            (
                "pop mark",
                cat(&[b"(K\x01K\x021", OID1, b"Q."]),
                Ok(vec![1]),
            ),
            (
                "pop of an empty mark",
                cat(&[b"(0", OID1, b"Q."]),
                Ok(vec![1]),
            ),
            ("binpersid on empty stack", b"Q.".to_vec(), Err(4)),
            ("binpersid over a mark", b"(Q.".to_vec(), Err(4 + 1)),
            ("unknown opcode", b"\xffN.".to_vec(), Err(4)),
            ("protocol 6", b"\x80\x06N.".to_vec(), Err(4)),
            ("get of a missing memo", b"h\x09.".to_vec(), Err(4)),
            ("negative BINSTRING", b"T\xff\xff\xff\xff.".to_vec(), Err(4)),
            ("only one pickle", Vec::new(), Err(4)),
            (
                "trailing bytes ignored",
                cat(&[OID1, b"Q.garbage"]),
                Ok(vec![1]),
            ),
            (
                "STRING escapes",
                b"S'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x03'\nQ.".to_vec(),
                Ok(vec![3]),
            ),
            (
                "STRING octal",
                b"S'\\000\\000\\000\\000\\000\\000\\000\\011'\nQ.".to_vec(),
                Ok(vec![9]),
            ),
            ("STRING unquoted", b"Sabc\nQ.".to_vec(), Err(4)),
            (
                "BINSTRING high bytes",
                b"U\x08\x00\x00\x00\x00\x00\x00\x00\x80Q.".to_vec(),
                Ok(vec![0x80]),
            ),
            ("UNICODE escape", b"V\\u00e9\nQ.".to_vec(), Err(4 + 8)),
            ("APPEND", cat(&[b"]", OID1, b"Qa."]), Ok(vec![1])),
            ("APPEND on empty", b"K\x01a.".to_vec(), Err(4 + 2)),
            ("SETITEMS", cat(&[b"}(K\x01", OID1, b"Qu."]), Ok(vec![1])),
            (
                "SETITEMS without dict",
                b"(K\x01K\x02u.".to_vec(),
                Err(4 + 5),
            ),
            (
                "REDUCE, BUILD",
                cat(&[b"cm\nf\n)R", OID1, b"Qb."]),
                Ok(vec![1]),
            ),
            (
                "NEWOBJ_EX",
                cat(&[b"N)}\x92", OID1, b"Q\x86."]),
                Ok(vec![1]),
            ),
            (
                "OBJ, INST",
                cat(&[b"(N", OID1, b"Qo(im\nk\n."]),
                Ok(vec![1]),
            ),
            (
                "EXT2 and LONG4",
                b"\x83\x01\x00\x8b\x01\x00\x00\x00\xff\x86.".to_vec(),
                Ok(vec![]),
            ),
            (
                "BINBYTES8 oid",
                b"\x8e\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04Q.".to_vec(),
                Ok(vec![4]),
            ),
            (
                "BINBYTES8 huge",
                b"\x8e\xff\xff\xff\xff\xff\xff\xff\xffQ.".to_vec(),
                Err(4),
            ),
            ("GET/PUT text", cat(&[OID1, b"p12\n0g12\nQ."]), Ok(vec![1])),
            ("PUT bad index", cat(&[OID1, b"px\nQ."]), Err(4 + 10)),
            ("PERSID non-ascii", b"P\xff\n.".to_vec(), Err(4)),
            ("STOP on empty stack", b".".to_vec(), Err(4)),
        ];
        for (name, state, want) in cases {
            let got = references(&rec(&state));
            match want {
                Ok(v) => assert_eq!(got, Ok(oids(&v)), "{name}"),
                Err(at) => match got {
                    Err(e) => assert_eq!(e.offset, at, "{name}: {e}"),
                    Ok(v) => panic!("{name}: expected an error at {at}, got {v:?}"),
                },
            }
        }
    }

    #[test]
    fn references_into_appends_and_restores_on_error() {
        let mut out = vec![Oid(42)];
        references_into(&rec(&[OID1, b"Q."].concat()), &mut out).expect("scan");
        assert_eq!(out, vec![Oid(42), Oid(1)]);
        let bad = rec(&[OID1, b"QC\x01aQ."].concat());
        let e = references_into(&bad, &mut out).expect_err("short oid");
        assert!(e.to_string().contains("not 8"), "{e}");
        assert_eq!(out, vec![Oid(42), Oid(1)]);
    }

    #[test]
    fn decode_string_literal_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"'abc'", Some(b"abc")),
            (b"\"a'b\"", Some(b"a'b")),
            (b"'a\\'b'", Some(b"a'b")),
            (b"'\\n\\t\\r\\\\'", Some(b"\n\t\r\\")),
            (b"'\\xff\\x0'", None),
            (b"'\\q'", Some(b"\\q")),
            (b"'abc", None),
            (b"'", None),
            (b"", None),
            (b"abc", None),
        ];
        for (arg, want) in cases {
            assert_eq!(
                decode_string_literal(arg).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(arg)
            );
        }
    }

    #[test]
    fn blob_records() {
        let table: [(&[u8], bool); 9] = [
            (b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.", true),
            (b"\x80\x02cZODB.blob\nBlob\nq\x00.", true),
            (b"cZODB.blob\nBlob\nq\x00.", true),
            (b"cZODB.blob\nBlob\np0\n.", true),
            (b"\x80\x03cZODB.blob\nBlob\n.", true),
            // A subclass, or the (class, args) form: not ZODB's Blob.
            (b"\x80\x03cmy.app\nBlob\nq\x00.", false),
            (b"\x80\x03cZODB.blob\nBlobFile\nq\x00.", false),
            (b"\x80\x03cZODB.blob\nBlob\nq\x00N\x86q\x01.", false),
            (b"", false),
        ];
        for (record, want) in table {
            assert_eq!(is_blob_record(record), want, "{record:?}");
        }
    }
}
