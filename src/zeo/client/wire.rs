//! The client's byte stream to one server: TCP or a Unix socket, plaintext
//! or TLS ([`Wire`]), over blocking sockets with timeouts.
//!
//! A connection has one reader (the reader thread) and one writer at a time
//! (callers, under the connection's writer lock), each with its own clone of
//! the [`Wire`]. Over TLS both clones share the rustls session behind a
//! mutex that is held only while bytes are decrypted or encrypted, never
//! across socket IO: the reader reads ciphertext from the socket unlocked
//! and feeds it to rustls; the writer encrypts under the lock and writes
//! the records unlocked (its own lock keeps their order). So a blocked
//! read never delays a write, and the reverse.

use crate::net::tls;
use crate::net::tls::rustls;
use crate::net::Address;
use crate::storage::{Error, Result};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Plaintext is encrypted and written in pieces of at most this size, so
/// a large record does not need its whole ciphertext in memory.
const ENCRYPT_CHUNK: usize = 256 << 10;

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(t),
            Socket::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(t),
            Socket::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Session = Arc<Mutex<rustls::ClientConnection>>;

/// A TLS failure as an IO error carrying the explanation.
fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TLS: {}", tls::explain(e)),
    )
}

fn lock(s: &Session) -> std::sync::MutexGuard<'_, rustls::ClientConnection> {
    crate::locks::lock(s)
}

/// One server connection's stream (a clone per reader, writer and control).
pub(crate) struct Wire {
    sock: Socket,
    tls: Option<Session>,
    /// Reader side: ciphertext read from the socket not yet fed to rustls.
    raw: Vec<u8>,
    /// `raw[raw_pos..raw_end]` is waiting; the buffer is allocated once.
    raw_pos: usize,
    raw_end: usize,
}

impl Wire {
    /// Connect to `addr` (TCP or Unix socket) and, with `tls`, finish the
    /// TLS handshake, all within `timeout`.
    pub(crate) fn connect(
        addr: &str,
        tls_files: Option<&tls::ClientFiles>,
        timeout: Duration,
    ) -> Result<Wire> {
        let deadline = Instant::now() + timeout;
        let address =
            Address::parse(addr, None).map_err(|e| Error::Disconnected(format!("{addr}: {e}")))?;
        let sock =
            match &address {
                Address::Unix(p) => Socket::Unix(UnixStream::connect(p).map_err(|e| {
                    Error::Disconnected(format!("cannot connect to {}: {e}", address))
                })?),
                Address::Tcp(a) => Socket::Tcp(connect_tcp(a, timeout)?),
            };
        if let Socket::Tcp(s) = &sock {
            let _ = s.set_nodelay(true);
        }
        let mut wire = Wire {
            sock,
            tls: None,
            raw: Vec::new(),
            raw_pos: 0,
            raw_end: 0,
        };
        if let Some(files) = tls_files {
            let fail = |m: String| Error::Disconnected(format!("{addr}: {m}"));
            let config = tls::load_client(files).map_err(fail)?;
            let name =
                tls::server_name(files.server_hostname.as_deref(), address.host()).map_err(fail)?;
            let mut session = rustls::ClientConnection::new(config, name)
                .map_err(|e| fail(format!("TLS setup failed: {e}")))?;
            session.set_buffer_limit(None);
            wire.handshake(&mut session, deadline)
                .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
            wire.tls = Some(Arc::new(Mutex::new(session)));
        }
        Ok(wire)
    }

    fn handshake(&mut self, s: &mut rustls::ClientConnection, deadline: Instant) -> io::Result<()> {
        while s.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer within the connect timeout (is the server speaking TLS?)",
                ));
            }
            self.sock.set_read_timeout(Some(left))?;
            self.sock.set_write_timeout(Some(left))?;
            match s.complete_io(&mut self.sock) {
                Ok((0, 0)) if s.is_handshaking() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the handshake",
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(
                        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                            Some(t) => io::Error::new(io::ErrorKind::InvalidData, tls::explain(t)),
                            None => e,
                        },
                    )
                }
            }
        }
        Ok(())
    }

    pub(crate) fn try_clone(&self) -> io::Result<Wire> {
        Ok(Wire {
            sock: self.sock.try_clone()?,
            tls: self.tls.clone(),
            raw: Vec::new(),
            raw_pos: 0,
            raw_end: 0,
        })
    }

    /// Shut the socket down both ways (wakes a blocked reader).
    pub(super) fn shutdown(&self) {
        self.sock.shutdown();
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    pub(super) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }
}

fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| Error::Disconnected(format!("cannot resolve {addr:?}: {e}")))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Disconnected(format!(
        "cannot connect to {addr}: {}",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "the name resolves to no address".into())
    )))
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(session) = self.tls.clone() else {
            return self.sock.read(buf);
        };
        loop {
            {
                let mut s = lock(&session);
                match s.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.raw_pos < self.raw_end {
                    let n = s.read_tls(&mut &self.raw[self.raw_pos..self.raw_end])?;
                    self.raw_pos += n;
                    if let Err(e) = s.process_new_packets() {
                        return Err(tls_error(&e));
                    }
                    continue;
                }
            }
            // Nothing decrypted is waiting: read ciphertext, unlocked.
            if self.raw.is_empty() {
                self.raw = vec![0u8; 64 << 10];
            }
            (self.raw_pos, self.raw_end) = (0, 0);
            let n = self.sock.read(&mut self.raw)?;
            self.raw_end = n;
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(session) = self.tls.clone() else {
            return self.sock.write(buf);
        };
        let chunk = &buf[..buf.len().min(ENCRYPT_CHUNK)];
        let mut records = Vec::with_capacity(chunk.len() + 256);
        {
            let mut s = lock(&session);
            s.writer().write_all(chunk)?;
            while s.wants_write() {
                s.write_tls(&mut records)?;
            }
        }
        self.sock.write_all(&records)?;
        Ok(chunk.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
