//! Bytes on disk: size classes, the record format and the slab file header.
//!
//! All integers are little-endian. The byte diagrams are in docs/storage.md; this file is the
//! one place that reads or writes them. Decoding never panics and never trusts a length
//! before checking it against the slot that holds it.

use crate::constants::{
    CLASS_COUNT, RECORD_HEADER_SIZE, RECORD_OVERHEAD, RECORD_TRAILER_SIZE, SLAB_HEADER_SIZE,
    SLOT_SIZE_MIN, VERSION_MAX,
};
use crate::types::SessionKey;

/// First bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"SCDR";
/// Record format this build writes and reads.
pub const RECORD_FORMAT: u8 = 1;
/// First bytes of every slab file.
pub const SLAB_MAGIC: [u8; 8] = *b"SCDSLAB\0";
/// Slab file format this build writes and reads.
pub const SLAB_FORMAT: u16 = 1;

/// Slot size of a size class: quarter steps of powers of two from `SLOT_SIZE_MIN`.
pub const fn slot_size(class: usize) -> usize {
    let octave = class / 4;
    let step = class % 4;
    (SLOT_SIZE_MIN << octave) / 4 * (4 + step)
}

/// The smallest class whose slots hold a record of `record_len` bytes.
pub fn class_for(record_len: usize) -> Option<usize> {
    (0..CLASS_COUNT).find(|&c| slot_size(c) >= record_len)
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A session's data.
    Session,
    /// A deleted session: keeps older copies of the session that may still sit in freed
    /// slots from coming back at recovery, until all of them have expired.
    Tombstone,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Session => 1,
            RecordKind::Tombstone => 2,
        }
    }
}

/// Why a slot does not hold a usable record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDamage {
    /// The first bytes are neither zero nor the record magic.
    Magic,
    /// A record format this build does not know.
    Format,
    /// A record kind this build does not know, or non-zero reserved bytes.
    Kind,
    /// The data length does not fit in the slot (or a tombstone carries data).
    Length,
    /// The CRC does not match: a torn write or a bit flip.
    Checksum,
    /// The version is zero or above `VERSION_MAX`.
    Version,
}

impl RecordDamage {
    pub fn describe(self) -> &'static str {
        match self {
            RecordDamage::Magic => "wrong magic",
            RecordDamage::Format => "unknown record format",
            RecordDamage::Kind => "unknown record kind",
            RecordDamage::Length => "data length does not fit the slot",
            RecordDamage::Checksum => "CRC mismatch (torn or corrupt)",
            RecordDamage::Version => "version out of range",
        }
    }
}

/// A record as it lies in its slot (zero copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub kind: RecordKind,
    pub key: SessionKey,
    pub version: u64,
    pub expires_at_ms: u64,
    pub data: &'a [u8],
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotContent<'a> {
    /// Never written (all-zero header).
    Empty,
    Record(RecordView<'a>),
    Damaged(RecordDamage),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The header bytes of a record.
pub fn encode_header(
    kind: RecordKind,
    key: &SessionKey,
    version: u64,
    expires_at_ms: u64,
    data_len: u32,
) -> [u8; RECORD_HEADER_SIZE] {
    let mut h = [0u8; RECORD_HEADER_SIZE];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4] = RECORD_FORMAT;
    h[5] = kind.code();
    // h[6..8] reserved, zero.
    h[8..24].copy_from_slice(&key.0);
    h[24..32].copy_from_slice(&version.to_le_bytes());
    h[32..40].copy_from_slice(&expires_at_ms.to_le_bytes());
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// The CRC32 that closes a record: over the header and the data.
pub fn record_crc(header: &[u8; RECORD_HEADER_SIZE], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(data);
    h.finalize()
}

/// Reads the record in `slot` (the whole slot's bytes). Checks everything, CRC included.
pub fn decode(slot: &[u8]) -> SlotContent<'_> {
    decode_inner(slot, true)
}

/// Like `decode` but skips the CRC over the data: for the read path when the operator turned
/// read verification off. Header fields are still checked.
pub fn decode_unverified(slot: &[u8]) -> SlotContent<'_> {
    decode_inner(slot, false)
}

fn decode_inner(slot: &[u8], verify_crc: bool) -> SlotContent<'_> {
    if slot.len() < RECORD_OVERHEAD {
        return SlotContent::Damaged(RecordDamage::Length);
    }
    let head = &slot[..RECORD_HEADER_SIZE];
    if head[0..4] != RECORD_MAGIC {
        if head.iter().all(|&b| b == 0) {
            return SlotContent::Empty;
        }
        return SlotContent::Damaged(RecordDamage::Magic);
    }
    if head[4] != RECORD_FORMAT {
        return SlotContent::Damaged(RecordDamage::Format);
    }
    let kind = match head[5] {
        1 => RecordKind::Session,
        2 => RecordKind::Tombstone,
        _ => return SlotContent::Damaged(RecordDamage::Kind),
    };
    if head[6] != 0 || head[7] != 0 {
        return SlotContent::Damaged(RecordDamage::Kind);
    }
    let data_len = u32_at(head, 40) as usize;
    // Checked against the slot before anything is sliced with it.
    if data_len > slot.len() - RECORD_OVERHEAD {
        return SlotContent::Damaged(RecordDamage::Length);
    }
    if kind == RecordKind::Tombstone && data_len != 0 {
        return SlotContent::Damaged(RecordDamage::Length);
    }
    let data = &slot[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + data_len];
    if verify_crc {
        let crc_at = RECORD_HEADER_SIZE + data_len;
        let stored = u32_at(slot, crc_at);
        let mut h = crc32fast::Hasher::new();
        h.update(&slot[..crc_at]);
        if h.finalize() != stored {
            return SlotContent::Damaged(RecordDamage::Checksum);
        }
    }
    let version = u64_at(head, 24);
    if version == 0 || version > VERSION_MAX {
        return SlotContent::Damaged(RecordDamage::Version);
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&head[8..24]);
    SlotContent::Record(RecordView {
        kind,
        key: SessionKey(key),
        version,
        expires_at_ms: u64_at(head, 32),
        data,
    })
}

/// Total bytes of a record with `data_len` bytes of data.
pub const fn record_len(data_len: usize) -> usize {
    data_len + RECORD_OVERHEAD
}

/// Where the CRC of a record with `data_len` bytes of data sits in its slot.
#[cfg(test)]
pub const fn crc_offset(data_len: usize) -> usize {
    RECORD_HEADER_SIZE + data_len
}

const _: () = assert!(RECORD_TRAILER_SIZE == 4);
const _: () = assert!(slot_size(0) == SLOT_SIZE_MIN);
const _: () = assert!(slot_size(5) == 320);
const _: () = assert!(
    slot_size(CLASS_COUNT - 1)
        >= crate::constants::SESSION_SIZE_LIMIT + crate::constants::RECORD_OVERHEAD
);
const _: () = assert!(SLOT_SIZE_MIN >= RECORD_OVERHEAD);

/// The fixed header at the start of every slab file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabHeader {
    pub class: u16,
    pub slot_size: u32,
    pub shard_index: u32,
    pub file_number: u32,
}

impl SlabHeader {
    pub fn encode(&self) -> [u8; SLAB_HEADER_SIZE] {
        let mut h = [0u8; SLAB_HEADER_SIZE];
        h[0..8].copy_from_slice(&SLAB_MAGIC);
        h[8..10].copy_from_slice(&SLAB_FORMAT.to_le_bytes());
        h[10..12].copy_from_slice(&self.class.to_le_bytes());
        h[12..16].copy_from_slice(&self.slot_size.to_le_bytes());
        h[16..20].copy_from_slice(&self.shard_index.to_le_bytes());
        h[20..24].copy_from_slice(&self.file_number.to_le_bytes());
        // h[24..32] reserved, zero.
        let crc = crc32fast::hash(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads a slab file header, or says why it is not one.
    pub fn decode(b: &[u8]) -> Result<SlabHeader, &'static str> {
        if b.len() < SLAB_HEADER_SIZE {
            return Err("file shorter than its header");
        }
        if b[0..8] != SLAB_MAGIC {
            return Err("wrong slab file magic");
        }
        if crc32fast::hash(&b[..32]) != u32_at(b, 32) {
            return Err("slab file header CRC mismatch");
        }
        let format = u16::from_le_bytes([b[8], b[9]]);
        if format != SLAB_FORMAT {
            return Err("unknown slab file format");
        }
        Ok(SlabHeader {
            class: u16::from_le_bytes([b[10], b[11]]),
            slot_size: u32_at(b, 12),
            shard_index: u32_at(b, 16),
            file_number: u32_at(b, 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_record(slot: &mut [u8], kind: RecordKind, key: SessionKey, data: &[u8]) {
        let h = encode_header(kind, &key, 9, 1234, data.len() as u32);
        let crc = record_crc(&h, data);
        slot[..RECORD_HEADER_SIZE].copy_from_slice(&h);
        slot[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + data.len()].copy_from_slice(data);
        slot[crc_offset(data.len())..crc_offset(data.len()) + 4]
            .copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn classes_grow_and_cover_every_size() {
        for c in 1..CLASS_COUNT {
            assert!(slot_size(c) > slot_size(c - 1));
            // Waste bound: at most 25% of the next smaller class.
            assert!(slot_size(c) * 4 <= slot_size(c - 1) * 5 + 4);
        }
        assert_eq!(class_for(1), Some(0));
        assert_eq!(class_for(128), Some(0));
        assert_eq!(class_for(129), Some(1));
        assert_eq!(slot_size(class_for(record_len(4096)).unwrap()), 5120);
        assert_eq!(class_for(usize::MAX), None);
    }

    #[test]
    fn record_round_trip_and_damage() {
        let key = SessionKey([7; 16]);
        let mut slot = vec![0u8; 256];
        assert!(matches!(decode(&slot), SlotContent::Empty));
        write_record(&mut slot, RecordKind::Session, key, b"hello");
        match decode(&slot) {
            SlotContent::Record(r) => {
                assert_eq!(r.data, b"hello");
                assert_eq!(r.key, key);
                assert_eq!(r.version, 9);
                assert_eq!(r.expires_at_ms, 1234);
                assert_eq!(r.kind, RecordKind::Session);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Every single bit flip in the record is detected.
        for bit in 0..record_len(5) * 8 {
            let mut s = slot.clone();
            s[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(decode(&s), SlotContent::Damaged(_)),
                "flip of bit {bit} not detected"
            );
        }
        let mut s = slot.clone();
        s[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&s),
            SlotContent::Damaged(RecordDamage::Length)
        ));
        assert!(matches!(
            decode(&slot[..20]),
            SlotContent::Damaged(RecordDamage::Length)
        ));
        let mut t = vec![0u8; 128];
        write_record(&mut t, RecordKind::Tombstone, key, b"");
        assert!(matches!(decode(&t), SlotContent::Record(r) if r.kind == RecordKind::Tombstone));
    }

    #[test]
    fn slab_header_round_trip() {
        let h = SlabHeader {
            class: 3,
            slot_size: 224,
            shard_index: 2,
            file_number: 9,
        };
        let b = h.encode();
        assert_eq!(SlabHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[13] ^= 1;
        assert!(SlabHeader::decode(&bad).is_err());
        assert!(SlabHeader::decode(&b[..10]).is_err());
    }
}
