//! The table of methods a ZEO 5/6 client may call, and how each is run.
//!
//! *Ordered* methods touch the session's transaction or iterators and run in
//! arrival order, one at a time per connection. *Concurrent* methods are
//! stateless reads and may run on any worker at once (a ZODB client shares
//! one connection between all its threads, so loads must not queue behind
//! each other or behind a parked vote).

/// How a method is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ordered,
    Concurrent,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub min_args: usize,
    pub max_args: usize,
    pub kind: Kind,
}

const fn m(name: &'static str, min_args: usize, max_args: usize, kind: Kind) -> Method {
    Method {
        name,
        min_args,
        max_args,
        kind,
    }
}

use Kind::*;

/// Every method we answer (ZEO's `registered_methods` plus `register`).
pub const METHODS: &[Method] = &[
    m("register", 2, 3, Ordered),
    m("get_info", 0, 0, Concurrent),
    m("get_size_info", 0, 0, Concurrent),
    m("lastTransaction", 0, 0, Concurrent),
    m("loadBefore", 2, 2, Concurrent),
    m("loadSerial", 2, 2, Concurrent),
    m("getTid", 1, 1, Concurrent),
    m("history", 1, 2, Concurrent),
    m("new_oids", 0, 1, Concurrent),
    m("new_oid", 0, 0, Concurrent),
    m("getInvalidations", 1, 1, Concurrent),
    m("pack", 1, 2, Concurrent),
    m("undoInfo", 0, 3, Concurrent),
    m("undoLog", 0, 2, Concurrent),
    m("record_iternext", 0, 1, Concurrent),
    m("ping", 0, 0, Concurrent),
    m("server_status", 0, 0, Concurrent),
    m("tpc_begin", 4, 6, Ordered),
    m("storea", 4, 4, Ordered),
    m("deleteObject", 3, 3, Ordered),
    m("checkCurrentSerialInTransaction", 3, 3, Ordered),
    m("restorea", 5, 5, Ordered),
    m("undoa", 2, 2, Ordered),
    m("vote", 1, 1, Ordered),
    m("tpc_finish", 1, 1, Ordered),
    m("tpc_abort", 1, 1, Ordered),
    m("iterator_start", 0, 2, Ordered),
    m("iterator_next", 1, 1, Ordered),
    m("iterator_record_start", 2, 2, Ordered),
    m("iterator_record_next", 1, 1, Ordered),
    m("iterator_gc", 1, 1, Ordered),
    m("set_client_label", 1, 1, Ordered),
    m("storeBlobStart", 0, 0, Ordered),
    m("storeBlobChunk", 1, 1, Ordered),
    m("storeBlobEnd", 4, 4, Ordered),
    m("storeBlobShared", 5, 5, Ordered),
    m("sendBlob", 2, 2, Concurrent),
];

/// Point reads: cheap, bounded work that may run on the event loop itself
/// when the storage's reads never block.
pub fn is_point_read(name: &str) -> bool {
    matches!(
        name,
        "loadBefore" | "loadSerial" | "getTid" | "lastTransaction" | "ping" | "get_size_info"
    )
}

/// Look a method up by name.
pub fn lookup(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
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
