//! Building the storages a config describes: memory, file, and RAID arrays
//! over their backends. Used by `zeoraid serve`, the tests and embedders,
//! so every way in opens storages the same way.

pub mod members;

use crate::config::{BackendConfig, BackendKind, StorageConfig, StorageKind};
use crate::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage, Reopen};
use crate::storage::file::{FileOptions, FileStorage};
use crate::storage::memory::MemoryStorage;
use crate::storage::Storage;
use crate::zeo::client::ClientOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A storage as opened from its config: what the server serves and, for
/// an array, the typed handle its operators use (the admin interface's
/// recover, disable, verify, reload).
#[derive(Clone)]
pub struct Opened {
    pub storage: Arc<dyn Storage>,
    /// The same object as `storage` when it is a RAID array.
    pub array: Option<Arc<RaidStorage>>,
}

impl Opened {
    fn plain(storage: Arc<dyn Storage>) -> Opened {
        Opened {
            storage,
            array: None,
        }
    }
}

/// Open one configured storage.
pub fn open_storage(s: &StorageConfig) -> Result<Arc<dyn Storage>, String> {
    open_served(s).map(|o| o.storage)
}

/// Open one configured storage, keeping an array's typed handle.
pub fn open_served(s: &StorageConfig) -> Result<Opened, String> {
    open_served_as(s, false)
}

/// [`open_served`] for a controller with `[ha]` when `stands_by`: an
/// array opens standing by (see [`RaidOptions::stands_by`]).
pub fn open_served_as(s: &StorageConfig, stands_by: bool) -> Result<Opened, String> {
    match s.kind {
        StorageKind::Memory => Ok(Opened::plain(Arc::new(MemoryStorage::with_blobs(
            &s.name,
            s.read_only,
            s.blob_dir.as_deref(),
        )?))),
        StorageKind::File => {
            let path = s
                .path
                .as_deref()
                .ok_or_else(|| "kind = \"file\" needs a path".to_string())?;
            open_file(
                &s.name,
                path,
                s.read_only,
                s.sync,
                s.pack_gc,
                s.blob_dir.as_deref(),
            )
            .map(Opened::plain)
        }
        StorageKind::Raid => open_raid_as(s, stands_by).map(|r| {
            let array = Arc::new(r);
            Opened {
                storage: array.clone(),
                array: Some(array),
            }
        }),
    }
}

fn open_file(
    name: &str,
    path: &Path,
    read_only: bool,
    sync: bool,
    pack_gc: bool,
    blob_dir: Option<&Path>,
) -> Result<Arc<dyn Storage>, String> {
    if let Some(dir) = path.parent() {
        if !read_only && !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
        }
    }
    let opts = FileOptions {
        read_only,
        sync,
        pack_gc,
        create: !read_only,
    };
    if !sync {
        log::warn!("storage {name:?}: sync = false — a power loss can lose acknowledged commits");
    }
    FileStorage::open_with_blobs(path, opts, blob_dir)
        .map(|f| Arc::new(f) as Arc<dyn Storage>)
        .map_err(|e| e.to_string())
}

/// The array's options from its config section (the defaults are
/// [`RaidOptions::new`]'s).
pub fn raid_options(s: &StorageConfig) -> RaidOptions {
    let d = RaidOptions::new(&s.name);
    RaidOptions {
        fanout: s.fanout.unwrap_or(d.fanout),
        read_policy: s.read_policy.unwrap_or(d.read_policy),
        min_optimal: s.min_optimal.unwrap_or(d.min_optimal),
        fail_mode: s.fail_mode.unwrap_or(d.fail_mode),
        backend_timeout: s
            .backend_timeout
            .map(Duration::from_secs_f64)
            .unwrap_or(d.backend_timeout),
        state_file: s.state_file.clone(),
        auto_recover: s.auto_recover.unwrap_or(d.auto_recover),
        recovery_ratio: s.recovery_ratio.unwrap_or(d.recovery_ratio),
        cache_size: s.cache_size.map_or(d.cache_size, |c| c.0),
        ..d
    }
}

/// Move a file backend's `Data.fs` (and its index, lock and temporary
/// files) aside as `NAME.diverged-UNIXTIME*`, for a forced rebuild.
/// Nothing is deleted. Returns where the data went.
fn move_aside(path: &Path) -> Result<Option<String>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = format!("{}.diverged-{stamp}", path.display());
    std::fs::rename(path, &aside)
        .map_err(|e| format!("cannot move {} aside to {aside}: {e}", path.display()))?;
    for ext in ["zeoraid-index", "index", "tmp", "lock"] {
        let side = std::path::PathBuf::from(format!("{}.{ext}", path.display()));
        if side.exists() {
            let to = format!("{aside}.{ext}");
            if let Err(e) = std::fs::rename(&side, &to) {
                log::warn!("cannot move {} aside to {to}: {e}", side.display());
            }
        }
    }
    Ok(Some(aside))
}

/// How to reach one backend. A file backend that cannot be opened (a
/// damaged Data.fs, a held lock) does not stop the array: it starts
/// degraded with the reason, like a ZEO backend that is down.
pub fn backend_spec(array: &str, b: &BackendConfig) -> BackendSpec {
    let reopen: Option<Reopen> = match b.kind {
        BackendKind::Memory => {
            let name = b.name.clone();
            Some(Arc::new(move |_fresh| {
                Ok((
                    Arc::new(MemoryStorage::with_blobs(&name, false, None)?) as Arc<dyn Storage>,
                    None,
                ))
            }))
        }
        BackendKind::File => b.path.clone().map(|p| {
            let (name, sync, pack_gc) = (format!("{array}/{}", b.name), b.sync, b.pack_gc);
            let blobs = b.blob_dir.clone();
            Arc::new(move |fresh: bool| {
                let moved = if fresh {
                    if let Some(d) = &blobs {
                        move_aside(d)?;
                    }
                    move_aside(&p)?
                } else {
                    None
                };
                let s = open_file(&name, &p, false, sync, pack_gc, blobs.as_deref())?;
                Ok((s, moved))
            }) as Reopen
        }),
        BackendKind::Zeo => None,
    };
    let source = match b.kind {
        BackendKind::Memory => match MemoryStorage::with_blobs(&b.name, false, None) {
            Ok(m) => BackendSource::Local(Arc::new(m)),
            Err(e) => BackendSource::Unavailable(e),
        },
        BackendKind::File => match b.path.as_deref() {
            None => BackendSource::Unavailable("no path configured".into()),
            Some(p) => match open_file(
                &format!("{array}/{}", b.name),
                p,
                false,
                b.sync,
                b.pack_gc,
                b.blob_dir.as_deref(),
            ) {
                Ok(s) => BackendSource::Local(s),
                Err(e) => BackendSource::Unavailable(format!("cannot open {}: {e}", p.display())),
            },
        },
        BackendKind::Zeo => {
            let mut opts = ClientOptions::new(b.address.clone().unwrap_or_default());
            opts.storage = b.storage.clone().unwrap_or_else(|| "1".into());
            opts.tls = b.tls.as_ref().map(|t| t.files());
            opts.blob_dir = b.blob_dir.clone();
            BackendSource::Zeo(opts)
        }
    };
    BackendSpec {
        name: b.name.clone(),
        kind: b.kind.label(),
        source,
        reopen,
    }
}

/// Open a `kind = "raid"` storage over its backends: the config's, minus
/// those removed at runtime, plus those added at runtime (the state file
/// remembers both).
pub fn open_raid(s: &StorageConfig) -> Result<RaidStorage, String> {
    open_raid_as(s, false)
}

/// [`open_raid`], standing by if `stands_by` ([`RaidOptions::stands_by`]).
pub fn open_raid_as(s: &StorageConfig, stands_by: bool) -> Result<RaidStorage, String> {
    let saved = match &s.state_file {
        Some(p) => crate::raid::statefile::load(p)?.unwrap_or_default(),
        None => Default::default(),
    };
    let added = saved
        .added
        .iter()
        .map(BackendConfig::from_recipe)
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| {
            format!(
                "{e} (a backend added at runtime, in the state file {}; restore the file, or \
                 remove that entry and add the backend again)",
                s.state_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
    let backends = members::merge_saved(&s.backend, &added, &saved.removed);
    for name in &saved.removed {
        log::warn!(
            "RAID array {:?}: backend {name:?} is in the config but was removed at runtime \
             (zeoraid ctl remove); it stays out (take it out of the config, or add it again)",
            s.name
        );
    }
    for b in added
        .iter()
        .filter(|a| !s.backend.iter().any(|c| c.name == a.name))
    {
        log::warn!(
            "RAID array {:?}: backend {:?} was added at runtime (zeoraid ctl add) and is not in \
             the config; it stays in (add it to the config to make that explicit)",
            s.name,
            b.name
        );
    }
    let (sync, offsite): (Vec<_>, Vec<_>) = backends
        .iter()
        .partition(|b| b.mode == crate::config::BackendMode::Sync);
    let specs = sync.iter().map(|b| backend_spec(&s.name, b)).collect();
    let opts = RaidOptions {
        stands_by,
        ..raid_options(s)
    };
    let raid = RaidStorage::open(opts, specs)?;
    for b in offsite {
        let max_lag = b.max_lag.unwrap_or(crate::config::DEFAULT_MAX_LAG);
        let mut opts = crate::raid::offsite::Options::new(max_lag);
        if let Some(n) = b.queue_transactions {
            opts.queue_entries = n;
        }
        if let Some(mb) = b.queue_megabytes {
            opts.queue_bytes = (mb * 1e6) as u64;
        }
        if let Err(e) = raid.add_offsite(backend_spec(&s.name, b), &opts) {
            raid.close();
            return Err(e);
        }
    }
    Ok(raid)
}

/// Apply a reloaded config to running storages: for each array, add the
/// backends the file has and the array lacks, remove those it no longer
/// has, and take its `fanout` and `read-policy`. Storages are matched by
/// name; adding or removing whole storages needs a restart (said in the
/// answer). Returns what changed.
pub fn reload(
    cfg: &crate::config::Config,
    running: &[(String, Opened)],
) -> Result<Vec<String>, String> {
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for (name, opened) in running {
        let Some(raid) = &opened.array else {
            continue;
        };
        let Some(s) = cfg.storage.iter().find(|s| &s.name == name) else {
            problems.push(format!(
                "storage {name:?} is no longer in the config: removing a storage needs a restart"
            ));
            continue;
        };
        if s.kind != StorageKind::Raid {
            problems.push(format!(
                "storage {name:?} is no longer a RAID array in the config: that needs a restart"
            ));
            continue;
        }
        for c in raid.set_modes(
            s.fanout.unwrap_or_default(),
            s.read_policy.unwrap_or_default(),
        ) {
            changes.push(format!("storage {name}: {c}"));
        }
        let cache_size = s
            .cache_size
            .map_or(crate::raid::cache::DEFAULT_SIZE, |c| c.0);
        match raid.set_cache_size(cache_size) {
            Ok(true) => changes.push(format!(
                "storage {name}: cache-size = {}",
                crate::config::size::ByteSize(cache_size)
            )),
            Ok(false) => {}
            Err(e) => problems.push(format!("storage {name:?}: {e}")),
        }
        let (sync, offsite) = members::split_modes(&s.backend);
        if offsite != raid.offsite_names() {
            problems.push(format!(
                "storage {name:?}: adding or removing off-site backends needs a restart (running: {:?}, config: {offsite:?})",
                raid.offsite_names()
            ));
        }
        let (add, remove) = members::diff(&raid.backend_names(), &sync);
        for b in add {
            match raid.add_backend(backend_spec(name, &b), b.clone()) {
                Ok(()) => changes.push(format!("storage {name}: added backend {}", b.name)),
                Err(e) => problems.push(e),
            }
        }
        for b in remove {
            match raid.remove_backend(&b) {
                Ok(()) => changes.push(format!("storage {name}: removed backend {b}")),
                Err(e) => problems.push(e),
            }
        }
    }
    for s in &cfg.storage {
        if !running.iter().any(|(n, _)| n == &s.name) {
            problems.push(format!(
                "storage {:?} is new in the config: adding a storage needs a restart",
                s.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(changes)
    } else {
        Err(format!(
            "{}{}",
            problems.join("; "),
            if changes.is_empty() {
                String::new()
            } else {
                format!(" (done: {})", changes.join("; "))
            }
        ))
    }
}
