//! The array's memory across restarts: a small JSON file recording each
//! backend that is not optimal, with its reason.
//!
//! A backend degraded for disagreeing with the others must not be trusted
//! again after a restart merely because its last tid matches. The file is
//! written atomically (temporary file, fsync, rename, fsync of the
//! directory) whenever a backend's state changes. A missing file means a
//! first start (every backend is judged by its last tid); a file that
//! cannot be read or parsed stops the start with an error naming it, since
//! guessing could trust a bad mirror.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the file holds: backend name → reason it is degraded, and the
/// backends added and removed while the array ran (so a restart neither
/// drops the first nor brings back the second).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// Backends that are not optimal, with why.
    pub degraded: BTreeMap<String, String>,
    /// Backends added at runtime (`zeoraid ctl add`), as their opener
    /// described them.
    #[serde(default)]
    pub added: Vec<Recipe>,
    /// Backends of the config file removed at runtime (`zeoraid ctl remove`).
    #[serde(default)]
    pub removed: Vec<String>,
}

/// How to open a backend added at runtime again after a restart: the
/// description its opener gave (for zeoraid, its `[[storage.backend]]`
/// table as JSON, see `config::BackendConfig`), kept as given. The array
/// reads only its `name`; the opener turns it back into a backend.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Recipe(pub serde_json::Map<String, serde_json::Value>);

impl Recipe {
    /// The backend's name, when the description has one.
    pub fn name(&self) -> Option<&str> {
        self.0.get("name").and_then(|n| n.as_str())
    }
}

/// Read the state file; `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the RAID state file {}: {e} (fix its permissions; do not delete it \
                 unless every backend is known to be complete and identical)",
                path.display()
            ))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "the RAID state file {} is not valid: {e} (restore it, or delete it only if every \
             backend is known to be complete and identical)",
            path.display()
        )
    })
}

/// Write the state file atomically.
pub fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!("cannot {what} the RAID state file {}: {e}", path.display())
    };
    let text = serde_json::to_string_pretty(saved).map_err(|e| e.to_string())?;
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
    f.write_all(text.as_bytes()).map_err(|e| fail("write", e))?;
    f.sync_all().map_err(|e| fail("sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| fail("replace", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raid.state");
        assert_eq!(load(&path), Ok(None));
        let mut saved = Saved::default();
        saved
            .degraded
            .insert("b".into(), "disagreed with the other backends".into());
        save(&path, &saved).unwrap();
        assert_eq!(load(&path), Ok(Some(saved)));
        std::fs::write(&path, b"{not json").unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            err.contains("raid.state") && err.contains("not valid"),
            "{err}"
        );
    }
}
