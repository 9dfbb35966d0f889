//! memcached's binary protocol, which php-memcached's session handler uses by default
//! (`memcached.sess_binary_protocol = On`): a 24-byte header, then extras, key and value.

use super::Parse;

const HEADER_LEN: usize = 24;
const MAGIC_REQUEST: u8 = 0x80;
const MAGIC_RESPONSE: u8 = 0x81;

/// The commands the session handler sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Get = 0x00,
    Set = 0x01,
    Add = 0x02,
    Delete = 0x04,
    Touch = 0x1C,
}

/// Response status: success.
pub const STATUS_OK: u16 = 0x0000;
/// Response status: no such key.
pub const STATUS_NOT_FOUND: u16 = 0x0001;
/// Response status: the key exists (an ADD that found a lock taken).
pub const STATUS_EXISTS: u16 = 0x0002;
/// Response status: not stored (also how some versions refuse an ADD).
pub const STATUS_NOT_STORED: u16 = 0x0005;

/// One response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub opcode: u8,
    pub status: u16,
    pub opaque: u32,
    pub value: &'a [u8],
}

/// GET key.
pub fn get(out: &mut Vec<u8>, key: &[u8], opaque: u32) {
    request(out, Opcode::Get, &[], key, &[], opaque);
}

/// SET or ADD key value with flags 0 and an expiration in seconds.
pub fn store(out: &mut Vec<u8>, op: Opcode, key: &[u8], value: &[u8], expire_s: u32, opaque: u32) {
    let mut extras = [0u8; 8];
    extras[4..].copy_from_slice(&expire_s.to_be_bytes());
    request(out, op, &extras, key, value, opaque);
}

/// TOUCH key: a new expiration, data kept (php-memcached's update_timestamp).
pub fn touch(out: &mut Vec<u8>, key: &[u8], expire_s: u32, opaque: u32) {
    request(
        out,
        Opcode::Touch,
        &expire_s.to_be_bytes(),
        key,
        &[],
        opaque,
    );
}

/// DELETE key.
pub fn delete(out: &mut Vec<u8>, key: &[u8], opaque: u32) {
    request(out, Opcode::Delete, &[], key, &[], opaque);
}

fn request(out: &mut Vec<u8>, op: Opcode, extras: &[u8], key: &[u8], value: &[u8], opaque: u32) {
    // Keys are ours (prefix + 32 hex digits) and extras at most 8 bytes: the casts cannot cut.
    debug_assert!(key.len() <= 250 && extras.len() <= 8);
    let body = extras.len() + key.len() + value.len();
    out.reserve(HEADER_LEN + body);
    out.push(MAGIC_REQUEST);
    out.push(op as u8);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0); // data type: raw bytes
    out.extend_from_slice(&0u16.to_be_bytes()); // vbucket
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // CAS: none
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Parses one response from the start of `buf`; `len_max` bounds the body before waiting for it.
pub fn parse(buf: &[u8], len_max: usize) -> Parse<Response<'_>> {
    if buf.len() < HEADER_LEN {
        return if buf.first().is_some_and(|&m| m != MAGIC_RESPONSE) {
            Parse::Invalid("bad memcached response magic".into())
        } else {
            Parse::Incomplete
        };
    }
    if buf[0] != MAGIC_RESPONSE {
        return Parse::Invalid("bad memcached response magic".into());
    }
    let key_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let extras_len = buf[4] as usize;
    let status = u16::from_be_bytes([buf[6], buf[7]]);
    let body_len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let opaque = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if body_len > len_max {
        return Parse::Invalid("memcached body over the limit".into());
    }
    if extras_len + key_len > body_len {
        return Parse::Invalid("memcached extras and key longer than the body".into());
    }
    let end = HEADER_LEN + body_len;
    if buf.len() < end {
        return Parse::Incomplete;
    }
    let value = &buf[HEADER_LEN + extras_len + key_len..end];
    Parse::Done(
        Response {
            opcode: buf[1],
            status,
            opaque,
            value,
        },
        end,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_has_the_documented_layout() {
        let mut out = Vec::new();
        store(&mut out, Opcode::Set, b"key", b"val", 60, 7);
        assert_eq!(out.len(), 24 + 8 + 3 + 3);
        assert_eq!(&out[..8], &[0x80, 0x01, 0, 3, 8, 0, 0, 0]);
        assert_eq!(&out[8..12], &14u32.to_be_bytes());
        assert_eq!(&out[12..16], &7u32.to_be_bytes());
        assert_eq!(&out[28..32], &60u32.to_be_bytes());
        assert_eq!(&out[32..], b"keyval");
    }

    #[test]
    fn parses_a_get_response_skipping_the_flags() {
        let mut r = vec![0x81, 0x00, 0, 0, 4, 0, 0, 0];
        r.extend_from_slice(&7u32.to_be_bytes());
        r.extend_from_slice(&9u32.to_be_bytes());
        r.extend_from_slice(&0u64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(b"abc");
        let parsed = parse(&r, 100);
        assert_eq!(
            parsed,
            Parse::Done(
                Response {
                    opcode: 0,
                    status: 0,
                    opaque: 9,
                    value: b"abc"
                },
                r.len()
            )
        );
        assert_eq!(parse(&r[..r.len() - 1], 100), Parse::Incomplete);
        assert!(matches!(parse(&r, 5), Parse::Invalid(_)));
        assert!(matches!(parse(&[0x80], 5), Parse::Invalid(_)));
    }
}
