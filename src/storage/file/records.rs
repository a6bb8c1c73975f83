//! Positional reads of `Data.fs` records (`read_at` on a shared file, so
//! any number of readers run at once), with errors that name the file and
//! the byte position, and backpointer chasing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::format::{DataHeader, TxnHeader, DATA_HDR_LEN, TXN_HDR_LEN};
use super::pickle;
use crate::storage::{Data, Error, Result, Tid, TxnMeta};

/// An error about the content of `name` at byte `pos`.
pub fn corrupt(name: &str, pos: u64, msg: &str) -> Error {
    Error::Io(format!("{name}: {msg} at byte {pos}"))
}

/// An I/O error while accessing `name` at byte `pos`.
pub fn io_err(name: &str, pos: u64, e: &std::io::Error) -> Error {
    Error::Io(format!("{name}: {e} at byte {pos}"))
}

/// Bytes read speculatively with a data header (header + small object).
pub const PREFETCH: usize = 4096;

/// Read as much as is there (up to `buf.len()`) at `pos`: short only at the
/// end of the file.
fn read_some_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A data header followed by its whole data in `buf` (a plain record of at
/// least one byte, no version): both; anything else `None`.
fn parse_prefetched(buf: &[u8]) -> Option<(DataHeader, Data)> {
    let fixed = DATA_HDR_LEN as usize;
    let fb: &[u8; DATA_HDR_LEN as usize] = buf.get(..fixed)?.try_into().ok()?;
    let h = DataHeader::decode(fb);
    let n = usize::try_from(h.plen).ok()?;
    if h.vlen != 0 || n == 0 {
        return None;
    }
    let data = buf.get(fixed..fixed.checked_add(n)?)?;
    Some((h, Arc::from(data)))
}

/// One read at `pos` that fails with `WouldBlock` instead of waiting for the
/// disk (`preadv2` with `RWF_NOWAIT`: served from the page cache or not at
/// all). May be short.
#[cfg(target_os = "linux")]
fn read_nowait(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(pos)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its length
    // and outlives the call; the fd is open for the lifetime of `file`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

#[cfg(not(target_os = "linux"))]
fn read_nowait(_file: &File, _buf: &mut [u8], _pos: u64) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::WouldBlock.into())
}

/// A file being read, with its name for error messages.
#[derive(Clone, Copy)]
pub struct Src<'a> {
    pub file: &'a File,
    pub name: &'a str,
}

impl Src<'_> {
    pub fn read_exact(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, pos).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(self.name, pos, "unexpected end of file")
            } else {
                io_err(self.name, pos, &e)
            }
        })
    }

    pub fn read_vec(&self, pos: u64, len: u64) -> Result<Vec<u8>> {
        let too_large = || corrupt(self.name, pos, "record larger than the file");
        // A damaged length must not become a huge allocation.
        if len > 1 << 20 {
            let size = self
                .file
                .metadata()
                .map_err(|e| io_err(self.name, pos, &e))?
                .len();
            if pos.checked_add(len).is_none_or(|e| e > size) {
                return Err(too_large());
            }
        }
        let n = usize::try_from(len).map_err(|_| too_large())?;
        let mut v = vec![0u8; n];
        self.read_exact(pos, &mut v)?;
        Ok(v)
    }

    pub fn read_u64(&self, pos: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(pos, &mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    pub fn txn_header(&self, pos: u64) -> Result<TxnHeader> {
        let mut b = [0u8; TXN_HDR_LEN as usize];
        self.read_exact(pos, &mut b)?;
        Ok(TxnHeader::decode(&b))
    }

    /// The data header at `pos`, with its backpointer when `plen == 0`.
    pub fn data_header(&self, pos: u64) -> Result<DataHeader> {
        let mut b = [0u8; DATA_HDR_LEN as usize + 8];
        let fixed = DATA_HDR_LEN as usize;
        self.read_exact(pos, &mut b[..fixed])?;
        let mut fb = [0u8; DATA_HDR_LEN as usize];
        fb.copy_from_slice(&b[..fixed]);
        let mut h = DataHeader::decode(&fb);
        if h.vlen != 0 {
            return Err(corrupt(self.name, pos, "data record with a version"));
        }
        if h.plen == 0 {
            h.back = self.read_u64(pos + DATA_HDR_LEN)?;
        }
        Ok(h)
    }

    /// Follow backpointers from `back` to the record holding data: the data
    /// and the tid of that record, or `None` when the chain ends at 0.
    pub fn load_back(&self, mut back: u64) -> Result<Option<(Data, Tid)>> {
        while back != 0 {
            let h = self.data_header(back)?;
            if h.plen != 0 {
                let d = self.read_vec(back + DATA_HDR_LEN, h.plen)?;
                return Ok(Some((Arc::from(d), h.tid)));
            }
            if h.back >= back {
                return Err(corrupt(self.name, back, "backpointer does not point back"));
            }
            back = h.back;
        }
        Ok(None)
    }

    /// The object state a record at `pos` stands for (`None`: no data).
    pub fn record_data(&self, pos: u64, h: &DataHeader) -> Result<Option<Data>> {
        if h.plen != 0 {
            let d = self.read_vec(pos + DATA_HDR_LEN, h.plen)?;
            Ok(Some(Arc::from(d)))
        } else {
            Ok(self.load_back(h.back)?.map(|(d, _)| d))
        }
    }

    /// The data header at `pos` and, when the record holds its own data of
    /// at most [`PREFETCH`] bytes, that data too — one read instead of two
    /// for the common small object. `None` data means "use `record_data`".
    pub fn data_header_prefetch(&self, pos: u64) -> Result<(DataHeader, Option<Data>)> {
        let mut buf = [0u8; PREFETCH];
        let got = read_some_at(self.file, &mut buf, pos).map_err(|e| io_err(self.name, pos, &e))?;
        match parse_prefetched(&buf[..got]) {
            Some((h, d)) => Ok((h, Some(d))),
            // Backpointer, version, or a record larger than the prefetch:
            // the general path validates and reads it.
            None => Ok((self.data_header(pos)?, None)),
        }
    }

    /// [`Src::data_header_prefetch`] from the page cache alone: `None` when
    /// the read would wait for the disk (or is not a plain record with its
    /// data within [`PREFETCH`] bytes, or failed): ask the general path.
    pub fn data_header_prefetch_nowait(&self, pos: u64) -> Option<(DataHeader, Data)> {
        let mut buf = [0u8; PREFETCH];
        let got = read_nowait(self.file, &mut buf, pos).ok()?;
        parse_prefetched(&buf[..got])
    }

    /// Whether the record has data, reading only headers.
    pub fn record_has_data(&self, h: &DataHeader) -> Result<bool> {
        let mut h = *h;
        loop {
            if h.plen != 0 {
                return Ok(true);
            }
            if h.back == 0 {
                return Ok(false);
            }
            let next = self.data_header(h.back)?;
            if next.plen == 0 && next.back >= h.back {
                return Err(corrupt(
                    self.name,
                    h.back,
                    "backpointer does not point back",
                ));
            }
            h = next;
        }
    }

    /// User, description and extension (as msgpack) of the transaction at `pos`.
    pub fn txn_meta(&self, pos: u64, h: &TxnHeader) -> Result<TxnMeta> {
        let var = self.read_vec(pos + TXN_HDR_LEN, h.header_len() - TXN_HDR_LEN)?;
        let (u, rest) = var.split_at(usize::from(h.ulen));
        let (d, e) = rest.split_at(usize::from(h.dlen));
        let extension = match pickle::ext_from_pickle(e) {
            Ok(x) => x,
            Err(msg) => {
                log::warn!(
                    "{}: ignoring the extension of transaction {} at byte {pos}: {msg}",
                    self.name,
                    h.tid
                );
                Vec::new()
            }
        };
        Ok(TxnMeta {
            user: u.to_vec(),
            description: d.to_vec(),
            extension,
        })
    }

    /// The start of the transaction that ends (with its redundant length)
    /// at `end`, checked against its header.
    pub fn txn_before(&self, end: u64) -> Result<(u64, TxnHeader)> {
        let bad = || corrupt(self.name, end, "bad redundant transaction length before");
        let tl = self.read_u64(end.checked_sub(8).ok_or_else(bad)?)?;
        let pos = end
            .checked_sub(8)
            .and_then(|p| p.checked_sub(tl))
            .filter(|p| *p >= 4)
            .ok_or_else(bad)?;
        let h = self.txn_header(pos)?;
        if h.tlen != tl {
            return Err(corrupt(
                self.name,
                pos,
                "transaction length does not match its redundant length",
            ));
        }
        Ok((pos, h))
    }
}

/// A forward reader with a window buffer, for scans.
pub struct Window<'a> {
    src: Src<'a>,
    buf: Vec<u8>,
    start: u64,
}

const WINDOW: usize = 1 << 16;

impl<'a> Window<'a> {
    pub fn new(src: Src<'a>) -> Window<'a> {
        Window {
            src,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Up to `n` bytes at `pos` (fewer only at the end of the file).
    pub fn get(&mut self, pos: u64, n: usize) -> Result<&[u8]> {
        let in_buf = pos >= self.start
            && (pos - self.start)
                .checked_add(n as u64)
                .is_some_and(|e| e <= self.buf.len() as u64);
        if !in_buf {
            let want = n.max(WINDOW);
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                match self
                    .src
                    .file
                    .read_at(&mut self.buf[got..], pos + got as u64)
                {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(self.src.name, pos, &e)),
                }
            }
            self.buf.truncate(got);
            self.start = pos;
        }
        let off = (pos - self.start) as usize;
        let end = (off + n).min(self.buf.len());
        Ok(&self.buf[off.min(end)..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Oid;

    fn record(vlen: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        DataHeader {
            oid: Oid(7),
            tid: Tid(9),
            prev: 0,
            tloc: 4,
            vlen,
            plen: data.len() as u64,
            back: 123,
        }
        .encode_into(&mut out);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parse_prefetched_table() {
        let plain = record(0, b"abc");
        let fixed = DATA_HDR_LEN as usize;
        type Case<'a> = (&'a str, Vec<u8>, Option<&'a [u8]>);
        let cases: Vec<Case> = vec![
            ("plain record", plain.clone(), Some(b"abc")),
            (
                "trailing bytes",
                [plain.clone(), b"next".to_vec()].concat(),
                Some(b"abc"),
            ),
            ("data cut short", plain[..plain.len() - 1].to_vec(), None),
            ("header cut short", plain[..fixed - 1].to_vec(), None),
            ("empty", Vec::new(), None),
            ("backpointer (no data)", record(0, b""), None),
            ("version", record(3, b"abc"), None),
        ];
        for (what, buf, want) in cases {
            let got = parse_prefetched(&buf);
            assert_eq!(got.as_ref().map(|(_, d)| &d[..]), want, "{what}");
            if let Some((h, _)) = got {
                assert_eq!((h.oid, h.tid), (Oid(7), Tid(9)), "{what}");
            }
        }
    }
}
