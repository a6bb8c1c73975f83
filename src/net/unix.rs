//! Unix socket files: a stale one left by a crash (`kill -9`) is replaced
//! at start, a live one (another server answers on it) or a file that is
//! not a socket is refused, and ours is removed at a clean stop.
//!
//! Mode and owner: the socket is created by the user zeoraid runs as, with
//! its primary group, and the mode the umask gives (`srwxr-xr-x` under the
//! usual 022, which lets only the owner connect); `[server] socket-mode`
//! (octal, for example `"0660"`) sets the mode explicitly after binding.
//! Access is then controlled by the mode and by the directory's
//! permissions; put the socket in a directory only the right users reach
//! (for example `/run/zeoraid`, owned by the service user).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// What is at the socket path before we bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    /// A socket nobody answers on (`connect` refused): left by a crash.
    DeadSocket,
    /// A socket a running server answers on.
    LiveSocket,
    /// A regular file, directory, ...
    NotASocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Bind,
    RemoveStaleThenBind,
    Refuse,
}

/// What to do about what is at the path (pure).
pub fn decide(existing: Existing) -> Action {
    match existing {
        Existing::Nothing => Action::Bind,
        Existing::DeadSocket => Action::RemoveStaleThenBind,
        Existing::LiveSocket | Existing::NotASocket => Action::Refuse,
    }
}

/// Parse `socket-mode`: octal permission bits, `"0660"` or `"660"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal permission mode such as \"0660\""
        )),
    }
}

fn look(path: &Path) -> io::Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Ok(Existing::NotASocket);
    }
    Ok(match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Existing::LiveSocket,
        Err(_) => Existing::DeadSocket,
    })
}

/// Make `path` free to bind: remove a stale socket, refuse anything else.
pub fn prepare(path: &Path) -> io::Result<()> {
    let existing = look(path)?;
    match decide(existing) {
        Action::Bind => Ok(()),
        Action::RemoveStaleThenBind => {
            log::warn!(
                "removing stale Unix socket {} (left by a server that did not stop cleanly)",
                path.display()
            );
            std::fs::remove_file(path)
        }
        Action::Refuse if existing == Existing::LiveSocket => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another server answers on Unix socket {}; stop it or choose another path",
                path.display()
            ),
        )),
        Action::Refuse => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it (remove it or choose another path)",
                path.display()
            ),
        )),
    }
}

/// Apply `socket-mode` to the socket we bound.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Remove our socket at a clean stop (only if it is still a socket).
pub fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove Unix socket {}: {e}", path.display());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let table = [
            (Existing::Nothing, Action::Bind),
            (Existing::DeadSocket, Action::RemoveStaleThenBind),
            (Existing::LiveSocket, Action::Refuse),
            (Existing::NotASocket, Action::Refuse),
        ];
        for (e, a) in table {
            assert_eq!(decide(e), a, "{e:?}");
        }
    }

    #[test]
    fn modes() {
        let table: [(&str, Option<u32>); 7] = [
            ("0660", Some(0o660)),
            ("660", Some(0o660)),
            ("0o600", Some(0o600)),
            ("0777", Some(0o777)),
            ("1777", None),
            ("rw-rw----", None),
            ("", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_mode(s).ok(), want, "{s:?}");
        }
    }

    #[test]
    fn stale_live_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z.sock");
        prepare(&p).unwrap();
        // A live listener: refused.
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = prepare(&p).unwrap_err();
        assert!(e.to_string().contains("another server answers"), "{e}");
        // The listener is gone but the file stays (as after kill -9): replaced.
        drop(l);
        assert!(p.exists());
        prepare(&p).unwrap();
        assert!(!p.exists());
        // A regular file: refused and kept.
        std::fs::write(&p, b"data").unwrap();
        let e = prepare(&p).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        remove(&p);
        assert!(p.exists(), "remove() must only delete sockets");
    }
}
