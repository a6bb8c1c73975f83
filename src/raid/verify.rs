//! Verify: compare one backend's whole history with an optimal
//! backend's, online.
//!
//! Both histories are walked by their iterators on two named reader
//! threads, in batches through bounded channels, up to the array's last
//! visible transaction when the check starts; each transaction is reduced
//! to a [`digest`] (tid, status, metadata, every record's oid and data,
//! records in oid order) and compared. The commit lock is never taken:
//! history up to a committed tid does not change, except by a pack, which
//! the array refuses while a verification runs. The first difference is
//! named with its tid and oid ([`first_difference`]), and the checked
//! backend is degraded with "diverged at ...", so a recovery refuses it
//! until the operator decides (a forced recovery rebuilds it).

use super::Core;
use super::RaidStorage;
use crate::locks::lock;
use crate::storage::{Error, Oid, Storage, Tid, TxnRecord};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Transactions read ahead on each side.
const BATCH: usize = 256;

/// An extension as compared: an empty msgpack map is no extension.
fn ext_bytes(ext: &[u8]) -> &[u8] {
    if ext == [0x80] {
        &[]
    } else {
        ext
    }
}

/// A transaction reduced to a 64-bit hash of what two mirrors must agree
/// on: tid, status, user, description, extension, and every record's oid
/// and data (in oid order; how a record reaches its data — a backpointer
/// or a copy — is the storage's business and not compared).
pub fn digest(t: &TxnRecord) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.tid.0.hash(&mut h);
    t.status.hash(&mut h);
    t.meta.user.hash(&mut h);
    t.meta.description.hash(&mut h);
    ext_bytes(&t.meta.extension).hash(&mut h);
    let mut recs: Vec<(Oid, Option<&[u8]>)> = t
        .records
        .iter()
        .map(|r| (r.oid, r.data.as_deref()))
        .collect();
    recs.sort_by_key(|r| r.0);
    recs.len().hash(&mut h);
    for (oid, data) in recs {
        oid.0.hash(&mut h);
        data.hash(&mut h);
    }
    h.finish()
}

/// Where two histories first differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub tid: Tid,
    /// The object whose record differs, when it is a record.
    pub oid: Option<Oid>,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.oid {
            Some(oid) => write!(f, "diverged at {}, oid {}: {}", self.tid, oid, self.what),
            None => write!(f, "diverged at {}: {}", self.tid, self.what),
        }
    }
}

/// The first difference between transaction `a` (the checked backend's)
/// and `b` (the reference's) at the same position of their histories;
/// `None` when they agree. `None` for a side means its history ended.
pub fn first_difference(a: Option<&TxnRecord>, b: Option<&TxnRecord>) -> Option<Difference> {
    let (a, b) = match (a, b) {
        (None, None) => return None,
        (Some(a), None) => {
            return Some(Difference {
                tid: a.tid,
                oid: None,
                what: "it has a transaction the reference lacks".into(),
            })
        }
        (None, Some(b)) => {
            return Some(Difference {
                tid: b.tid,
                oid: None,
                what: "it lacks this transaction".into(),
            })
        }
        (Some(a), Some(b)) => (a, b),
    };
    let at = |tid: Tid, oid: Option<Oid>, what: &str| {
        Some(Difference {
            tid,
            oid,
            what: what.to_string(),
        })
    };
    if a.tid != b.tid {
        return if a.tid < b.tid {
            at(a.tid, None, "it has a transaction the reference lacks")
        } else {
            at(b.tid, None, "it lacks this transaction")
        };
    }
    if a.status != b.status {
        return at(a.tid, None, "the transaction status differs");
    }
    if a.meta.user != b.meta.user || a.meta.description != b.meta.description {
        return at(a.tid, None, "the transaction's user or description differs");
    }
    if ext_bytes(&a.meta.extension) != ext_bytes(&b.meta.extension) {
        return at(a.tid, None, "the transaction's extension differs");
    }
    let sorted = |t: &TxnRecord| {
        let mut r: Vec<(Oid, Option<Vec<u8>>)> = t
            .records
            .iter()
            .map(|r| (r.oid, r.data.as_deref().map(<[u8]>::to_vec)))
            .collect();
        r.sort_by_key(|r| r.0);
        r
    };
    let (ra, rb) = (sorted(a), sorted(b));
    for k in 0..ra.len().max(rb.len()) {
        match (ra.get(k), rb.get(k)) {
            (Some(x), Some(y)) if x.0 != y.0 => {
                return at(
                    a.tid,
                    Some(x.0.min(y.0)),
                    "one side has no record of the object",
                )
            }
            (Some(x), Some(y)) if x.1 != y.1 => {
                return at(a.tid, Some(x.0), "the object's data differs")
            }
            (Some(x), None) => {
                return at(
                    a.tid,
                    Some(x.0),
                    "the reference has no record of the object",
                )
            }
            (None, Some(y)) => return at(a.tid, Some(y.0), "it has no record of the object"),
            _ => {}
        }
    }
    None
}

/// What a verification found.
#[derive(Clone, Debug)]
pub struct Report {
    pub backend: String,
    pub reference: String,
    /// Transactions and data bytes compared (on the checked side).
    pub transactions: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Compared up to this tid.
    pub upto: Tid,
    pub difference: Option<Difference>,
}

impl Report {
    /// As status documents and the admin interface show it.
    pub fn summary(&self) -> crate::status::VerifySummary {
        crate::status::VerifySummary {
            backend: self.backend.clone(),
            reference: self.reference.clone(),
            transactions: self.transactions,
            megabytes: (self.bytes as f64 / 1e5).round() / 10.0,
            seconds: (self.seconds * 100.0).round() / 100.0,
            upto: self.upto.to_string(),
            difference: self.difference.as_ref().map(|d| d.to_string()),
        }
    }

    /// [`Report::summary`] as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.summary()).unwrap_or_default()
    }
}

impl RaidStorage {
    /// Compare backend `name`'s history with an optimal backend's (see
    /// the module doc). A difference degrades `name` with its reason.
    pub fn verify(&self, name: &str) -> Result<Report, String> {
        let i = self.position(name)?;
        verify_now(&self.core, i)
    }
}

fn verify_now(core: &Arc<Core>, i: usize) -> Result<Report, String> {
    let b = &core.backends[i];
    let _busy = core.claim(format!("backend {:?} is being verified", b.name))?;
    let checked = b.storage().map_err(|e| e.to_string())?;
    let r = core
        .optimal()
        .into_iter()
        .filter(|&j| j != i)
        .min_by_key(|&j| !core.backends[j].local)
        .ok_or_else(|| format!("no other optimal backend to compare {:?} with", b.name))?;
    let reference = core.backends[r].storage().map_err(|e| e.to_string())?;
    let upto = Tid(core.published.load(Ordering::Acquire));
    let started = Instant::now();
    let (transactions, bytes, difference) = compare(core, &checked, &reference, upto)?;
    let report = Report {
        backend: b.name.clone(),
        reference: core.backends[r].name.clone(),
        transactions,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        upto,
        difference,
    };
    *lock(&b.verified) = Some(report.summary());
    match &report.difference {
        None => log::info!(
            "RAID array {:?}: backend {:?} verified against {:?}: {} transactions ({:.1} MB) up to \
             {upto} identical, {:.1} s",
            core.opts.name,
            b.name,
            report.reference,
            transactions,
            bytes as f64 / 1e6,
            report.seconds
        ),
        Some(d) => {
            let why = super::Reason::Diverged {
                difference: d.to_string(),
                reference: report.reference.clone(),
            };
            core.step(super::state::roles::Event::Diverged { at: i, reason: why });
        }
    }
    Ok(report)
}

/// Walk both histories up to `upto` side by side.
fn compare(
    core: &Core,
    checked: &Arc<dyn Storage>,
    reference: &Arc<dyn Storage>,
    upto: Tid,
) -> Result<(u64, u64, Option<Difference>), String> {
    type Item = Result<TxnRecord, Error>;
    std::thread::scope(|scope| {
        let (ta, ra) = crossbeam_channel::bounded::<Item>(BATCH);
        let (tb, rb) = crossbeam_channel::bounded::<Item>(BATCH);
        let spawn = |name: String, s: &'_ Arc<dyn Storage>, tx| {
            let s = s.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || {
                    super::recovery::feed(s.as_ref(), None, Some(upto), &tx)
                })
                .map_err(|e| format!("cannot start a verify reader: {e}"))
        };
        let ha = spawn(format!("zeoraid-verify-{}-a", core.opts.name), checked, ta)?;
        let hb = spawn(
            format!("zeoraid-verify-{}-b", core.opts.name),
            reference,
            tb,
        )?;
        let (mut n, mut bytes) = (0u64, 0u64);
        let result = loop {
            if core.wake.is_closing() {
                break Err("the array is closing".to_string());
            }
            let a = ra
                .recv()
                .ok()
                .transpose()
                .map_err(|e| format!("reading the checked backend failed: {e}"));
            let b = rb
                .recv()
                .ok()
                .transpose()
                .map_err(|e| format!("reading the reference failed: {e}"));
            let (a, b) = match (a, b) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => break Err(e),
            };
            if a.is_none() && b.is_none() {
                break Ok(None);
            }
            let same = match (&a, &b) {
                (Some(x), Some(y)) => x.tid == y.tid && digest(x) == digest(y),
                _ => false,
            };
            if !same {
                let d = first_difference(a.as_ref(), b.as_ref());
                if d.is_some() {
                    break Ok(d);
                }
            }
            if let Some(t) = &a {
                match blob_difference(checked.as_ref(), reference.as_ref(), t) {
                    Ok(None) => {}
                    Ok(Some(d)) => break Ok(Some(d)),
                    Err(e) => break Err(e),
                }
            }
            if let Some(a) = &a {
                n += 1;
                bytes += a.data_bytes();
            }
        };
        drop(ra);
        drop(rb);
        let joined = ha.join().is_ok() && hb.join().is_ok();
        if !joined {
            return Err("a verify reader thread panicked (a zeoraid bug)".into());
        }
        result.map(|d| (n, bytes, d))
    })
}

/// The first blob record of `t` whose file differs between the checked
/// backend and the reference (contents compared byte for byte, streamed),
/// or is missing on one side.
fn blob_difference(
    checked: &dyn Storage,
    reference: &dyn Storage,
    t: &TxnRecord,
) -> Result<Option<Difference>, String> {
    for r in &t.records {
        if !r
            .data
            .as_deref()
            .is_some_and(crate::storage::pickle_refs::is_blob_record)
        {
            continue;
        }
        let fetch = |s: &dyn Storage| match s.load_blob(r.oid, t.tid) {
            Ok(p) => Ok(Some(p)),
            Err(Error::PosKey(_)) => Ok(None),
            Err(e) => Err(format!(
                "reading the blob of {} at {} failed: {e}",
                r.oid, t.tid
            )),
        };
        let what = match (fetch(checked)?, fetch(reference)?) {
            (None, None) => continue,
            (None, Some(_)) => "its blob file is missing",
            (Some(_), None) => "it has a blob file the reference lacks",
            (Some(a), Some(b)) => match same_contents(&a, &b) {
                Ok(true) => continue,
                Ok(false) => "its blob file differs",
                Err(e) => return Err(e),
            },
        };
        return Ok(Some(Difference {
            tid: t.tid,
            oid: Some(r.oid),
            what: what.into(),
        }));
    }
    Ok(None)
}

/// Do two files hold the same bytes (read side by side in 1 MiB pieces)?
fn same_contents(a: &std::path::Path, b: &std::path::Path) -> Result<bool, String> {
    let open = |p: &std::path::Path| {
        std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let len = |f: &std::fs::File, p: &std::path::Path| {
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| format!("cannot stat {}: {e}", p.display()))
    };
    if len(&fa, a)? != len(&fb, b)? {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = crate::storage::blobdir::read_full(&mut fa, &mut ba)
            .map_err(|e| format!("cannot read {}: {e}", a.display()))?;
        let nb = crate::storage::blobdir::read_full(&mut fb, &mut bb)
            .map_err(|e| format!("cannot read {}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DataRecord, TxnMeta};

    fn txn(tid: u64, recs: &[(u64, Option<&str>)]) -> TxnRecord {
        TxnRecord {
            tid: Tid(tid),
            status: b' ',
            meta: TxnMeta {
                user: b"u".to_vec(),
                description: b"d".to_vec(),
                extension: vec![],
            },
            records: recs
                .iter()
                .map(|(o, d)| DataRecord {
                    oid: Oid(*o),
                    tid: Tid(tid),
                    data: d.map(|d| d.as_bytes().into()),
                    data_txn: None,
                })
                .collect(),
        }
    }

    #[test]
    fn first_difference_table() {
        let base = txn(5, &[(1, Some("a")), (2, Some("b"))]);
        let mut ext = base.clone();
        ext.meta.extension = vec![0x81, 0xa1, b'k', 0x01];
        let mut empty_map = base.clone();
        empty_map.meta.extension = vec![0x80];
        let mut status = base.clone();
        status.status = b'p';
        let mut user = base.clone();
        user.meta.user = b"v".to_vec();
        let reordered = txn(5, &[(2, Some("b")), (1, Some("a"))]);
        let mut backpointer = base.clone();
        backpointer.records[0].data_txn = Some(Tid(3));
        // (name, checked, reference, want (tid, oid, what-substring))
        type Case = (
            &'static str,
            Option<TxnRecord>,
            Option<TxnRecord>,
            Option<(u64, Option<u64>, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("same", Some(base.clone()), Some(base.clone()), None),
            (
                "record order does not matter",
                Some(reordered),
                Some(base.clone()),
                None,
            ),
            (
                "how data is reached does not matter",
                Some(backpointer),
                Some(base.clone()),
                None,
            ),
            (
                "an empty map is no extension",
                Some(empty_map),
                Some(base.clone()),
                None,
            ),
            ("both ended", None, None, None),
            (
                "one changed byte",
                Some(txn(5, &[(1, Some("a")), (2, Some("c"))])),
                Some(base.clone()),
                Some((5, Some(2), "data differs")),
            ),
            (
                "deleted on one side",
                Some(txn(5, &[(1, Some("a")), (2, None)])),
                Some(base.clone()),
                Some((5, Some(2), "data differs")),
            ),
            (
                "a record too many",
                Some(txn(5, &[(1, Some("a")), (2, Some("b")), (3, Some("c"))])),
                Some(base.clone()),
                Some((5, Some(3), "reference has no record")),
            ),
            (
                "a record missing",
                Some(txn(5, &[(1, Some("a"))])),
                Some(base.clone()),
                Some((5, Some(2), "it has no record")),
            ),
            (
                "another oid",
                Some(txn(5, &[(1, Some("a")), (4, Some("b"))])),
                Some(base.clone()),
                Some((5, Some(2), "no record")),
            ),
            (
                "status",
                Some(status),
                Some(base.clone()),
                Some((5, None, "status")),
            ),
            (
                "user",
                Some(user),
                Some(base.clone()),
                Some((5, None, "user")),
            ),
            (
                "extension",
                Some(ext),
                Some(base.clone()),
                Some((5, None, "extension")),
            ),
            (
                "an extra transaction",
                Some(txn(4, &[])),
                Some(base.clone()),
                Some((4, None, "lacks")),
            ),
            (
                "a missing transaction",
                Some(txn(6, &[])),
                Some(base.clone()),
                Some((5, None, "it lacks")),
            ),
            (
                "history ends early",
                None,
                Some(base.clone()),
                Some((5, None, "it lacks")),
            ),
            (
                "history goes on",
                Some(base.clone()),
                None,
                Some((5, None, "reference lacks")),
            ),
        ];
        for (name, a, b, want) in cases {
            let got = first_difference(a.as_ref(), b.as_ref());
            match (&got, want) {
                (None, None) => {
                    if let (Some(a), Some(b)) = (&a, &b) {
                        assert_eq!(digest(a), digest(b), "{name}: digests agree");
                    }
                }
                (Some(d), Some((tid, oid, what))) => {
                    assert_eq!(d.tid, Tid(tid), "{name}: {d}");
                    assert_eq!(d.oid, oid.map(Oid), "{name}: {d}");
                    assert!(d.what.contains(what), "{name}: {d}");
                    if let (Some(a), Some(b)) = (&a, &b) {
                        assert_ne!(digest(a), digest(b), "{name}: digests differ");
                    }
                }
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn difference_reads_as_a_reason() {
        let d = Difference {
            tid: Tid(0x10),
            oid: Some(Oid(7)),
            what: "the object's data differs".into(),
        };
        let s = d.to_string();
        assert!(
            s.starts_with("diverged at 0x0000000000000010, oid 0x0000000000000007"),
            "{s}"
        );
    }
}
