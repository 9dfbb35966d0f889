//! Session IDs: the text PHP sees (`MASTER-PORT-BACKUP-PORT-VERSION-HASH`) and the 60-byte binary
//! SID the protocols carry (docs/wire.md, "Session IDs" and "Shared field types").
//!
//! The text form is canonical: exactly one text per ID, so parse → encode is byte-identical. The
//! parser refuses anything else and names the field and the problem.
//!
//! The 16 HASH bytes come from the caller: this crate does no I/O, so the daemon draws them from
//! the OS's CSPRNG (`getrandom`) and hands them to [`SessionId::new`].

use core::fmt;
use core::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::constants::{ID_TEXT_MAX, PHP_ID_MAX, SESSION_HASH_LEN, SID_LEN};
use crate::frame::{Reader, Reason, put_u8, put_u16, put_u32};
use crate::mac::ct_eq_16;

/// A parsed session ID. `hash` is the session's identity; the other fields say where it lives
/// now and change when it moves.
#[derive(Clone, Copy, Debug)]
pub struct SessionId {
    /// The node holding the session and its relay port. IPv6 flow info and scope ID are not
    /// carried: encoding drops them and decoding yields 0.
    pub master: SocketAddr,
    /// The node holding the copy (HA), or `None` for "no backup yet".
    pub backup: Option<SocketAddr>,
    /// The placement epoch.
    pub version: u32,
    /// 128 bits from the OS's CSPRNG: the session's identity for its whole life.
    pub hash: [u8; SESSION_HASH_LEN],
}

/// Equality compares the secret HASH in constant time (the location fields are public anyway).
impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        // Evaluate every part so that timing does not depend on which part differs.
        let hash_eq = ct_eq_16(&self.hash, &other.hash);
        let placement_eq = addr_eq(&self.master, &other.master)
            & match (&self.backup, &other.backup) {
                (None, None) => true,
                (Some(a), Some(b)) => addr_eq(a, b),
                _ => false,
            }
            & (self.version == other.version);
        hash_eq & placement_eq
    }
}

impl Eq for SessionId {}

impl Hash for SessionId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.master.ip().hash(state);
        self.master.port().hash(state);
        self.backup.map(|b| (b.ip(), b.port())).hash(state);
        self.version.hash(state);
        self.hash.hash(state);
    }
}

/// Equality on what the wire carries (IP and port), so a value survives a round trip as equal.
fn addr_eq(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// Which part of a session ID a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdField {
    /// The ID as a whole.
    Whole,
    /// MASTER.
    Master,
    /// The PORT after MASTER.
    MasterPort,
    /// BACKUP.
    Backup,
    /// The PORT after BACKUP.
    BackupPort,
    /// VERSION.
    Version,
    /// HASH.
    Hash,
}

/// What is wrong with that part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdProblem {
    /// Nothing there.
    Empty,
    /// Longer than any valid ID (checked before anything else).
    TooLong {
        /// The input's length.
        len: usize,
    },
    /// Fewer than six `-`-separated fields.
    MissingField,
    /// More than six fields.
    ExtraField,
    /// The field's length is not one the format allows.
    BadLength {
        /// The field's length.
        len: usize,
    },
    /// An uppercase hex digit (the text form is lowercase only).
    Uppercase {
        /// The byte.
        byte: u8,
    },
    /// A byte that is not a hex digit.
    BadChar {
        /// The byte.
        byte: u8,
    },
    /// VERSION has a leading zero.
    LeadingZero,
    /// BACKUP is `0` (no backup) but its PORT is not `0`.
    PortWithoutBackup,
}

/// Why a session-ID text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdError {
    /// Where.
    pub field: IdField,
    /// What.
    pub problem: IdProblem,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session ID {:?}: ", self.field)?;
        match self.problem {
            IdProblem::Empty => write!(f, "empty"),
            IdProblem::TooLong { len } => {
                write!(f, "{len} bytes, at most {ID_TEXT_MAX} allowed")
            }
            IdProblem::MissingField => write!(f, "missing (expected 6 fields separated by '-')"),
            IdProblem::ExtraField => write!(f, "more than 6 fields"),
            IdProblem::BadLength { len } => write!(f, "length {len} not allowed"),
            IdProblem::Uppercase { byte } => {
                write!(f, "uppercase hex digit {:?}", char::from(byte))
            }
            IdProblem::BadChar { byte } => write!(f, "byte {byte:#04x} is not a hex digit"),
            IdProblem::LeadingZero => write!(f, "leading zero"),
            IdProblem::PortWithoutBackup => write!(f, "must be 0 when there is no backup"),
        }
    }
}

impl std::error::Error for IdError {}

fn err(field: IdField, problem: IdProblem) -> IdError {
    IdError { field, problem }
}

/// The text form in a fixed stack buffer (no allocation).
#[derive(Clone, Copy)]
pub struct IdBuf {
    bytes: [u8; ID_TEXT_MAX],
    len: u8,
}

impl IdBuf {
    /// The text bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only lowercase hex digits and '-' are ever written, so this cannot fail; the fallback
        // keeps the function total rather than trusting that with a panic.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    fn push(&mut self, byte: u8) {
        // Capacity is ID_TEXT_MAX, the longest encoding; writes stop there instead of panicking.
        if let Some(slot) = self.bytes.get_mut(usize::from(self.len)) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn push_hex(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(HEX[usize::from(b >> 4)]);
            self.push(HEX[usize::from(b & 0x0f)]);
        }
    }
}

impl fmt::Debug for IdBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::ops::Deref for IdBuf {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(field: IdField, byte: u8) -> Result<u8, IdError> {
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Err(err(field, IdProblem::Uppercase { byte })),
        _ => Err(err(field, IdProblem::BadChar { byte })),
    }
}

/// Decodes exactly `N` bytes from `2 * N` lowercase hex digits.
fn hex_bytes<const N: usize>(field: IdField, text: &[u8]) -> Result<[u8; N], IdError> {
    if text.len() != 2 * N {
        return Err(err(field, IdProblem::BadLength { len: text.len() }));
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *slot = (hex_digit(field, pair[0])? << 4) | hex_digit(field, pair[1])?;
    }
    Ok(out)
}

fn parse_ip(field: IdField, text: &[u8]) -> Result<IpAddr, IdError> {
    match text.len() {
        8 => Ok(IpAddr::V4(Ipv4Addr::from(hex_bytes::<4>(field, text)?))),
        32 => Ok(IpAddr::V6(Ipv6Addr::from(hex_bytes::<16>(field, text)?))),
        len => Err(err(field, IdProblem::BadLength { len })),
    }
}

fn parse_port(field: IdField, text: &[u8]) -> Result<u16, IdError> {
    Ok(u16::from_be_bytes(hex_bytes::<2>(field, text)?))
}

fn parse_version(text: &[u8]) -> Result<u32, IdError> {
    let field = IdField::Version;
    if text.is_empty() || text.len() > 8 {
        return Err(err(field, IdProblem::BadLength { len: text.len() }));
    }
    let mut value: u32 = 0;
    for &byte in text {
        // At most 8 digits, so the value never exceeds u32::MAX.
        value = (value << 4) | u32::from(hex_digit(field, byte)?);
    }
    if text.len() > 1 && text[0] == b'0' {
        return Err(err(field, IdProblem::LeadingZero));
    }
    Ok(value)
}

fn socket_addr(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
        IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
    }
}

impl SessionId {
    /// A new ID. `random` must be 16 bytes fresh from the OS's CSPRNG (the daemon uses
    /// `getrandom`); they become the session's identity for its whole life.
    pub fn new(
        master: SocketAddr,
        backup: Option<SocketAddr>,
        version: u32,
        random: [u8; SESSION_HASH_LEN],
    ) -> Self {
        SessionId {
            master,
            backup,
            version,
            hash: random,
        }
    }

    /// The same session (same HASH) at a new place: after a failover or a drain.
    pub fn moved(&self, master: SocketAddr, backup: Option<SocketAddr>, version: u32) -> Self {
        SessionId {
            master,
            backup,
            version,
            hash: self.hash,
        }
    }

    /// Whether two IDs name the same session (constant-time on HASH; placement ignored).
    pub fn same_session(&self, other: &SessionId) -> bool {
        ct_eq_16(&self.hash, &other.hash)
    }

    /// Parses the canonical text form; anything else is refused with the field and the reason.
    pub fn parse(text: &[u8]) -> Result<SessionId, IdError> {
        if text.is_empty() {
            return Err(err(IdField::Whole, IdProblem::Empty));
        }
        if text.len() > ID_TEXT_MAX {
            return Err(err(IdField::Whole, IdProblem::TooLong { len: text.len() }));
        }
        const FIELDS: [IdField; 6] = [
            IdField::Master,
            IdField::MasterPort,
            IdField::Backup,
            IdField::BackupPort,
            IdField::Version,
            IdField::Hash,
        ];
        let mut parts: [&[u8]; 6] = [&[]; 6];
        let mut rest = text;
        for (i, field) in FIELDS.iter().enumerate() {
            if i == FIELDS.len() - 1 {
                if rest.contains(&b'-') {
                    return Err(err(IdField::Whole, IdProblem::ExtraField));
                }
                parts[i] = rest;
            } else {
                let Some(dash) = rest.iter().position(|&b| b == b'-') else {
                    return Err(err(FIELDS[i + 1], IdProblem::MissingField));
                };
                parts[i] = &rest[..dash];
                rest = &rest[dash + 1..];
            }
            if parts[i].is_empty() {
                return Err(err(*field, IdProblem::Empty));
            }
        }
        let [master, master_port, backup, backup_port, version, hash] = parts;

        let master = socket_addr(
            parse_ip(IdField::Master, master)?,
            parse_port(IdField::MasterPort, master_port)?,
        );
        let backup = if backup == b"0" {
            if backup_port != b"0" {
                return Err(err(IdField::BackupPort, IdProblem::PortWithoutBackup));
            }
            None
        } else {
            Some(socket_addr(
                parse_ip(IdField::Backup, backup)?,
                parse_port(IdField::BackupPort, backup_port)?,
            ))
        };
        Ok(SessionId {
            master,
            backup,
            version: parse_version(version)?,
            hash: hex_bytes::<SESSION_HASH_LEN>(IdField::Hash, hash)?,
        })
    }

    /// The canonical text form, on the stack.
    pub fn encode(&self) -> IdBuf {
        let mut buf = IdBuf {
            bytes: [0; ID_TEXT_MAX],
            len: 0,
        };
        push_ip(&mut buf, self.master.ip());
        buf.push(b'-');
        buf.push_hex(&self.master.port().to_be_bytes());
        buf.push(b'-');
        match self.backup {
            None => {
                buf.push(b'0');
                buf.push(b'-');
                buf.push(b'0');
            }
            Some(backup) => {
                push_ip(&mut buf, backup.ip());
                buf.push(b'-');
                buf.push_hex(&backup.port().to_be_bytes());
            }
        }
        buf.push(b'-');
        let digits = (32 - self.version.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            buf.push(HEX[((self.version >> (4 * i)) & 0xf) as usize]);
        }
        buf.push(b'-');
        buf.push_hex(&self.hash);
        buf
    }
}

fn push_ip(buf: &mut IdBuf, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => buf.push_hex(&ip.octets()),
        IpAddr::V6(ip) => buf.push_hex(&ip.octets()),
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

/// PHP's own session-ID rule (`php_session_valid_key`): 1–256 bytes of `[A-Za-z0-9,-]`. PHP does
/// not apply it to a custom module's IDs, so the PHP module checks IDs (for example old-format
/// IDs from the previous handler) with this.
pub fn php_valid_key(text: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= PHP_ID_MAX
        && text
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b',' || b == b'-')
}

const FAMILY_NONE: u8 = 0;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Appends an ADDR (20 bytes); `None` is family 0 and all zeros.
pub(crate) fn write_addr(out: &mut Vec<u8>, addr: Option<&SocketAddr>) {
    let mut ip = [0u8; 16];
    let (family, port) = match addr {
        None => (FAMILY_NONE, 0),
        Some(SocketAddr::V4(a)) => {
            ip[..4].copy_from_slice(&a.ip().octets());
            (FAMILY_V4, a.port())
        }
        Some(SocketAddr::V6(a)) => {
            ip = a.ip().octets();
            (FAMILY_V6, a.port())
        }
    };
    put_u8(out, family);
    put_u8(out, 0);
    put_u16(out, port);
    out.extend_from_slice(&ip);
}

/// Reads an ADDR; `None` only if `allow_none`.
pub(crate) fn read_addr(
    r: &mut Reader<'_>,
    field: &'static str,
    allow_none: bool,
) -> Result<Option<SocketAddr>, Reason> {
    let family = r.u8(field)?;
    let reserved = r.u8(field)?;
    let port = r.u16(field)?;
    let ip: [u8; 16] = r.array(field)?;
    if reserved != 0 {
        return Err(Reason::NotZero { field });
    }
    match family {
        FAMILY_NONE if allow_none => {
            if port != 0 || ip != [0; 16] {
                return Err(Reason::NotZero { field });
            }
            Ok(None)
        }
        FAMILY_V4 => {
            if ip[4..] != [0; 12] {
                return Err(Reason::NotZero { field });
            }
            let v4 = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(v4, port))))
        }
        FAMILY_V6 => Ok(Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0,
        )))),
        family => Err(Reason::BadAddressFamily { field, family }),
    }
}

/// Appends a binary SID (60 bytes).
pub(crate) fn write_sid(out: &mut Vec<u8>, id: &SessionId) {
    let start = out.len();
    write_addr(out, Some(&id.master));
    write_addr(out, id.backup.as_ref());
    put_u32(out, id.version);
    out.extend_from_slice(&id.hash);
    debug_assert_eq!(out.len() - start, SID_LEN);
}

/// Reads a binary SID.
pub(crate) fn read_sid(r: &mut Reader<'_>) -> Result<SessionId, Reason> {
    let master = read_addr(r, "sid.master", false)?;
    let backup = read_addr(r, "sid.backup", true)?;
    let version = r.u32("sid.version")?;
    let hash = r.array("sid.hash")?;
    let Some(master) = master else {
        // read_addr never yields None when none is not allowed; refuse rather than assume.
        return Err(Reason::BadAddressFamily {
            field: "sid.master",
            family: FAMILY_NONE,
        });
    };
    Ok(SessionId {
        master,
        backup,
        version,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn v6(a: [u8; 16], port: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::from(a), port))
    }

    #[test]
    fn the_documented_example_parses_and_encodes_back() {
        let text = b"0a000001-8707-0-0-1-00112233445566778899aabbccddeeff";
        let id = SessionId::parse(text).unwrap();
        assert_eq!(id, SessionId::new(v4([10, 0, 0, 1], 34567), None, 1, HASH));
        assert_eq!(id.encode().as_bytes(), text);
        assert_eq!(id.to_string().as_bytes(), text);
    }

    #[test]
    fn longest_id_is_the_limit_and_php_valid() {
        let id = SessionId::new(
            v6([0xfe; 16], 0xffff),
            Some(v6([0x20; 16], 1)),
            u32::MAX,
            HASH,
        );
        let text = id.encode();
        assert_eq!(text.len(), ID_TEXT_MAX);
        assert!(php_valid_key(text.as_bytes()));
        assert_eq!(SessionId::parse(text.as_bytes()), Ok(id));
    }

    #[test]
    fn version_digits_have_no_leading_zeros() {
        for (version, digits) in [(0u32, "0"), (1, "1"), (0x10, "10"), (0xabc, "abc")] {
            let id = SessionId::new(v4([1, 2, 3, 4], 80), None, version, HASH);
            let text = id.encode();
            let field = text.as_str().split('-').nth(4).unwrap();
            assert_eq!(field, digits);
            assert_eq!(SessionId::parse(text.as_bytes()).unwrap().version, version);
        }
    }

    #[test]
    fn non_canonical_forms_are_refused_with_the_field() {
        let cases: &[(&[u8], IdField, IdProblem)] = &[
            (b"", IdField::Whole, IdProblem::Empty),
            (
                b"0A000001-8707-0-0-1-00112233445566778899aabbccddeeff",
                IdField::Master,
                IdProblem::Uppercase { byte: b'A' },
            ),
            (
                b"0a00001-8707-0-0-1-00112233445566778899aabbccddeeff",
                IdField::Master,
                IdProblem::BadLength { len: 7 },
            ),
            (
                b"0a000001-707-0-0-1-00112233445566778899aabbccddeeff",
                IdField::MasterPort,
                IdProblem::BadLength { len: 3 },
            ),
            (
                b"0a000001-8707-0-8707-1-00112233445566778899aabbccddeeff",
                IdField::BackupPort,
                IdProblem::PortWithoutBackup,
            ),
            (
                b"0a000001-8707-00-0-1-00112233445566778899aabbccddeeff",
                IdField::Backup,
                IdProblem::BadLength { len: 2 },
            ),
            (
                b"0a000001-8707-0a000002-0-1-00112233445566778899aabbccddeeff",
                IdField::BackupPort,
                IdProblem::BadLength { len: 1 },
            ),
            (
                b"0a000001-8707-0-0-01-00112233445566778899aabbccddeeff",
                IdField::Version,
                IdProblem::LeadingZero,
            ),
            (
                b"0a000001-8707-0-0-100000000-00112233445566778899aabbccddeeff",
                IdField::Version,
                IdProblem::BadLength { len: 9 },
            ),
            (
                b"0a000001-8707-0-0-1-00112233445566778899aabbccddeef",
                IdField::Hash,
                IdProblem::BadLength { len: 31 },
            ),
            (
                b"0a000001-8707-0-0-1-00112233445566778899aabbccddeeff-1",
                IdField::Whole,
                IdProblem::ExtraField,
            ),
            (
                b"0a000001-8707-0-0-1",
                IdField::Hash,
                IdProblem::MissingField,
            ),
            (
                b"0a000001-8707--0-1-00112233445566778899aabbccddeeff",
                IdField::Backup,
                IdProblem::Empty,
            ),
            (
                b"0a000001-8707-0-0-1-0011223344556677889.aabbccddeeff",
                IdField::Hash,
                IdProblem::BadChar { byte: b'.' },
            ),
        ];
        for &(text, field, problem) in cases {
            assert_eq!(
                SessionId::parse(text),
                Err(IdError { field, problem }),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let long = [b'a'; ID_TEXT_MAX + 1];
        assert_eq!(
            SessionId::parse(&long),
            Err(err(IdField::Whole, IdProblem::TooLong { len: 118 }))
        );
    }

    #[test]
    fn equality_ignores_nothing_the_wire_carries() {
        let a = SessionId::new(v4([1, 2, 3, 4], 80), None, 1, HASH);
        let mut b = a;
        b.hash[15] ^= 1;
        assert_ne!(a, b);
        assert!(!a.same_session(&b));
        let moved = a.moved(v4([5, 6, 7, 8], 80), Some(v4([1, 2, 3, 4], 80)), 2);
        assert_ne!(a, moved);
        assert!(a.same_session(&moved));
    }

    #[test]
    fn binary_sid_round_trips_and_refuses_padding() {
        let id = SessionId::new(v4([10, 0, 0, 1], 34567), Some(v6([7; 16], 9)), 5, HASH);
        let mut out = Vec::new();
        write_sid(&mut out, &id);
        assert_eq!(out.len(), SID_LEN);
        assert_eq!(read_sid(&mut Reader::new(&out)), Ok(id));
        let mut bad = out.clone();
        bad[10] = 1; // IPv4 padding
        assert_eq!(
            read_sid(&mut Reader::new(&bad)),
            Err(Reason::NotZero {
                field: "sid.master"
            })
        );
        let mut bad = out.clone();
        bad[0] = 0; // master cannot be "none"
        assert_eq!(
            read_sid(&mut Reader::new(&bad)),
            Err(Reason::BadAddressFamily {
                field: "sid.master",
                family: 0
            })
        );
    }

    #[test]
    fn php_rule() {
        assert!(php_valid_key(b"abc,DEF-123"));
        assert!(!php_valid_key(b""));
        assert!(!php_valid_key(b"a.b"));
        assert!(!php_valid_key(&[b'a'; 257]));
    }
}
