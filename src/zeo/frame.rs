//! Sized frames: a 4-byte big-endian length, then that many payload bytes.
//!
//! [`FrameDecoder`] is incremental: feed it whatever the socket produced and
//! take out complete frames. A declared length above the limit is an error
//! before a single payload byte is buffered, so a hostile peer cannot make us
//! allocate.

use std::io::{self, Read, Write};

/// Default limit on one frame: 256 MiB, far above any sane ZODB record.
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {declared} bytes exceeds the limit of {limit} bytes (raise `max-frame-size` if this is a legitimate object)")]
    TooLarge { declared: usize, limit: usize },
}

/// Incremental decoder of sized frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl FrameDecoder {
    pub fn new(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    /// Append bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            self.compact();
            return Ok(None);
        }
        let declared = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if declared > self.limit {
            return Err(FrameError::TooLarge {
                declared,
                limit: self.limit,
            });
        }
        if avail.len() < 4 + declared {
            self.compact();
            return Ok(None);
        }
        let frame = avail[4..4 + declared].to_vec();
        self.start += 4 + declared;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Give memory back after a large frame passed through.
        if self.buf.is_empty() && self.buf.capacity() > 64 << 10 {
            self.buf = Vec::new();
        }
    }
}

/// Prefix `payload` with its length.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Write one frame to a blocking writer.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(payload)
}

/// Read one frame from a blocking reader, refusing frames above `limit`.
pub fn read_frame<R: Read>(r: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let declared = u32::from_be_bytes(len) as usize;
    if declared > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::TooLarge { declared, limit },
        ));
    }
    let mut buf = vec![0u8; declared];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let frames: Vec<Vec<u8>> = vec![b"M5".to_vec(), vec![], vec![7u8; 1000]];
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f)).collect();
        for chunk in [1usize, 3, 4, 5, 17, wire.len()] {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.feed(piece);
                while let Some(f) = d.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "chunk size {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn truncated_frame_waits() {
        let mut d = FrameDecoder::new(100);
        d.feed(&[0, 0, 0, 10, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.pending(), 6);
    }

    #[test]
    fn oversize_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(100);
        d.feed(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                declared: 0xffff_ffff,
                limit: 100
            })
        );
        assert!(d.buf.capacity() < 1024);
        let mut r = &[0u8, 0, 1, 0][..];
        assert!(read_frame(&mut r, 10).is_err());
    }
}
