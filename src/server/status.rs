//! What the server reports about itself: `get_info`, size info, ZEO's
//! `server_status` and the JSON answer to a `ruok` probe.

use super::{lock, Shared, StorageEntry};
use crate::status::{Document, StorageStatus};
use rmpv::Value;
use std::sync::atomic::Ordering;

pub(crate) fn size_info_value(entry: &StorageEntry) -> Value {
    let s = entry.storage.size_info();
    Value::Map(vec![
        (Value::from("length"), Value::from(s.objects)),
        (Value::from("size"), Value::from(s.bytes)),
    ])
}

/// The one-way `info` message (size info) ZEO sends after a commit or pack.
pub(crate) fn info_message(entry: &StorageEntry) -> Vec<u8> {
    crate::zeo::message::encode_oneway("info", vec![size_info_value(entry)])
}

pub(crate) fn get_info(entry: &StorageEntry) -> Value {
    let s = entry.storage.size_info();
    let undo = entry.storage.supports_undo();
    let mut ifaces = vec![
        "IStorageRestoreable",
        "IStorageIteration",
        "IStorageCurrentRecordIteration",
    ];
    if undo {
        ifaces.push("IStorageUndoable");
    }
    if entry.storage.blob_staging_dir().is_some() {
        ifaces.push("IBlobStorage");
    }
    let interfaces = ifaces
        .into_iter()
        .map(|i| Value::Array(vec![Value::from("ZODB.interfaces"), Value::from(i)]))
        .collect();
    Value::Map(vec![
        (Value::from("length"), Value::from(s.objects)),
        (Value::from("size"), Value::from(s.bytes)),
        (Value::from("name"), Value::from(entry.storage.name())),
        (Value::from("supportsUndo"), Value::Boolean(undo)),
        (
            Value::from("supports_record_iternext"),
            Value::Boolean(true),
        ),
        (Value::from("interfaces"), Value::Array(interfaces)),
    ])
}

/// The status of one storage (ZEO's `server_status`), as JSON.
pub(crate) fn status_json(entry: &StorageEntry) -> serde_json::Value {
    serde_json::to_value(storage_status(entry)).unwrap_or_default()
}

/// The status of one storage: the server's counters and, for an array,
/// the array's own.
pub(crate) fn storage_status(entry: &StorageEntry) -> StorageStatus {
    let s = &entry.stats;
    let connections = entry.clients.read().map(|c| c.len()).unwrap_or(0);
    let last = entry
        .storage
        .last_transaction()
        .map(|t| format!("{:016x}", t.0))
        .unwrap_or_default();
    let waiting = lock(&entry.lock).waiting();
    StorageStatus {
        storage: entry.name.clone(),
        connections: connections as u64,
        loads: s.loads.load(Ordering::Relaxed),
        stores: s.stores.load(Ordering::Relaxed),
        commits: s.commits.load(Ordering::Relaxed),
        aborts: s.aborts.load(Ordering::Relaxed),
        conflicts: s.conflicts.load(Ordering::Relaxed),
        conflicts_resolved: s.conflicts_resolved.load(Ordering::Relaxed),
        active_txns: s.active_txns.load(Ordering::Relaxed),
        waiting: waiting as u64,
        uptime_seconds: entry.started.elapsed().as_secs(),
        last_transaction: last,
        raid: entry.storage.raid_status(),
        ha: None,
    }
}

/// The `ruok` probe's answer: a JSON object of every storage's status.
pub(crate) fn ruok_json(shared: &Shared) -> String {
    serde_json::to_string(&status_document(shared)).unwrap_or_else(|_| "{}".into())
}

/// Every storage's status, by name (the `ruok` document; the admin
/// interface renders it too).
pub(crate) fn status_document(shared: &Shared) -> Document {
    shared
        .storages
        .iter()
        .map(|(name, entry)| {
            let mut s = storage_status(entry);
            s.ha = shared.gate.ha();
            (name.clone(), s)
        })
        .collect()
}
