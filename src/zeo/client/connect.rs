//! Establishing a connection: TCP or Unix socket connect and the TLS
//! handshake ([`Wire::connect`]), the server's
//! protocol announcement ([`check_protocol`]) and ours, then `register` and
//! `get_info` as a synchronous conversation ([`Handshake`]) before the reader
//! thread runs. [`Inner::establish`] yields an [`Established`] connection
//! that `link` installs and hands to the reader thread.

use super::conn::Conn;
use super::link::Inner;
use super::reply::tid_of;
use super::wire::Wire;
use super::ClientOptions;
use crate::locks::lock;
use crate::storage::{Error, Result, Tid};
use crate::zeo::flavour::Flavour;
use crate::zeo::frame::{self, FrameDecoder};
use crate::zeo::message::{self, short, Message, FLAG_ERROR, REPLY};
use rmpv::Value;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Check the server's protocol announcement and pick the flavour we speak
/// with it. ZEO's rule: the first byte is the encoding (`M` msgpack, `Z`
/// pickle), the rest the version, compared as bytes; we speak version 5 of
/// any server that offers at least 5, in the encoding it announced.
pub fn check_protocol(addr: &str, announced: &[u8]) -> Result<Flavour> {
    Flavour::from_announcement(addr, announced)
}

/// Why a TLS server may close the connection right after the handshake
/// without a word (Python ZEO sends no alert when it refuses a client
/// certificate; TLS 1.3 lets the client finish its side first) (pure).
fn refused_after_handshake_hint(files: &crate::net::tls::ClientFiles) -> &'static str {
    if files.certificate.is_none() {
        " (over TLS: the server probably requires a client certificate; set `certificate` and `key` in [storage.backend.tls] (Python ZEO's <ssl> always has `authenticate`))"
    } else {
        " (over TLS: the server probably refused our certificate; check that the CA in its `authenticate` signed it and that it has not expired)"
    }
}

/// What a successful handshake yields.
pub(super) struct Established {
    pub(super) conn: Arc<Conn>,
    pub(super) reader: Wire,
    pub(super) decoder: FrameDecoder,
    pub(super) last_tid: Tid,
    pub(super) info: Value,
    /// Server calls that arrived during the handshake, delivered after it.
    pub(super) early: Vec<Message>,
}

fn open_stream(opts: &ClientOptions) -> Result<Wire> {
    Wire::connect(&opts.addr, opts.tls.as_ref(), opts.connect_timeout)
}

/// Read one frame, waiting at most until `deadline`.
fn read_frame_by(
    addr: &str,
    stream: &mut Wire,
    dec: &mut FrameDecoder,
    deadline: Instant,
    waiting_for: &str,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(Error::Disconnected(format!("{addr}: {e}"))),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Disconnected(format!(
                "{addr}: no {waiting_for} within the deadline"
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| Error::Disconnected(format!("{addr}: {e}")))?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(Error::Disconnected(format!(
                    "{addr}: the server closed the connection while we waited for {waiting_for}"
                )))
            }
            Ok(n) => dec.feed(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(Error::Disconnected(format!(
                    "{addr}: read failed while we waited for {waiting_for}: {e}"
                )))
            }
        }
    }
}

/// The synchronous conversation of a handshake, before the reader thread runs.
struct Handshake<'a> {
    addr: &'a str,
    stream: &'a mut Wire,
    dec: FrameDecoder,
    flavour: Flavour,
    /// Server calls that arrived meanwhile (delivered once connected).
    early: Vec<Message>,
}

impl Handshake<'_> {
    fn call(
        &mut self,
        msgid: i64,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        let addr = self.addr;
        frame::write_frame(
            self.stream,
            &self.flavour.encode(msgid, 0, method, &Value::Array(args)),
        )
        .map_err(|e| Error::Disconnected(format!("{addr}: write failed: {e}")))?;
        loop {
            let waiting_for = format!("reply to {method}");
            let f = read_frame_by(addr, self.stream, &mut self.dec, deadline, &waiting_for)?;
            let msg = self
                .flavour
                .decode(&f)
                .map_err(|e| Error::Disconnected(format!("{addr}: malformed message: {e}")))?;
            if msg.method != REPLY {
                self.early.push(msg);
            } else if msg.msgid_i64() == Some(msgid) {
                return if msg.flags & FLAG_ERROR != 0 {
                    Err(message::error_from_wire(&msg.args))
                } else {
                    Ok(msg.args)
                };
            } else {
                log::debug!("{addr}: dropping a reply to unknown msgid {}", msg.msgid);
            }
        }
    }
}

impl Inner {
    /// Connect, check the protocol, register, fetch the server info.
    pub(super) fn establish(&self) -> Result<Established> {
        let addr = self.addr();
        let mut stream = open_stream(&self.opts)?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Disconnected(format!("{addr}: the client is closed")));
        }
        *lock(&self.connecting) = stream.try_clone().ok();
        let r = self.handshake(&mut stream);
        *lock(&self.connecting) = None;
        match r {
            Ok((decoder, flavour, last_tid, info, early)) => {
                let conn = Conn::new(addr, &stream, flavour)
                    .map_err(|e| Error::Disconnected(format!("{addr}: {e}")))?;
                Ok(Established {
                    conn: Arc::new(conn),
                    reader: stream,
                    decoder,
                    last_tid,
                    info,
                    early,
                })
            }
            Err(e) => {
                stream.shutdown();
                Err(e)
            }
        }
    }

    /// Protocol, `register`, `get_info`: (decoder, flavour, last tid, info,
    /// early calls).
    #[allow(clippy::type_complexity)]
    fn handshake(
        &self,
        stream: &mut Wire,
    ) -> Result<(FrameDecoder, Flavour, Tid, Value, Vec<Message>)> {
        let addr = self.addr();
        let opts = &self.opts;
        let io_err = |e: io::Error| Error::Disconnected(format!("{addr}: {e}"));
        stream
            .set_write_timeout(Some(opts.call_timeout.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        let mut dec = FrameDecoder::new(opts.max_frame);
        let deadline = Instant::now() + opts.connect_timeout;
        let announced = read_frame_by(addr, stream, &mut dec, deadline, "protocol announcement")
            .map_err(|e| match (e, &opts.tls) {
                (Error::Disconnected(m), Some(files)) => {
                    Error::Disconnected(format!("{m}{}", refused_after_handshake_hint(files)))
                }
                (e, _) => e,
            })?;
        let flavour = check_protocol(addr, &announced)?;
        frame::write_frame(stream, flavour.protocol()).map_err(io_err)?;

        let deadline = Instant::now() + opts.call_timeout;
        let mut hs = Handshake {
            addr,
            stream,
            dec,
            flavour,
            early: Vec::new(),
        };
        let reg = hs.call(
            self.msgid(),
            "register",
            vec![
                Value::from(opts.storage.as_str()),
                Value::Boolean(opts.read_only),
            ],
            deadline,
        )?;
        let last_tid = tid_of(&reg, "register reply")?;
        let info = match hs.call(self.msgid(), "get_info", vec![], deadline) {
            Ok(v @ Value::Map(_)) => v,
            Ok(other) => {
                log::warn!("{addr}: get_info answered {}", short(&other));
                Value::Map(vec![])
            }
            Err(e @ Error::Disconnected(_)) => return Err(e),
            Err(e) => {
                log::warn!("{addr}: get_info failed: {e}");
                Value::Map(vec![])
            }
        };
        Ok((hs.dec, flavour, last_tid, info, hs.early))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_after_a_silent_tls_refusal() {
        let mut files = crate::net::tls::ClientFiles::default();
        assert!(refused_after_handshake_hint(&files).contains("requires a client certificate"));
        files.certificate = Some("me.pem".into());
        files.key = Some("me.key".into());
        assert!(refused_after_handshake_hint(&files).contains("refused our certificate"));
    }

    #[test]
    fn protocol_announcements() {
        // The table of announcements is in `zeo::flavour`; this is the edge.
        assert_eq!(check_protocol("h:1", b"Z5").ok(), Some(Flavour::Pickle));
        assert_eq!(check_protocol("h:1", b"M5").ok(), Some(Flavour::Msgpack));
        assert!(check_protocol("h:1", b"Z4").is_err());
    }
}
