//! A parser of ZConfig files, the syntax of `runzeo`'s `zeo.conf`,
//! `zope.conf` and gocept.zeoraid's configs, for `zeoraid import-config`
//! ([`super::import`] translates the tree).
//!
//! The syntax, as ZConfig's `cfgparser.py` and `substitution.py` read it:
//!
//! - one item a line, leading and trailing blanks ignored; a line that
//!   starts with `#` is a comment (a `#` later on a line is data);
//! - `<type [name]>` opens a section, `</type>` closes it, `<type name/>`
//!   is an empty one; types, names and keys are case-insensitive (kept in
//!   lower case here);
//! - `key value`: the value is the rest of the line (may be empty); a key
//!   may repeat (ZEO's `server` in a `<zeoclient>`);
//! - `%define name value`, `%import package`, `%include file`;
//! - in values: `$name` and `${name}` (a `%define`), `$(NAME)` (the
//!   environment), `$$` (a dollar).
//!
//! Pure: the environment and included files come in through [`Sources`];
//! every error names the file and the line.

use std::collections::HashMap;
use std::fmt;

/// A `key value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Lower case.
    pub key: String,
    /// Substituted.
    pub value: String,
    pub file: String,
    pub line: usize,
}

/// A section: `<type name>` … `</type>`; the file's top level is one with
/// an empty type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Lower case; empty for the top level.
    pub kind: String,
    /// Lower case, as ZConfig keeps it.
    pub name: Option<String>,
    pub file: String,
    pub line: usize,
    pub keys: Vec<Key>,
    pub sections: Vec<Section>,
}

impl Section {
    /// The last value of `key` (ZConfig's single-valued keys).
    pub fn get(&self, key: &str) -> Option<&Key> {
        self.keys.iter().rev().find(|k| k.key == key)
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> impl Iterator<Item = &Key> {
        let key = key.to_string();
        self.keys.iter().filter(move |k| k.key == key)
    }
}

/// A parsed file: its top level and the packages it `%import`s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    pub root: Section,
    pub imports: Vec<String>,
}

/// What cannot be read, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for Error {}

/// Where the parser gets what is not in the text: environment variables
/// (`$(NAME)`) and `%include`d files.
pub trait Sources {
    fn env(&self, name: &str) -> Option<String>;
    /// The file `target` names, included from `from`: its display name
    /// and text.
    fn include(&self, from: &str, target: &str) -> Result<(String, String), String>;
}

/// No environment, no includes (tests, and files that need neither).
pub struct NoSources;

impl Sources for NoSources {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn include(&self, _: &str, target: &str) -> Result<(String, String), String> {
        Err(format!("cannot include {target:?} here"))
    }
}

/// Parse `text`, the contents of `file`.
pub fn parse(file: &str, text: &str, sources: &dyn Sources) -> Result<Document, Error> {
    let mut p = Parser {
        sources,
        defines: HashMap::new(),
        imports: Vec::new(),
        depth: 0,
    };
    let mut stack = vec![Section {
        file: file.to_string(),
        ..Section::default()
    }];
    p.lines(file, text, &mut stack)?;
    if stack.len() > 1 {
        let open = &stack[stack.len() - 1];
        return Err(Error {
            file: open.file.clone(),
            line: open.line,
            message: format!(
                "section <{}> is never closed (add </{}>)",
                open.kind, open.kind
            ),
        });
    }
    let root = stack.pop().unwrap_or_default();
    Ok(Document {
        root,
        imports: p.imports,
    })
}

struct Parser<'a> {
    sources: &'a dyn Sources,
    defines: HashMap<String, String>,
    imports: Vec<String>,
    depth: usize,
}

/// ZConfig's `_name_re` for keys, types and section names.
fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '(' || c == ')')
}

/// ZConfig's `isname`: a `%define` name.
fn is_define_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Split `key value` at the first blank.
fn split_key(rest: &str) -> (&str, &str) {
    match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim_start()),
        None => (rest, ""),
    }
}

impl Parser<'_> {
    fn lines(&mut self, file: &str, text: &str, stack: &mut Vec<Section>) -> Result<(), Error> {
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |message: String| Error {
                file: file.to_string(),
                line,
                message,
            };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if let Some(rest) = l.strip_prefix("</") {
                let Some(kind) = rest.strip_suffix('>') else {
                    return Err(err(format!("malformed section end {l:?} (no closing '>')")));
                };
                let kind = kind.trim().to_lowercase();
                if stack.len() < 2 {
                    return Err(err(format!("</{kind}> closes no open section")));
                }
                let open = stack.pop().unwrap_or_default();
                if open.kind != kind {
                    return Err(err(format!(
                        "</{kind}> does not match <{}> opened at line {}",
                        open.kind, open.line
                    )));
                }
                if let Some(parent) = stack.last_mut() {
                    parent.sections.push(open);
                }
            } else if let Some(rest) = l.strip_prefix('<') {
                let Some(inner) = rest.strip_suffix('>') else {
                    return Err(err(format!(
                        "malformed section start {l:?} (no closing '>')"
                    )));
                };
                let (inner, empty) = match inner.strip_suffix('/') {
                    Some(i) => (i, true),
                    None => (inner, false),
                };
                let mut words = inner.split_whitespace();
                let kind = words.next().unwrap_or("");
                let name = words.next();
                if !is_token(kind) || words.next().is_some() || name.is_some_and(|n| !is_token(n)) {
                    return Err(err(format!(
                        "malformed section header {l:?} (expected <type> or <type name>)"
                    )));
                }
                let section = Section {
                    kind: kind.to_lowercase(),
                    name: name.map(str::to_lowercase),
                    file: file.to_string(),
                    line,
                    ..Section::default()
                };
                if empty {
                    if let Some(parent) = stack.last_mut() {
                        parent.sections.push(section);
                    }
                } else {
                    stack.push(section);
                }
            } else if let Some(rest) = l.strip_prefix('%') {
                let (directive, arg) = split_key(rest);
                if arg.is_empty() {
                    return Err(err(format!("missing argument to %{directive}")));
                }
                match directive.to_lowercase().as_str() {
                    "define" => {
                        let (name, value) = split_key(arg);
                        let name = name.to_lowercase();
                        if !is_define_name(&name) {
                            return Err(err(format!("not a legal %define name: {name:?}")));
                        }
                        let value = self.substitute(value).map_err(err)?;
                        if let Some(old) = self.defines.get(&name) {
                            if *old != value {
                                return Err(err(format!("cannot redefine {name:?}")));
                            }
                        }
                        self.defines.insert(name, value);
                    }
                    "import" => {
                        let package = self.substitute(arg).map_err(err)?;
                        self.imports.push(package);
                    }
                    "include" => {
                        let target = self.substitute(arg).map_err(err)?;
                        if self.depth > 16 {
                            return Err(err(format!("%include {target:?} nests too deep")));
                        }
                        let (name, text) = self
                            .sources
                            .include(file, &target)
                            .map_err(|e| err(format!("%include {target:?}: {e}")))?;
                        self.depth += 1;
                        let done = self.lines(&name, &text, stack);
                        self.depth -= 1;
                        done?;
                    }
                    other => {
                        return Err(err(format!(
                            "unknown directive %{other} (ZConfig knows %define, %import, %include)"
                        )))
                    }
                }
            } else {
                let (key, value) = split_key(l);
                if !is_token(key) {
                    return Err(err(format!("malformed line {l:?}")));
                }
                let value = self.substitute(value).map_err(err)?;
                if let Some(section) = stack.last_mut() {
                    section.keys.push(Key {
                        key: key.to_lowercase(),
                        value,
                        file: file.to_string(),
                        line,
                    });
                }
            }
        }
        Ok(())
    }

    /// `$name`, `${name}`, `$(NAME)`, `$$`, as ZConfig's `substitute`.
    fn substitute(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let name_len = |t: &str| {
                t.char_indices()
                    .find(|(j, c)| {
                        !(c.is_ascii_alphanumeric() || *c == '_') || (*j == 0 && c.is_ascii_digit())
                    })
                    .map_or(t.len(), |(j, _)| j)
            };
            match after.chars().next() {
                None => {
                    return Err("a lone '$' at the end of a value (write $$ for a dollar)".into())
                }
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                }
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    let inner = &after[1..];
                    let n = name_len(inner);
                    if n == 0 {
                        return Err(format!("'${open}' not followed by a name"));
                    }
                    if !inner[n..].starts_with(close) {
                        return Err(format!(
                            "'${open}{}' not followed by '{close}'",
                            &inner[..n]
                        ));
                    }
                    let name = &inner[..n];
                    out.push_str(&self.lookup(name, open == '(')?);
                    rest = &inner[n + 1..];
                }
                Some(_) => {
                    let n = name_len(after);
                    if n == 0 {
                        return Err("'$' not followed by a name, '{', '(' or '$'".into());
                    }
                    out.push_str(&self.lookup(&after[..n], false)?);
                    rest = &after[n..];
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup(&self, name: &str, env: bool) -> Result<String, String> {
        let found = if env {
            self.sources.env(name)
        } else {
            self.defines.get(&name.to_lowercase()).cloned()
        };
        found.ok_or_else(|| {
            if env {
                format!("the environment variable {name:?} is not set")
            } else {
                format!("${name} is not defined (add %define {name} VALUE before it)")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env;
    impl Sources for Env {
        fn env(&self, name: &str) -> Option<String> {
            (name == "HOME").then(|| "/home/zope".to_string())
        }
        fn include(&self, _: &str, target: &str) -> Result<(String, String), String> {
            match target {
                "storage.conf" => Ok((
                    "storage.conf".into(),
                    "<filestorage 2>\n  path $var/2.fs\n</filestorage>\n".into(),
                )),
                _ => Err("no such file".into()),
            }
        }
    }

    fn ok(text: &str) -> Document {
        parse("t.conf", text, &Env).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn values_are_substituted() {
        for (text, want) in [
            ("k v", "v"),
            ("k", ""),
            ("K   spaced   out  ", "spaced   out"),
            ("%define var /srv\nk $var/Data.fs", "/srv/Data.fs"),
            ("%define VAR /srv\nk ${var}x", "/srvx"),
            ("%define a 1\n%define b ${a}2\nk $b", "12"),
            ("k $$5", "$5"),
            ("k $(HOME)/x", "/home/zope/x"),
            ("k a # not a comment", "a # not a comment"),
            ("%define a x\n%define a x\nk $a", "x"),
        ] {
            let doc = ok(text);
            assert_eq!(
                doc.root.get("k").map(|k| k.value.as_str()),
                Some(want),
                "{text:?}"
            );
        }
    }

    #[test]
    fn sections_nest_and_keys_repeat() {
        let doc = ok(
            "# a comment\n%import gocept.zeoraid\n<ZEO>\n  address 8100\n</zeo>\n\
             <RaidStorage Main>\n  <zeoclient>\n    server a:1\n    server b:2\n  </zeoclient>\n\
             <filestorage x/>\n</raidstorage>\n%define var /v\n%include storage.conf\n",
        );
        assert_eq!(doc.imports, vec!["gocept.zeoraid"]);
        let s = &doc.root.sections;
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].kind.as_str(), s[0].line), ("zeo", 3));
        assert_eq!(s[1].name.as_deref(), Some("main"));
        let zc = &s[1].sections[0];
        let servers: Vec<&str> = zc.all("server").map(|k| k.value.as_str()).collect();
        assert_eq!(servers, ["a:1", "b:2"]);
        assert_eq!(s[1].sections[1].kind, "filestorage");
        assert_eq!(s[2].file, "storage.conf");
        assert_eq!(s[2].get("path").map(|k| k.value.as_str()), Some("/v/2.fs"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("<zeo>\n  address 1\n", 1, "never closed"),
            ("</zeo>", 1, "closes no open section"),
            (
                "<zeo>\n</filestorage>",
                2,
                "does not match <zeo> opened at line 1",
            ),
            ("<zeo", 1, "no closing '>'"),
            ("<zeo a b>", 1, "malformed section header"),
            ("\n\nk $nope", 3, "$nope is not defined"),
            ("k ${a", 1, "not followed by '}'"),
            ("k $", 1, "lone '$'"),
            ("k $(NOPE)", 1, "\"NOPE\" is not set"),
            ("%frob x", 1, "unknown directive"),
            ("%define", 1, "missing argument"),
            ("%define 1a x", 1, "not a legal %define name"),
            ("%define a x\n%define a y", 2, "cannot redefine"),
            ("%include other.conf", 1, "no such file"),
            ("(k) v", 1, "malformed line"),
        ] {
            let e = parse("t.conf", text, &Env)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert_eq!((e.file.as_str(), e.line), ("t.conf", line), "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }
}
