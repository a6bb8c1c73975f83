//! `zeoraid import-config`: a `runzeo` ZConfig file (`<zeo>`, storages,
//! `<ssl>`) or a gocept.zeoraid one (`<raidstorage>` over `<zeoclient>` and
//! `<filestorage>` members) translated into the equivalent `zeoraid.toml`.
//!
//! Pure: [`translate`] takes the tree [`super::zconfig::parse`] made and
//! returns the TOML text; every setting without an equivalent is kept in
//! it as a comment that says so, and what cannot be read (a bad address,
//! a boolean that is not one, a storage without its path) is an error
//! naming the file and the line. The text loads with [`super::Config`]'s
//! own parser (the command checks that before writing it).

use super::zconfig::{Document, Error, Key, Section};
use std::fmt::Write as _;

/// One TOML table being written: its header, its `key = value` lines and
/// the comments about what was left behind.
#[derive(Default)]
struct Table {
    header: String,
    lines: Vec<String>,
}

impl Table {
    fn new(header: &str) -> Table {
        Table {
            header: header.to_string(),
            lines: Vec::new(),
        }
    }
    fn set(&mut self, key: &str, value: String) {
        self.lines.push(format!("{key} = {value}"));
    }
    fn note(&mut self, k: &Key, why: &str) {
        self.lines.push(format!(
            "# {} {}  ({}:{}): {why}",
            k.key, k.value, k.file, k.line
        ));
    }
}

fn err(at: &Key, message: String) -> Error {
    Error {
        file: at.file.clone(),
        line: at.line,
        message,
    }
}

fn section_err(s: &Section, message: String) -> Error {
    Error {
        file: s.file.clone(),
        line: s.line,
        message,
    }
}

/// A TOML string literal.
pub fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// ZConfig's `boolean`.
pub fn boolean(k: &Key) -> Result<bool, Error> {
    match k.value.to_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        v => Err(err(
            k,
            format!("{}: {v:?} is not a boolean (use true or false)", k.key),
        )),
    }
}

fn integer(k: &Key) -> Result<u64, Error> {
    k.value
        .trim()
        .parse()
        .map_err(|_| err(k, format!("{}: {:?} is not a whole number", k.key, k.value)))
}

/// ZEO's `socket-binding-address` (`8100`, `host:8100`, `[::1]:8100`) or a
/// Unix socket path, as `server.listen` takes it.
pub fn listen_address(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.contains('/') {
        return Ok(v.to_string());
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return port(v).map(|p| format!("0.0.0.0:{p}"));
    }
    let Some((host, p)) = v.rsplit_once(':') else {
        return Err(format!(
            "{v:?} is neither a port, host:port nor a socket path"
        ));
    };
    let p = port(p)?;
    let a = match host {
        "" => format!("0.0.0.0:{p}"),
        "localhost" => format!("127.0.0.1:{p}"),
        _ => format!("{host}:{p}"),
    };
    match a.parse::<std::net::SocketAddr>() {
        Ok(_) => Ok(a),
        Err(_) => Err(format!(
            "{v:?}: zeoraid listens on a numeric IP; write the address {host:?} resolves to"
        )),
    }
}

fn port(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .map_err(|_| format!("{p:?} is not a port (0 to 65535)"))
}

/// A ZEO client's `server` (the same forms; a Unix socket path as is).
fn backend_address(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.contains('/') {
        return Ok(v.to_string());
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return port(v).map(|p| format!("127.0.0.1:{p}"));
    }
    match v.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() => port(p).map(|p| format!("{host}:{p}")),
        _ => Err(format!(
            "{v:?} is neither a port, host:port nor a socket path"
        )),
    }
}

const STORAGES: &[&str] = &["filestorage", "mappingstorage", "raidstorage"];

/// Translate a parsed ZConfig file (named `source` in the header comment).
pub fn translate(doc: &Document, source: &str) -> Result<String, Error> {
    let root = &doc.root;
    let mut top_notes: Vec<String> = Vec::new();
    let mut server = Table::new("[server]");
    let mut tls: Option<Table> = None;
    let mut all_read_only = false;
    for pkg in &doc.imports {
        if pkg != "gocept.zeoraid" && pkg != "ZEO" && pkg != "ZODB" {
            top_notes.push(format!(
                "# %import {pkg}: its storage types are not known to zeoraid"
            ));
        }
    }
    for k in &root.keys {
        top_notes.push(format!(
            "# {} {}  ({}:{}): a top-level setting with no equivalent",
            k.key, k.value, k.file, k.line
        ));
    }
    let mut storages: Vec<(Table, Vec<Table>)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for s in &root.sections {
        match s.kind.as_str() {
            "zeo" => zeo_section(s, &mut server, &mut tls, &mut all_read_only)?,
            kind if STORAGES.contains(&kind) => {
                let name = s.name.clone().unwrap_or_else(|| "1".into());
                if names.contains(&name) {
                    return Err(section_err(
                        s,
                        format!("a second storage named {name:?} (ZEO storage names are unique)"),
                    ));
                }
                names.push(name.clone());
                storages.push(storage(s, &name)?);
            }
            "eventlog" | "logger" | "runner" => top_notes.push(format!(
                "# <{}> ({}:{}): zeoraid logs to stderr (the journal under systemd); \
                 RUST_LOG=info|debug sets the level",
                s.kind, s.file, s.line
            )),
            other => top_notes.push(format!(
                "# <{other}{}> ({}:{}): no equivalent; not imported",
                s.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default(),
                s.file,
                s.line
            )),
        }
    }
    if storages.is_empty() {
        return Err(Error {
            file: root.file.clone(),
            line: 1,
            message: "no storage to import (expected <filestorage>, <mappingstorage> or \
                      <raidstorage>)"
                .into(),
        });
    }
    let mut out = String::new();
    let _ = writeln!(out, "# Imported by `zeoraid import-config` from {source}.");
    out.push_str(
        "# Settings with no zeoraid equivalent are kept as comments that say so.\n\
         # Relative paths were relative to where runzeo ran; here they are\n\
         # relative to this file's directory.\n",
    );
    for n in &top_notes {
        out.push_str(n);
        out.push('\n');
    }
    emit(&mut out, &server);
    if let Some(t) = &tls {
        emit(&mut out, t);
    }
    for (mut table, backends) in storages {
        if all_read_only {
            table.lines.retain(|l| !l.starts_with("read-only = "));
            table.set("read-only", "true".into());
        }
        emit(&mut out, &table);
        for b in &backends {
            emit(&mut out, b);
        }
    }
    Ok(out)
}

fn emit(out: &mut String, t: &Table) {
    out.push('\n');
    out.push_str(&t.header);
    out.push('\n');
    for l in &t.lines {
        out.push_str(l);
        out.push('\n');
    }
}

fn zeo_section(
    s: &Section,
    server: &mut Table,
    tls: &mut Option<Table>,
    all_read_only: &mut bool,
) -> Result<(), Error> {
    for k in &s.keys {
        match k.key.as_str() {
            "address" => {
                let a = listen_address(&k.value).map_err(|e| err(k, format!("address: {e}")))?;
                server.set("listen", quote(&a));
            }
            "read-only" => {
                *all_read_only = boolean(k)?;
                server.lines.push(format!(
                    "# read-only {}  ({}:{}): set on every storage below",
                    k.value, k.file, k.line
                ));
            }
            "invalidation-queue-size" => {
                server.set("invalidation-queue-size", integer(k)?.to_string())
            }
            "transaction-timeout" => {
                server.set("transaction-timeout", format!("{}.0", integer(k)?));
            }
            "invalidation-age" => server.note(
                k,
                "no equivalent: a client further behind than invalidation-queue-size \
                 transactions verifies its cache (raise that instead)",
            ),
            "pid-filename" => server.note(k, "no equivalent: systemd (Type=notify) tracks the pid"),
            "client-conflict-resolution" => server.note(
                k,
                "no setting needed: clients resolve conflicts (ZEO 5), zeoraid resolves \
                 undo conflicts with [conflict-resolution]",
            ),
            "msgpack" => server.note(
                k,
                "no setting needed: zeoraid speaks ZEO 5's msgpack flavour",
            ),
            _ => server.note(k, "no equivalent"),
        }
    }
    for sub in &s.sections {
        if sub.kind != "ssl" {
            server.lines.push(format!(
                "# <{}> ({}:{}): no equivalent",
                sub.kind, sub.file, sub.line
            ));
            continue;
        }
        let mut t = Table::new("[server.tls]");
        for k in &sub.keys {
            match k.key.as_str() {
                "certificate" => t.set("certificate", quote(&k.value)),
                "key" => t.set("key", quote(&k.value)),
                "authenticate" => t.set("client-ca", quote(&k.value)),
                "password-function" => {
                    t.note(k, "no equivalent: the key file must not be encrypted")
                }
                _ => t.note(k, "no equivalent"),
            }
        }
        if !t.lines.iter().any(|l| l.starts_with("certificate = "))
            || !t.lines.iter().any(|l| l.starts_with("key = "))
        {
            return Err(section_err(
                sub,
                "<ssl> needs both certificate and key for zeoraid's listener".into(),
            ));
        }
        *tls = Some(t);
    }
    Ok(())
}

/// A top-level storage section: its `[[storage]]` and, for a
/// `<raidstorage>`, its `[[storage.backend]]`s.
fn storage(s: &Section, name: &str) -> Result<(Table, Vec<Table>), Error> {
    let mut t = Table::new("[[storage]]");
    t.set("name", quote(name));
    let mut backends = Vec::new();
    match s.kind.as_str() {
        "filestorage" => {
            t.set("kind", quote("file"));
            file_keys(s, &mut t, true)?;
        }
        "mappingstorage" => {
            t.set("kind", quote("memory"));
            for k in &s.keys {
                t.note(k, "no equivalent");
            }
        }
        _ => {
            t.set("kind", quote("raid"));
            for k in &s.keys {
                match k.key.as_str() {
                    "read-only" => t.set("read-only", boolean(k)?.to_string()),
                    "fail-mode" => match k.value.to_lowercase().as_str() {
                        v @ ("close" | "read-only") => t.set("fail-mode", quote(v)),
                        v => {
                            return Err(err(
                                k,
                                format!("fail-mode: {v:?} is neither close nor read-only"),
                            ))
                        }
                    },
                    "blob-dir" => t.note(
                        k,
                        "no equivalent: zeoraid streams blobs to each backend; give each \
                         file backend its own blob-dir",
                    ),
                    "shared-blob-dir" => t.note(k, "no equivalent"),
                    "cluster-mode" => t.note(
                        k,
                        "no equivalent: zeoraid controllers coordinate through [ha] (etcd)",
                    ),
                    _ => t.note(k, "no equivalent"),
                }
            }
            for (i, m) in s.sections.iter().enumerate() {
                backends.push(member(m, i + 1)?);
            }
            if backends.is_empty() {
                return Err(section_err(
                    s,
                    "a <raidstorage> without <zeoclient> or <filestorage> members".into(),
                ));
            }
        }
    }
    Ok((t, backends))
}

/// `path`, `blob-dir`, `read-only`, `pack-gc` of a `<filestorage>`.
fn file_keys(s: &Section, t: &mut Table, top: bool) -> Result<(), Error> {
    if s.get("path").is_none() {
        return Err(section_err(s, format!("<{}> without a path", s.kind)));
    }
    for k in &s.keys {
        match k.key.as_str() {
            "path" => t.set("path", quote(&k.value)),
            "blob-dir" => t.set("blob-dir", quote(&k.value)),
            "pack-gc" => t.set("pack-gc", boolean(k)?.to_string()),
            "read-only" if top => t.set("read-only", boolean(k)?.to_string()),
            "read-only" => t.note(
                k,
                "no equivalent for one backend: the array is read-only or not",
            ),
            "quota" => t.note(k, "no equivalent: a full disk fails the commit cleanly"),
            "create" => t.note(
                k,
                "no equivalent: a missing Data.fs is created, an existing one kept",
            ),
            "pack-keep-old" => t.note(k, "no equivalent: pack keeps no Data.fs.old"),
            _ => t.note(k, "no equivalent"),
        }
    }
    Ok(())
}

fn member(m: &Section, n: usize) -> Result<Table, Error> {
    let mut t = Table::new("[[storage.backend]]");
    let name = m.name.clone().unwrap_or_else(|| format!("b{n}"));
    t.set("name", quote(&name));
    match m.kind.as_str() {
        "filestorage" => {
            t.set("kind", quote("file"));
            file_keys(m, &mut t, false)?;
        }
        "zeoclient" => {
            t.set("kind", quote("zeo"));
            let mut servers = m.all("server");
            let Some(first) = servers.next() else {
                return Err(section_err(m, "<zeoclient> without a server".into()));
            };
            let a = backend_address(&first.value).map_err(|e| err(first, format!("server: {e}")))?;
            t.set("address", quote(&a));
            for more in servers {
                t.note(more, "no equivalent: a backend has one address; add it as a backend of its own");
            }
            t.set(
                "storage",
                quote(m.get("storage").map_or("1", |k| k.value.as_str())),
            );
            for k in &m.keys {
                match k.key.as_str() {
                    "server" | "storage" => {}
                    "blob-dir" => t.set("blob-dir", quote(&k.value)),
                    "shared-blob-dir" | "blob-cache-size" | "blob-cache-size-check" => t.note(
                        k,
                        "no equivalent: zeoraid keeps its own cache of a backend's blobs in blob-dir",
                    ),
                    _ => t.note(k, "no equivalent (a client-side setting)"),
                }
            }
            for sub in &m.sections {
                if sub.kind != "ssl" {
                    t.lines.push(format!("# <{}> ({}:{}): no equivalent", sub.kind, sub.file, sub.line));
                    continue;
                }
                // Keys of [storage.backend.tls] come after the backend's own.
                let mut tls = Vec::new();
                for k in &sub.keys {
                    match k.key.as_str() {
                        "certificate" => tls.push(format!("certificate = {}", quote(&k.value))),
                        "key" => tls.push(format!("key = {}", quote(&k.value))),
                        "authenticate" => tls.push(format!("ca = {}", quote(&k.value))),
                        "server-hostname" => {
                            tls.push(format!("server-hostname = {}", quote(&k.value)))
                        }
                        _ => tls.push(format!(
                            "# {} {}  ({}:{}): no equivalent",
                            k.key, k.value, k.file, k.line
                        )),
                    }
                }
                t.lines.push(String::new());
                t.lines.push("[storage.backend.tls]".into());
                t.lines.extend(tls);
            }
        }
        other => {
            return Err(section_err(
                m,
                format!("<{other}> as a <raidstorage> member: zeoraid's backends are <zeoclient> or <filestorage>"),
            ))
        }
    }
    Ok(t)
}

/// The IO edge: read `path` (and what it `%include`s, relative to it),
/// translate it, and check the result loads as `out` (where it will be
/// written; `None`: beside the source). Errors name the file and line.
pub fn import_file(
    path: &std::path::Path,
    out: Option<&std::path::Path>,
) -> Result<String, String> {
    struct Files;
    impl super::zconfig::Sources for Files {
        fn env(&self, name: &str) -> Option<String> {
            std::env::var(name).ok()
        }
        fn include(&self, from: &str, target: &str) -> Result<(String, String), String> {
            let base = std::path::Path::new(from)
                .parent()
                .unwrap_or(std::path::Path::new("."));
            let file = base.join(target);
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            Ok((file.display().to_string(), text))
        }
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let doc = super::zconfig::parse(&name, &text, &Files).map_err(|e| e.to_string())?;
    let toml = translate(&doc, &name).map_err(|e| e.to_string())?;
    let check = out.map_or_else(|| path.with_extension("toml"), std::path::Path::to_path_buf);
    super::Config::parse(&toml, &check).map_err(|e| {
        format!("{name}: the imported config does not load ({e}); please report this with the file")
    })?;
    Ok(toml)
}

#[cfg(test)]
mod tests {
    use super::super::zconfig::{parse, NoSources};
    use super::*;

    fn import(text: &str) -> Result<String, Error> {
        translate(&parse("zeo.conf", text, &NoSources)?, "zeo.conf")
    }

    #[test]
    fn listen_address_table() {
        for (v, want) in [
            ("8100", Ok("0.0.0.0:8100")),
            (":8100", Ok("0.0.0.0:8100")),
            ("localhost:8100", Ok("127.0.0.1:8100")),
            ("zeo.example.com:8100", Err("numeric IP")),
            ("[::1]:8100", Ok("[::1]:8100")),
            ("/run/zeo/zeo.sock", Ok("/run/zeo/zeo.sock")),
            ("host:99999", Err("not a port")),
            ("nowhere", Err("neither a port")),
        ] {
            match (listen_address(v), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{v}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{v}: {e}"),
                (got, want) => panic!("{v}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn translations_table() {
        for (text, wants) in [
            (
                "<zeo>\n address 8100\n invalidation-age 60\n</zeo>\n<filestorage 1>\n path Data.fs\n</filestorage>",
                vec!["listen = \"0.0.0.0:8100\"", "# invalidation-age 60  (zeo.conf:3): no equivalent", "kind = \"file\"", "path = \"Data.fs\""],
            ),
            (
                "<zeo>\n address 8100\n read-only true\n</zeo>\n<filestorage>\n path a.fs\n blob-dir blobs\n quota 1MB\n</filestorage>",
                vec!["name = \"1\"", "blob-dir = \"blobs\"", "read-only = true", "# quota 1MB"],
            ),
            (
                "<zeo>\n address 1\n <ssl>\n  certificate c.pem\n  key k.pem\n  authenticate ca.pem\n </ssl>\n</zeo>\n<mappingstorage x/>",
                vec!["[server.tls]", "client-ca = \"ca.pem\"", "kind = \"memory\""],
            ),
            (
                "%import gocept.zeoraid\n<raidstorage main>\n fail-mode read-only\n <zeoclient>\n  server 8101\n </zeoclient>\n <filestorage local>\n  path l.fs\n </filestorage>\n</raidstorage>",
                vec!["kind = \"raid\"", "fail-mode = \"read-only\"", "address = \"127.0.0.1:8101\"", "storage = \"1\"", "name = \"local\""],
            ),
        ] {
            let out = import(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for w in wants {
                assert!(out.contains(w), "{w:?} not in\n{out}");
            }
            let loaded = crate::config::Config::parse(&out, std::path::Path::new("/tmp/imported.toml"));
            if !cfg!(feature = "tls") && out.contains("[server.tls]") {
                // A build without TLS refuses the settings, and says how to mend it.
                let e = loaded.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(e.contains("built without TLS"), "{out}\nloaded without TLS: {e}");
                continue;
            }
            let cfg = loaded.unwrap_or_else(|e| panic!("{out}\ndoes not load: {e}"));
            assert!(!cfg.storage.is_empty());
        }
    }

    #[test]
    fn what_cannot_be_read_names_the_line() {
        for (text, line, needle) in [
            (
                "<zeo>\n address nowhere\n</zeo>\n<mappingstorage/>",
                2,
                "address",
            ),
            ("<filestorage>\n</filestorage>", 1, "without a path"),
            (
                "<filestorage>\n path a\n read-only maybe\n</filestorage>",
                3,
                "not a boolean",
            ),
            ("<zeo>\n address 1\n</zeo>", 1, "no storage to import"),
            (
                "<mappingstorage/>\n<mappingstorage/>",
                2,
                "a second storage",
            ),
            ("<raidstorage>\n</raidstorage>", 1, "without <zeoclient>"),
            (
                "<raidstorage>\n <zeoclient>\n </zeoclient>\n</raidstorage>",
                2,
                "without a server",
            ),
            (
                "<raidstorage>\n <demostorage>\n </demostorage>\n</raidstorage>",
                2,
                "as a <raidstorage> member",
            ),
            (
                "<zeo>\n <ssl>\n  key k\n </ssl>\n</zeo>\n<mappingstorage/>",
                2,
                "certificate and key",
            ),
        ] {
            let e = import(text)
                .err()
                .unwrap_or_else(|| panic!("{text} imported"));
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
