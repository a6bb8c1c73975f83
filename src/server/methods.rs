//! The table of methods a ZEO 5/6 client may call, and how each is run.
//!
//! *Ordered* methods touch the session's transaction or iterators and run in
//! arrival order, one at a time per connection. *Concurrent* methods are
//! stateless reads and may run on any worker at once (a ZODB client shares
//! one connection between all its threads, so loads must not queue behind
//! each other or behind a parked vote).
//!
//! Each row also says what the method needs of its session ([`Needs`]) and
//! names its decoder (`super::request`): a call is refused for its name or
//! arity first, then for what the session lacks, then for its arguments'
//! types (`handlers::admit`). The table is the only list of method names:
//! the handlers match on the decoded request.

use super::request::{self as r, Decode, Request};
use crate::storage::Error;
use crate::zeo::message::Message;

/// How a method is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ordered,
    Concurrent,
}

/// What a method needs of its session. It is checked after the name and
/// arity and before the arguments' types, so a call that is both out of
/// place and malformed is refused for being out of place (the order in
/// which ZEO's server, and zeoraid's handlers always, looked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: its handler decides.
    Nothing,
    /// A registered storage (else "register() must be called first").
    Storage,
    /// A registered storage the session may write to (else ReadOnlyError).
    Writable,
    /// No registered storage yet (else "duplicate register() call").
    NoStorage,
    /// The current transaction, named by argument `n`, in a session that
    /// may write (else ReadOnlyError or StorageTransactionError).
    Txn(usize),
    /// A registered storage, then [`Needs::Txn`].
    StorageTxn(usize),
    /// A writable storage and no other transaction (`tpc_begin`); a repeat
    /// of the current transaction's `tpc_begin` is answered at once.
    NewTxn,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    pub name: &'static str,
    pub min_args: usize,
    pub max_args: usize,
    pub kind: Kind,
    /// A point read: cheap, bounded work that may run on the event loop
    /// itself when the storage's reads never block.
    pub point_read: bool,
    pub needs: Needs,
    /// The method's arguments to its typed request ([`super::request`]).
    pub(crate) decode: Decode,
}

const fn m(
    name: &'static str,
    min_args: usize,
    max_args: usize,
    kind: Kind,
    needs: Needs,
    decode: Decode,
) -> Method {
    Method {
        name,
        min_args,
        max_args,
        kind,
        point_read: false,
        needs,
        decode,
    }
}

/// A concurrent read of the registered storage.
const fn read(name: &'static str, min_args: usize, max_args: usize, decode: Decode) -> Method {
    m(name, min_args, max_args, Concurrent, Storage, decode)
}

/// A concurrent read that is a point read.
const fn point(name: &'static str, min_args: usize, max_args: usize, decode: Decode) -> Method {
    Method {
        point_read: true,
        ..read(name, min_args, max_args, decode)
    }
}

/// An ordered method.
const fn ordered(
    name: &'static str,
    min_args: usize,
    max_args: usize,
    needs: Needs,
    decode: Decode,
) -> Method {
    m(name, min_args, max_args, Ordered, needs, decode)
}

use Kind::*;
use Needs::*;

/// Every method we answer (ZEO's `registered_methods` plus `register`).
pub const METHODS: &[Method] = &[
    ordered("register", 2, 3, NoStorage, r::register),
    read("get_info", 0, 0, r::get_info),
    point("get_size_info", 0, 0, r::get_size_info),
    point("lastTransaction", 0, 0, r::last_transaction),
    point("loadBefore", 2, 2, r::load_before),
    point("loadSerial", 2, 2, r::load_serial),
    point("getTid", 1, 1, r::get_tid),
    read("history", 1, 2, r::history),
    m("new_oids", 0, 1, Concurrent, Writable, r::new_oids),
    m("new_oid", 0, 0, Concurrent, Writable, r::new_oid),
    read("getInvalidations", 1, 1, r::get_invalidations),
    read("pack", 1, 2, r::pack),
    read("undoInfo", 0, 3, r::undo_info),
    read("undoLog", 0, 2, r::undo_log),
    read("record_iternext", 0, 1, r::record_iternext),
    point("ping", 0, 0, r::ping),
    read("server_status", 0, 0, r::server_status),
    ordered("tpc_begin", 4, 6, NewTxn, r::tpc_begin),
    ordered("storea", 4, 4, Txn(3), r::storea),
    ordered("deleteObject", 3, 3, Txn(2), r::delete_object),
    ordered(
        "checkCurrentSerialInTransaction",
        3,
        3,
        Txn(2),
        r::check_current_serial_in_transaction,
    ),
    ordered("restorea", 5, 5, Txn(4), r::restorea),
    ordered("undoa", 2, 2, Txn(1), r::undoa),
    ordered("vote", 1, 1, Nothing, r::vote),
    ordered("tpc_finish", 1, 1, Nothing, r::tpc_finish),
    ordered("tpc_abort", 1, 1, Nothing, r::tpc_abort),
    ordered("iterator_start", 0, 2, Storage, r::iterator_start),
    ordered("iterator_next", 1, 1, Nothing, r::iterator_next),
    ordered(
        "iterator_record_start",
        2,
        2,
        Nothing,
        r::iterator_record_start,
    ),
    ordered(
        "iterator_record_next",
        1,
        1,
        Nothing,
        r::iterator_record_next,
    ),
    ordered("iterator_gc", 1, 1, Nothing, r::iterator_gc),
    ordered("set_client_label", 1, 1, Nothing, r::set_client_label),
    ordered("storeBlobStart", 0, 0, Nothing, r::store_blob_start),
    ordered("storeBlobChunk", 1, 1, Nothing, r::store_blob_chunk),
    ordered("storeBlobEnd", 4, 4, Txn(3), r::store_blob_end),
    ordered("storeBlobShared", 5, 5, StorageTxn(4), r::store_blob_shared),
    read("sendBlob", 2, 2, r::send_blob),
];

/// Point reads (the table's `point_read`): cheap, bounded work that may run
/// on the event loop itself when the storage's reads never block.
pub fn is_point_read(name: &str) -> bool {
    lookup(name).is_some_and(|m| m.point_read)
}

/// Look a method up by name.
pub fn lookup(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Decode a call into its typed request: the name and arity checked
/// ([`check`]; refused as [`Refusal::error`]), then the arguments' types by
/// the method's decoder.
pub(crate) fn decode(msg: &Message) -> Result<Request<'_>, Error> {
    let args = msg.arg_list();
    let method = check(&msg.method, args.len()).map_err(|r| r.error())?;
    (method.decode)(args)
}

/// Why a call cannot be dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown(String),
    Arity {
        name: &'static str,
        min: usize,
        max: usize,
        given: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unknown(n) => write!(f, "unknown method {n:?}"),
            Refusal::Arity {
                name,
                min,
                max,
                given,
            } if min == max => write!(f, "{name}() takes {min} arguments but {given} were given"),
            Refusal::Arity {
                name,
                min,
                max,
                given,
            } => write!(
                f,
                "{name}() takes {min} to {max} arguments but {given} were given"
            ),
        }
    }
}

impl Refusal {
    /// The error a refused call is answered with, as ZEO's server raises
    /// it: `AttributeError` for an unknown method, `TypeError` for a wrong
    /// number of arguments.
    pub fn error(&self) -> Error {
        let class = match self {
            Refusal::Unknown(_) => "builtins.AttributeError",
            Refusal::Arity { .. } => "builtins.TypeError",
        };
        Error::Remote {
            class: class.into(),
            message: self.to_string(),
        }
    }
}

/// Validate a call's name and arity.
pub fn check(name: &str, nargs: usize) -> Result<&'static Method, Refusal> {
    let m = lookup(name).ok_or_else(|| Refusal::Unknown(name.to_string()))?;
    if nargs < m.min_args || nargs > m.max_args {
        return Err(Refusal::Arity {
            name: m.name,
            min: m.min_args,
            max: m.max_args,
            given: nargs,
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, usize, Result<Kind, &str>)] = &[
            ("loadBefore", 2, Ok(Concurrent)),
            (
                "loadBefore",
                3,
                Err("loadBefore() takes 2 arguments but 3 were given"),
            ),
            ("storea", 4, Ok(Ordered)),
            ("vote", 1, Ok(Ordered)),
            ("tpc_begin", 6, Ok(Ordered)),
            (
                "tpc_begin",
                3,
                Err("tpc_begin() takes 4 to 6 arguments but 3 were given"),
            ),
            ("history", 1, Ok(Concurrent)),
            ("nonsense", 0, Err("unknown method \"nonsense\"")),
            ("__init__", 0, Err("unknown method \"__init__\"")),
        ];
        for (name, n, want) in cases {
            let got = check(name, *n).map(|m| m.kind).map_err(|r| r.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{name}/{n}");
        }
    }

    #[test]
    fn a_named_transaction_is_an_argument_every_call_has() {
        for m in METHODS {
            if let Txn(n) | StorageTxn(n) = m.needs {
                assert!(n < m.min_args, "{}", m.name);
            }
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in METHODS.iter().enumerate() {
            assert!(
                METHODS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
