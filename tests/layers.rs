//! The crate's layering (`src/lib.rs`'s tour): each layer imports only
//! the layers listed before it. Read off the source, so an import that
//! points up (say `raid` using `config`, or `storage` naming `raid`) fails
//! here, naming the file and the line.

use std::path::{Path, PathBuf};

/// Bottom first. `bench` (feature `bench`) uses anything below `admin`.
const LAYERS: &[&str] = &[
    "net", "status", "locks", "handoff", "storage", "zeo", "server", "raid", "ha", "config",
    "open", "bench", "admin", "notify", "instance",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directory reads") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to (`src/raid/x.rs` → `raid`).
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    Some(first.trim_end_matches(".rs").to_string())
}

/// Test code may reach anywhere: a file of tests, or the `#[cfg(test)]`
/// module at a file's end.
fn is_test_file(file: &Path) -> bool {
    let s = file.to_string_lossy();
    s.contains("/tests/")
        || s.ends_with("/tests.rs")
        || s.ends_with("/conformance.rs")
        || s.ends_with("/testutil.rs")
}

#[test]
fn no_layer_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    let mut upward = Vec::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let Some(own) = layer_of(&src, file).and_then(|l| rank(&l).map(|r| (l, r))) else {
            continue; // lib.rs, main.rs: the top
        };
        let text = std::fs::read_to_string(file).expect("a source file reads");
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(r) = rank(&name) {
                    if r > own.1 {
                        upward.push(format!(
                            "{}:{}: {} imports {name}: {}",
                            file.display(),
                            n + 1,
                            own.0,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up the layers (see src/lib.rs):\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in &files {
        let Some(l) = layer_of(&src, file) else {
            continue;
        };
        assert!(
            LAYERS.contains(&l.as_str()) || l == "lib" || l == "main",
            "{}: module {l:?} has no place in tests/layers.rs's LAYERS (and src/lib.rs's tour)",
            file.display()
        );
    }
}
