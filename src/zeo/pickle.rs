//! ZEO 5 messages in the pickle ("Z5") flavour, the one Python `runzeo`
//! speaks unless its `<zeo>` section says `msgpack true`.
//!
//! A message is the pickle (protocol 3, `fast` mode: no memo) of the tuple
//! `(msgid, flags, method, args)`, exactly what `ZEO.asyncio.marshal`'s
//! pickle encoder writes. Calls carry `flags` as a bool (`False`
//! synchronous, `True` one-way), replies as an int (0, or 2 for an error),
//! and an error reply's result is `(class_name, exc.__dict__ or exc.args)`
//! (`reduce_exception`), the same shape as in msgpack. So both flavours
//! decode into the same [`Message`] over [`rmpv::Value`] and the client
//! above does not know which one its server speaks: a tuple or list is an
//! `Array`, a dict a `Map`, `bytes` `Binary`, `str` `String`.
//!
//! [`encode`] writes what a Python ZEO client writes, byte for byte.
//! [`decode`] is a restricted unpickler: it accepts the opcodes such
//! messages use and a whitelist of globals (ZODB/ZEO exception classes,
//! rebuilt through `ZODB.POSException._recon` or `REDUCE` into the
//! `[class_name, state]` shape of `reduce_exception`; `set`/`frozenset`).
//! Anything else — an unknown global, memo opcodes, a truncated pickle, a
//! declared length past the end, nesting deeper than [`MAX_DEPTH`], more
//! than [`MAX_VALUES`] values — is a [`DecodeError`], never a panic or an
//! allocation larger than the input justifies.

use crate::storage::file::pickle::{write_int, write_scalar, write_str};
use crate::zeo::message::{DecodeError, Message, REPLY};
use rmpv::Value;

/// The deepest nesting of containers accepted (ZEO replies nest about 4).
pub const MAX_DEPTH: usize = 32;
/// The most values one message may hold (each costs ~32 bytes in memory).
pub const MAX_VALUES: usize = 4 << 20;
/// Longest module or name of a `GLOBAL`.
const MAX_GLOBAL: usize = 128;
/// Marker types for globals while unpickling (never left in a result).
const EXT_CLASS: i8 = 101;
const EXT_RECON: i8 = 102;
const EXT_SET: i8 = 103;

// ---------------------------------------------------------------------------
// Encoding: what ZEO's client pickler (protocol 3, fast) writes.
// ---------------------------------------------------------------------------

fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Lengths above 4 GiB cannot be framed anyway (the frame writer
    // refuses such a message), so a too-long string's error is dropped.
    if write_scalar(out, v).is_some() {
        return;
    }
    match v {
        Value::Array(items) => write_tuple(out, items.iter()),
        Value::Map(entries) => {
            out.push(b'}');
            // Python's `_batch_setitems`: batches of 1000, one alone as SETITEM.
            for batch in entries.chunks(1000) {
                if let [(k, v)] = batch {
                    write_value(out, k);
                    write_value(out, v);
                    out.push(b's');
                } else {
                    out.push(b'(');
                    for (k, v) in batch {
                        write_value(out, k);
                        write_value(out, v);
                    }
                    out.push(b'u');
                }
            }
        }
        // Never built by the client; pickled as None rather than refused.
        Value::Ext(..) => out.push(b'N'),
        // Written by write_scalar above.
        _ => {}
    }
}

/// A tuple as Python's `save_tuple` writes it (protocol ≥ 2, fast mode).
fn write_tuple<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a Value>) {
    let n = items.len();
    if n == 0 {
        out.push(b')');
        return;
    }
    if n > 3 {
        out.push(b'(');
    }
    for i in items {
        write_value(out, i);
    }
    out.push(tuple_end(n));
}

/// The opcode that closes a tuple of `n` items (`n` > 0).
fn tuple_end(n: usize) -> u8 {
    match n {
        1 => 0x85,
        2 => 0x86,
        3 => 0x87,
        _ => b't',
    }
}

/// The opening of `(msgid, flags, method, ...`: Python sends a call's flags
/// as a bool, a reply's (and the heartbeat's) as an int.
fn write_head(out: &mut Vec<u8>, msgid: &Value, flags: u8, method: &str) {
    out.extend_from_slice(&[0x80, 3, b'(']);
    write_value(out, msgid);
    if method != REPLY && flags <= 1 {
        out.push(if flags == 1 { 0x88 } else { 0x89 });
    } else {
        write_int(out, i128::from(flags));
    }
    let _ = write_str(out, method.as_bytes());
}

/// One message, as `ZEO.asyncio.marshal.encoder(b"Z5")` writes it; a
/// non-array `args` is sent as is (the heartbeat's `None`).
pub fn encode(msgid: &Value, flags: u8, method: &str, args: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    write_head(&mut out, msgid, flags, method);
    match args {
        Value::Array(a) => write_tuple(&mut out, a.iter()),
        other => write_value(&mut out, other),
    }
    out.extend_from_slice(b"t.");
    out
}

/// The bytes around the data of a one-way call `method(*before, data,
/// *after)` whose data is written separately from the caller's buffer:
/// (prefix up to and including the data's opcode and length, suffix).
/// `data` `None` is `None` in the middle.
pub fn oneway_parts(
    method: &str,
    before: &[Value],
    data: Option<usize>,
    after: &[Value],
) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = Vec::with_capacity(64);
    write_head(&mut prefix, &Value::from(0), 1, method);
    let n = before.len() + 1 + after.len();
    if n > 3 {
        prefix.push(b'(');
    }
    for v in before {
        write_value(&mut prefix, v);
    }
    match data {
        None => prefix.push(b'N'),
        Some(len) => match u8::try_from(len) {
            Ok(l) => prefix.extend_from_slice(&[b'C', l]),
            Err(_) => {
                prefix.push(b'B');
                prefix.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
            }
        },
    }
    let mut suffix = Vec::with_capacity(16);
    for v in after {
        write_value(&mut suffix, v);
    }
    suffix.push(tuple_end(n));
    suffix.extend_from_slice(b"t.");
    (prefix, suffix)
}

// ---------------------------------------------------------------------------
// Decoding: a restricted unpickler.
// ---------------------------------------------------------------------------

/// Exception classes a server may pickle as objects (inside an error's
/// state); their modules' other names are refused.
fn allowed_class(module: &str, name: &str) -> bool {
    const BUILTINS: &[&str] = &[
        "Exception",
        "ValueError",
        "KeyError",
        "TypeError",
        "IndexError",
        "RuntimeError",
        "AttributeError",
        "IOError",
        "OSError",
        "NotImplementedError",
        "AssertionError",
    ];
    let ident = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match module {
        "builtins" | "exceptions" => BUILTINS.contains(&name),
        "ZODB.POSException" | "ZEO.Exceptions" => {
            ident && (name.ends_with("Error") || name.ends_with("Errors") || name == "Unsupported")
        }
        _ => false,
    }
}

enum Item {
    Mark,
    /// A value and its nesting depth.
    V(Value, usize),
}

struct Unpickler<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    values: usize,
}

fn depth_of(items: &[(Value, usize)]) -> usize {
    items.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1
}

impl<'a> Unpickler<'a> {
    fn err(&self, at: usize, what: impl std::fmt::Display) -> DecodeError {
        DecodeError::Pickle(format!("{what} (at byte {at})"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let end = at
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or_else(|| {
                self.err(
                    at,
                    format!(
                        "truncated: {n} bytes declared, {} left",
                        self.input.len() - at
                    ),
                )
            })?;
        self.pos = end;
        Ok(&self.input[at..end])
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32le(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn line(&mut self, at: usize) -> Result<&'a str, DecodeError> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .take(MAX_GLOBAL + 1)
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.err(at, "GLOBAL name unterminated or too long"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err(at, "GLOBAL not ASCII"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, at: usize, v: Value, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err(at, format!("nested deeper than {MAX_DEPTH}")));
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.err(at, format!("more than {MAX_VALUES} values")));
        }
        self.stack.push(Item::V(v, depth));
        Ok(())
    }

    fn pop(&mut self, at: usize) -> Result<(Value, usize), DecodeError> {
        match self.stack.pop() {
            Some(Item::V(v, d)) => Ok((v, d)),
            Some(Item::Mark) => Err(self.err(at, "a mark where a value was expected")),
            None => Err(self.err(at, "stack underflow")),
        }
    }

    /// Everything above the topmost mark (which is removed).
    fn pop_mark(&mut self, at: usize) -> Result<Vec<(Value, usize)>, DecodeError> {
        let m = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| self.err(at, "no mark"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .filter_map(|i| match i {
                Item::V(v, d) => Some((v, d)),
                Item::Mark => None,
            })
            .collect())
    }

    /// Add items to the list or dict on top of the stack.
    fn extend_top(&mut self, at: usize, items: Vec<(Value, usize)>) -> Result<(), DecodeError> {
        let depth = depth_of(&items);
        if depth > MAX_DEPTH {
            return Err(self.err(at, format!("nested deeper than {MAX_DEPTH}")));
        }
        let bad = |s: &Self, w: &str| s.err(at, w.to_string());
        match self.stack.last_mut() {
            Some(Item::V(Value::Array(a), d)) => {
                *d = (*d).max(depth);
                a.extend(items.into_iter().map(|(v, _)| v));
                Ok(())
            }
            Some(Item::V(Value::Map(m), d)) => {
                if !items.len().is_multiple_of(2) {
                    return Err(bad(self, "odd number of dict items"));
                }
                *d = (*d).max(depth);
                let mut it = items.into_iter().map(|(v, _)| v);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    m.push((k, v));
                }
                Ok(())
            }
            _ => Err(bad(
                self,
                "APPEND/SETITEM on something that is not a list or dict",
            )),
        }
    }

    fn text(&mut self, at: usize, n: usize) -> Result<Value, DecodeError> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::from(s)),
            Err(_) => Err(self.err(at, "str is not UTF-8")),
        }
    }

    fn long(&self, at: usize, b: &[u8]) -> Result<Value, DecodeError> {
        if b.len() > 9 {
            return Err(self.err(at, "integer wider than 64 bits"));
        }
        crate::storage::file::pickle::le_int(b)
            .ok_or_else(|| self.err(at, "integer wider than 64 bits"))
    }

    /// `callable(*args)` for the whitelisted callables.
    fn reduce(&self, at: usize, f: Value, args: Value) -> Result<Value, DecodeError> {
        let Value::Array(mut args) = args else {
            return Err(self.err(at, "REDUCE arguments are not a tuple"));
        };
        match f {
            // _recon(class, state) → [class name, state]
            Value::Ext(EXT_RECON, _) => match (args.pop(), args.pop(), args.is_empty()) {
                (Some(state @ Value::Map(_)), Some(Value::Ext(EXT_CLASS, name)), true) => {
                    Ok(Value::Array(vec![
                        Value::from(String::from_utf8_lossy(&name).into_owned()),
                        state,
                    ]))
                }
                _ => Err(self.err(at, "_recon needs (class, state dict)")),
            },
            // An exception by BaseException.__reduce__: class(*args).
            Value::Ext(EXT_CLASS, name) => Ok(Value::Array(vec![
                Value::from(String::from_utf8_lossy(&name).into_owned()),
                Value::Array(args),
            ])),
            Value::Ext(EXT_SET, _) => match (args.pop(), args.is_empty()) {
                (Some(items @ Value::Array(_)), true) => Ok(items),
                (None, _) => Ok(Value::Array(vec![])),
                _ => Err(self.err(at, "set() needs one list")),
            },
            _ => Err(self.err(at, "REDUCE of something that is not a known global")),
        }
    }

    fn load(mut self) -> Result<Value, DecodeError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            let (v, depth) = match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(at, format!("pickle protocol {proto}")));
                    }
                    continue;
                }
                b'.' => {
                    let (v, _) = self.pop(at)?;
                    if self.pos != self.input.len() {
                        return Err(self.err(self.pos, "bytes after the end of the pickle"));
                    }
                    if has_marker(&v) {
                        return Err(self.err(at, "a class object outside an exception"));
                    }
                    return Ok(v);
                }
                b'(' => {
                    self.stack.push(Item::Mark);
                    continue;
                }
                b'N' => (Value::Nil, 0),
                0x88 => (Value::Boolean(true), 0),
                0x89 => (Value::Boolean(false), 0),
                b'K' => (Value::from(self.u8()?), 0),
                b'M' => {
                    let b = self.take(2)?;
                    (Value::from(u16::from_le_bytes([b[0], b[1]])), 0)
                }
                b'J' => {
                    let b = self.take(4)?;
                    (Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])), 0)
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?;
                    (self.long(at, b)?, 0)
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    (Value::F64(f64::from_be_bytes(a)), 0)
                }
                b'X' => {
                    let n = self.u32le()?;
                    (self.text(at, n)?, 0)
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    (self.text(at, n)?, 0)
                }
                // bytes; Python 2 servers' str (SHORT_BINSTRING, BINSTRING)
                b'C' | b'U' => {
                    let n = usize::from(self.u8()?);
                    (Value::Binary(self.take(n)?.to_vec()), 0)
                }
                b'B' | b'T' => {
                    let n = self.u32le()?;
                    (Value::Binary(self.take(n)?.to_vec()), 0)
                }
                b')' | b']' => (Value::Array(Vec::new()), 1),
                b'}' => (Value::Map(Vec::new()), 1),
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    let d = depth_of(&items);
                    (Value::Array(items.into_iter().map(|(v, _)| v).collect()), d)
                }
                b't' | b'l' => {
                    let items = self.pop_mark(at)?;
                    let d = depth_of(&items);
                    (Value::Array(items.into_iter().map(|(v, _)| v).collect()), d)
                }
                b'a' => {
                    let item = self.pop(at)?;
                    self.extend_top(at, vec![item])?;
                    continue;
                }
                b'e' | b'u' => {
                    let items = self.pop_mark(at)?;
                    self.extend_top(at, items)?;
                    continue;
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    self.extend_top(at, vec![k, v])?;
                    continue;
                }
                b'c' => {
                    let module = self.line(at)?;
                    let name = self.line(at)?;
                    let marker = match (module, name) {
                        ("ZODB.POSException", "_recon") => Value::Ext(EXT_RECON, vec![]),
                        ("builtins" | "__builtin__", "set" | "frozenset") => {
                            Value::Ext(EXT_SET, vec![])
                        }
                        (m, n) if allowed_class(m, n) => {
                            Value::Ext(EXT_CLASS, format!("{m}.{n}").into_bytes())
                        }
                        (m, n) => {
                            return Err(self.err(
                                at,
                                format!("global {m}.{n} is not one a ZEO server sends"),
                            ))
                        }
                    };
                    (marker, 0)
                }
                b'R' => {
                    let (args, da) = self.pop(at)?;
                    let (f, _) = self.pop(at)?;
                    (self.reduce(at, f, args)?, da.max(1))
                }
                b'q' | b'r' | b'h' | b'j' | 0x94 | b'p' | b'g' => {
                    return Err(self.err(
                        at,
                        format!("memo opcode 0x{op:02x} (ZEO pickles messages in fast mode, without a memo)"),
                    ))
                }
                other => {
                    return Err(self.err(
                        at,
                        format!("pickle opcode 0x{other:02x} is not one a ZEO server sends"),
                    ))
                }
            };
            self.push(at, v, depth)?;
        }
    }
}

/// Whether a marker of a global is left in `v` (its depth is at most
/// [`MAX_DEPTH`], so the recursion is bounded).
fn has_marker(v: &Value) -> bool {
    match v {
        Value::Ext(..) => true,
        Value::Array(a) => a.iter().any(has_marker),
        Value::Map(m) => m.iter().any(|(k, x)| has_marker(k) || has_marker(x)),
        _ => false,
    }
}

/// Unpickle one value with the restrictions of this module.
pub fn unpickle(payload: &[u8]) -> Result<Value, DecodeError> {
    Unpickler {
        input: payload,
        pos: 0,
        stack: Vec::new(),
        values: 0,
    }
    .load()
}

/// Decode one frame payload of the pickle flavour.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let v = unpickle(payload)?;
    crate::zeo::message::from_value(v)
}

#[cfg(test)]
mod tests;
