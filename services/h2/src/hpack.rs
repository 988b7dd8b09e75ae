//! HPACK encoding (RFC 7541 §5 and §6.2.2): only what our header blocks
//! need, integers, raw strings and literal fields *without indexing*, so
//! the peer's decoder table never holds anything of ours. Decoding, which
//! must follow the peer's table, is `loona-hpack`'s, bounded by [`decoder`].

use crate::frame::MAX_HPACK_TABLE;

/// HPACK integer with an `n`-bit prefix whose other bits are `first`.
pub(crate) fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

pub(crate) fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Literal header field without indexing, name by static-table index (we
/// never add to the client's table).
pub(crate) fn hpack_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 0, 4, index);
    hpack_string(out, value);
}

/// Literal header field without indexing, new name.
pub(crate) fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// A decoder whose dynamic table cannot grow past [`MAX_HPACK_TABLE`]:
/// `loona-hpack` accepts any size update unless told a limit, and a peer
/// could then fill a table as large as it likes, 64 KiB per header block.
pub(crate) fn decoder() -> loona_hpack::Decoder<'static> {
    let mut d = loona_hpack::Decoder::new();
    d.set_max_allowed_table_size(MAX_HPACK_TABLE);
    d
}
