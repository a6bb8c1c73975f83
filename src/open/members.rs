//! Which backends an array opens and what a reload changes, from the
//! config's `[[storage.backend]]`s and the state file's memory of backends
//! added and removed at runtime. Pure functions, table-tested.

use crate::config::BackendConfig;

/// The backends to open: the config's, minus those removed at runtime,
/// plus those added at runtime (as the state file remembers them). Pure.
pub fn merge_saved(
    configured: &[BackendConfig],
    added: &[BackendConfig],
    removed: &[String],
) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = configured
        .iter()
        .filter(|b| !removed.contains(&b.name))
        .cloned()
        .collect();
    for a in added {
        if !out.iter().any(|b| b.name == a.name) {
            out.push(a.clone());
        }
    }
    out
}

/// The configured backends split by mode: the synchronous ones, and the
/// names of the off-site mirrors.
pub fn split_modes(backends: &[BackendConfig]) -> (Vec<BackendConfig>, Vec<String>) {
    let (sync, offsite): (Vec<_>, Vec<_>) = backends
        .iter()
        .cloned()
        .partition(|b| b.mode == crate::config::BackendMode::Sync);
    (sync, offsite.into_iter().map(|b| b.name).collect())
}

/// What a reload changes: backends to add (from the file) and to remove
/// (running, no longer in the file). Pure.
pub fn diff(running: &[String], configured: &[BackendConfig]) -> (Vec<BackendConfig>, Vec<String>) {
    let add = configured
        .iter()
        .filter(|b| !running.contains(&b.name))
        .cloned()
        .collect();
    let remove = running
        .iter()
        .filter(|n| !configured.iter().any(|b| &b.name == *n))
        .cloned()
        .collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str) -> BackendConfig {
        BackendConfig::memory(name)
    }

    fn names(v: &[BackendConfig]) -> Vec<&str> {
        v.iter().map(|b| b.name.as_str()).collect()
    }

    #[test]
    fn merge_saved_table() {
        // (configured, added at runtime, removed at runtime, want)
        type Case = (
            Vec<BackendConfig>,
            Vec<BackendConfig>,
            Vec<String>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (vec![b("a"), b("b")], vec![], vec![], vec!["a", "b"]),
            (
                vec![b("a"), b("b")],
                vec![b("c")],
                vec![],
                vec!["a", "b", "c"],
            ),
            (vec![b("a"), b("b")], vec![], vec!["b".into()], vec!["a"]),
            (vec![b("a"), b("b")], vec![b("b")], vec![], vec!["a", "b"]),
            (vec![b("a")], vec![b("c")], vec!["a".into()], vec!["c"]),
        ];
        for (configured, added, removed, want) in cases {
            assert_eq!(names(&merge_saved(&configured, &added, &removed)), want);
        }
    }

    #[test]
    fn diff_table() {
        let run = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (add, remove) = diff(&run(&["a", "b"]), &[b("a"), b("b")]);
        assert!(add.is_empty() && remove.is_empty());
        let (add, remove) = diff(&run(&["a", "b"]), &[b("a"), b("c")]);
        assert_eq!((names(&add), remove), (vec!["c"], vec!["b".to_string()]));
        let (add, remove) = diff(&run(&["a"]), &[b("a"), b("b"), b("c")]);
        assert_eq!(
            (names(&add), remove),
            (vec!["b", "c"], Vec::<String>::new())
        );
    }
}
