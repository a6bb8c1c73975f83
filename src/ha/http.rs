//! The smallest HTTP/1.1 client etcd's JSON gateway needs: one `POST` per
//! connection (`Connection: close`), a deadline on connect and on every
//! read and write, and a body framed by `Content-Length`, chunked transfer
//! coding or the end of the connection. The parsing ([`parse_head`],
//! [`Dechunk`]) is pure and table-tested; the socket is only at the edge.
//!
//! Written by hand rather than taken from an HTTP crate because the watch
//! stream needs two things the small synchronous clients do not give: a
//! read timeout per read (so an idle stream can be polled for
//! cancellation) and cancellation by shutting the socket down from
//! another thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How a failed exchange failed: whether trying another endpoint makes sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No connection (refused, unresolvable, connect timed out).
    Connect(String),
    /// Connected, then the exchange broke or passed its deadline.
    Io(String),
    /// The peer answered something that is not HTTP/1.x.
    Protocol(String),
}

/// The status line and framing headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// Parses a response head (everything before the blank line, without it).
pub fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HttpError::Protocol("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Protocol(format!(
            "not an HTTP/1 status line: {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Protocol(format!("no status code in {status_line:?}")))?;
    let mut h = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol(format!("bad Content-Length {value:?}")))?,
            );
        }
    }
    Ok(h)
}

/// An incremental decoder of the chunked transfer coding: bytes in as they
/// come off the socket, body bytes out. Trailers are ignored.
#[derive(Debug, Default)]
pub struct Dechunk {
    /// Bytes of a size line not yet complete.
    line: Vec<u8>,
    /// Body bytes left in the current chunk, then its CRLF (2 bytes).
    left: usize,
    crlf: usize,
    done: bool,
}

impl Dechunk {
    /// Feeds `input`, appending body bytes to `out`. `Ok(true)` once the
    /// last (zero-size) chunk has been seen.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, HttpError> {
        while !input.is_empty() && !self.done {
            if self.left > 0 {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                self.crlf -= 1;
                input = &input[1..];
            } else {
                let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                    self.line.extend_from_slice(input);
                    if self.line.len() > 1024 {
                        return Err(HttpError::Protocol("chunk size line too long".into()));
                    }
                    return Ok(false);
                };
                self.line.extend_from_slice(&input[..nl]);
                input = &input[nl + 1..];
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| HttpError::Protocol(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    self.done = true;
                } else {
                    self.left = size;
                }
            }
        }
        Ok(self.done)
    }
}

/// The request bytes of a JSON `POST`.
pub fn request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// An open response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    stream: TcpStream,
    framing: Framing,
    /// Body bytes already read past the head.
    pending: Vec<u8>,
}

enum Framing {
    Chunked(Dechunk),
    Length(usize),
    Eof,
}

fn io(e: std::io::Error) -> HttpError {
    HttpError::Io(e.to_string())
}

/// Sends `POST path` with `body` to `host` (host:port); returns once the
/// response head is read. `connect` bounds the connection, `read` each read
/// and write after it.
pub fn post(
    host: &str,
    path: &str,
    body: &[u8],
    connect: Duration,
    read: Duration,
) -> Result<Response, HttpError> {
    let addrs: Vec<_> = host
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = HttpError::Connect(format!("{host} resolves to no address"));
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, connect) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = HttpError::Connect(format!("connect to {a}: {e}")),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(read)).map_err(io)?;
    stream.set_write_timeout(Some(read)).map_err(io)?;
    stream.write_all(&request(host, path, body)).map_err(io)?;
    let deadline = Instant::now() + read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err(HttpError::Protocol("response head over 64 KiB".into()));
        }
        if Instant::now() >= deadline {
            return Err(HttpError::Io(format!("no response head within {read:?}")));
        }
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(HttpError::Io(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..end])?;
    let rest = buf[end + 4..].to_vec();
    let framing = if head.chunked {
        Framing::Chunked(Dechunk::default())
    } else if let Some(n) = head.content_length {
        Framing::Length(n)
    } else {
        Framing::Eof
    };
    let mut r = Response {
        status: head.status,
        stream,
        framing,
        pending: Vec::new(),
    };
    r.take(&rest, &mut Vec::new())?;
    Ok(r)
}

impl Response {
    /// Decodes raw `input` into `pending` body bytes; `Ok(true)` at the end.
    fn take(&mut self, input: &[u8], _scratch: &mut Vec<u8>) -> Result<bool, HttpError> {
        match &mut self.framing {
            Framing::Chunked(d) => d.feed(input, &mut self.pending),
            Framing::Length(n) => {
                let k = (*n).min(input.len());
                self.pending.extend_from_slice(&input[..k]);
                *n -= k;
                Ok(*n == 0)
            }
            Framing::Eof => {
                self.pending.extend_from_slice(input);
                Ok(false)
            }
        }
    }

    fn finished(&self) -> bool {
        match &self.framing {
            Framing::Chunked(d) => d.done,
            Framing::Length(n) => *n == 0,
            Framing::Eof => false,
        }
    }

    /// The whole body, read within `deadline` from now.
    pub fn body(mut self, deadline: Duration) -> Result<Vec<u8>, HttpError> {
        let until = Instant::now() + deadline;
        let mut chunk = [0u8; 8192];
        while !self.finished() {
            if Instant::now() >= until {
                return Err(HttpError::Io(format!(
                    "response body not complete within {deadline:?}"
                )));
            }
            let n = self.stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                if matches!(self.framing, Framing::Eof) {
                    break;
                }
                return Err(HttpError::Io("connection closed mid-body".into()));
            }
            self.take(&chunk[..n], &mut Vec::new())?;
        }
        Ok(std::mem::take(&mut self.pending))
    }

    /// A handle that shuts the connection down from another thread.
    pub fn closer(&self) -> Result<TcpStream, HttpError> {
        self.stream.try_clone().map_err(io)
    }

    /// Sets the timeout of each further read.
    pub fn set_read_timeout(&self, t: Duration) -> Result<(), HttpError> {
        self.stream.set_read_timeout(Some(t)).map_err(io)
    }

    /// The next complete line of the body (without `\n`), reading as
    /// needed. `Ok(None)`: a read timed out with no complete line (call
    /// again); `Err` with [`HttpError::Io`] `"end of stream"` at the end.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(line[..line.len() - 1].to_vec()));
            }
            if self.finished() {
                return Err(HttpError::Io("end of stream".into()));
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(HttpError::Io("end of stream".into())),
                Ok(n) => {
                    self.take(&chunk[..n], &mut Vec::new())?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
}

/// Shuts a connection down (both ways), waking a reader blocked on it.
pub fn shutdown(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        type Head = (u16, bool, Option<usize>);
        let cases: &[(&str, Result<Head, ()>)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12",
                Ok((200, false, Some(12))),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
                Ok((200, true, None)),
            ),
            ("HTTP/1.0 404 Not Found", Ok((404, false, None))),
            ("HTTP/1.1 400 Bad\r\ncontent-length: x", Err(())),
            ("SSH-2.0-OpenSSH", Err(())),
            ("HTTP/1.1 abc", Err(())),
        ];
        for (head, want) in cases {
            let got = parse_head(head.as_bytes()).map(|h| (h.status, h.chunked, h.content_length));
            assert_eq!(got.map_err(|_| ()), *want, "{head:?}");
        }
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            let a = d.feed(&wire[..split], &mut out).unwrap();
            let b = d.feed(&wire[split..], &mut out).unwrap();
            assert!(!a || split >= wire.len() - 2, "done early at {split}");
            assert!(b, "split at {split}");
            assert_eq!(out, b"hello, world", "split at {split}");
        }
        let bad: &[&[u8]] = &[b"zz\r\n", b"-1\r\n"];
        for w in bad {
            assert!(Dechunk::default().feed(w, &mut Vec::new()).is_err());
        }
        let mut d = Dechunk::default();
        assert!(d.feed(&[b'1'; 2000], &mut Vec::new()).is_err());
    }

    #[test]
    fn request_bytes() {
        let r = request("127.0.0.1:2379", "/v3/kv/put", b"{}");
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"));
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.ends_with("\r\n\r\n{}"));
    }
}
