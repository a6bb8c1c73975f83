//! The event loop's sockets: a listener on TCP or a Unix socket, and per
//! connection a [`Transport`], plaintext or TLS. TLS is rustls driven by
//! hand without blocking the loop: ciphertext is read with `read_tls` when
//! the socket is readable, decrypted with `process_new_packets`, and
//! records are written with `write_tls` as far as the socket takes them;
//! the rest waits for the next writable event. Plaintext from the session
//! goes into rustls' bounded buffer (64 KiB) and the loop's own frame queue
//! holds what does not fit yet, so a slow TLS reader costs no more memory
//! than a slow plaintext one.

use crate::net::tls;
use crate::net::tls::rustls;
use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl From<std::net::SocketAddr> for Listen {
    fn from(a: std::net::SocketAddr) -> Listen {
        Listen::Tcp(a)
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Bind; for a Unix socket, replace a stale socket file first and apply
    /// `mode`. Returns the listener and where it listens (the bound port).
    pub(super) fn bind(listen: &Listen, mode: Option<u32>) -> io::Result<(Listener, Listen)> {
        match listen {
            Listen::Tcp(a) => {
                let l = TcpListener::bind(*a)?;
                let bound = l.local_addr()?;
                Ok((Listener::Tcp(l), Listen::Tcp(bound)))
            }
            Listen::Unix(p) => {
                crate::net::unix::prepare(p)?;
                let l = UnixListener::bind(p)?;
                if let Some(m) = mode {
                    crate::net::unix::set_mode(p, m)?;
                }
                Ok((Listener::Unix(l), listen.clone()))
            }
        }
    }

    /// Accept one connection: the stream and a name for the peer in logs.
    pub(super) fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                let peer = unix_peer(&s);
                Ok((Stream::Unix(s), peer))
            }
        }
    }
}

/// "unix socket (pid P, uid U)" from SO_PEERCRED.
fn unix_peer(s: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid
    // ucred on our stack, for an open socket we own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        format!("unix socket (pid {}, uid {})", cred.pid, cred.uid)
    } else {
        "unix socket".to_string()
    }
}

macro_rules! delegate_source {
    ($t:ty, $($v:ident),+) => {
        impl Source for $t {
            fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
                match self { $(Self::$v(s) => s.register(r, t, i)),+ }
            }
            fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
                match self { $(Self::$v(s) => s.reregister(r, t, i)),+ }
            }
            fn deregister(&mut self, r: &Registry) -> io::Result<()> {
                match self { $(Self::$v(s) => s.deregister(r)),+ }
            }
        }
    };
}
delegate_source!(Listener, Tcp, Unix);
delegate_source!(Stream, Tcp, Unix);

pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS failure of one connection, explained (see [`tls::explain`]).
#[derive(Debug)]
pub(super) struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TlsFailure {}

/// Whether an IO error is a TLS failure (and its explanation).
pub(super) fn tls_failure(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        .map(|f| f.0.as_str())
}

/// One client's byte stream, plaintext or TLS.
pub(super) struct Transport {
    stream: Stream,
    tls: Option<Box<rustls::ServerConnection>>,
    /// TLS: the client sent handshake bytes.
    tls_started: bool,
}

impl Transport {
    pub(super) fn new(
        stream: Stream,
        config: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Transport> {
        let tls = match config {
            Some(c) => {
                Some(Box::new(rustls::ServerConnection::new(c).map_err(|e| {
                    io::Error::other(format!("TLS setup failed: {e}"))
                })?))
            }
            None => None,
        };
        Ok(Transport {
            stream,
            tls,
            tls_started: false,
        })
    }

    pub(super) fn source(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// True while a TLS handshake is not finished.
    pub(super) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// The client began a TLS handshake and went away before finishing it
    /// (what a client that does not trust our certificate does).
    pub(super) fn abandoned_handshake(&self) -> bool {
        self.tls_started && self.handshaking()
    }

    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TLS records wait to be written.
    pub(super) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Read plaintext: `Ok(0)` is the end of the stream, `WouldBlock` means
    /// nothing more for now; a TLS failure is an `InvalidData` error whose
    /// [`tls_failure`] says why.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return Ok(0),
                Ok(_) => self.tls_started = true,
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (the alert rustls queued), best effort.
                let _ = tls.write_tls(&mut self.stream);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    TlsFailure(tls::explain(&e)),
                ));
            }
        }
    }

    /// Write plaintext; returns how much was taken. TLS: encrypted into
    /// rustls' buffer and pushed to the socket as far as it goes;
    /// `WouldBlock` when the buffer is full.
    pub(super) fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.stream.write_vectored(slices);
        }
        self.push()?;
        let n = match self.tls.as_mut() {
            Some(tls) => tls.writer().write_vectored(slices)?,
            None => 0,
        };
        match self.push() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Write pending TLS records until done or the socket is full
    /// (`WouldBlock`).
    pub(super) fn push(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Before closing: say goodbye properly on TLS (best effort).
    pub(super) fn close_notify(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            if !tls.is_handshaking() {
                tls.send_close_notify();
                let _ = self.push();
            }
        }
    }
}
