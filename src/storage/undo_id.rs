//! Undo ids: how a transaction is named in `undoLog`/`undoInfo` and `undo`.
//!
//! FileStorage names a transaction by the base64 of its tid
//! (`base64.encodebytes(tid)[:-1]`, 12 characters); we answer the same so
//! ids are interchangeable between zeoraid and Python servers, and accept
//! raw 8-byte tids too.

use super::Tid;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// FileStorage's undo id of a transaction: base64 of the tid (12 characters).
pub fn undo_id(tid: Tid) -> Vec<u8> {
    let b = tid.to_bytes();
    let mut out = Vec::with_capacity(12);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (c as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// A transaction id from an undo id: FileStorage's base64 form, or raw 8 bytes.
pub fn parse_undo_id(id: &[u8]) -> Option<Tid> {
    if let Some(t) = Tid::from_slice(id) {
        return Some(t);
    }
    let clean: Vec<u8> = id
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if clean.len() != 12 {
        return None;
    }
    let mut out = Vec::with_capacity(9);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0usize;
        for &c in chunk {
            let v = if c == b'=' {
                pad += 1;
                0
            } else {
                if pad > 0 {
                    return None;
                }
                B64.iter().position(|&x| x == c)? as u32
            };
            n = n << 6 | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3usize.saturating_sub(pad)]);
    }
    Tid::from_slice(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_ids_round_trip() {
        // FileStorage: base64.encodebytes(tid).rstrip()
        let table: [(u64, &[u8]); 3] = [
            (0, b"AAAAAAAAAAA="),
            (0x03ea_1234_5678_9abc, b"A+oSNFZ4mrw="),
            (u64::MAX, b"//////////8="),
        ];
        for (t, id) in table {
            assert_eq!(undo_id(Tid(t)), id);
            assert_eq!(parse_undo_id(id), Some(Tid(t)));
            assert_eq!(parse_undo_id(&Tid(t).to_bytes()), Some(Tid(t)));
        }
        for bad in [&b"A+oSNFZ4mr"[..], b"A+oSNFZ4mr!=", b"A=oSNFZ4mrw=", b""] {
            assert_eq!(parse_undo_id(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_undo_id(b"A+oSNFZ4mrw=\n"),
            Some(Tid(0x03ea_1234_5678_9abc))
        );
    }
}
