//! The shard manifest: which shard of how many this directory is, and the lock-token epoch.
//!
//! ```text
//! off size field
//!   0    8 magic "SCDMANI\0"
//!   8    2 format (1)
//!  10    2 reserved, zero
//!  12    4 shard index
//!  16    4 shard count
//!  20    4 reserved, zero
//!  24    8 lock-token epoch (raised and written durably before any token of it is issued)
//!  32    4 CRC32 of bytes 0..32
//! ```

use crate::constants::{SHARDS_MAX, TOKEN_EPOCH_MAX};

pub(crate) const MANIFEST_MAGIC: [u8; 8] = *b"SCDMANI\0";
pub(crate) const MANIFEST_FORMAT: u16 = 1;
pub(crate) const MANIFEST_SIZE: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub shard_index: u32,
    pub shard_count: u32,
    pub token_epoch: u64,
}

impl Manifest {
    pub fn encode(&self) -> [u8; MANIFEST_SIZE] {
        let mut b = [0u8; MANIFEST_SIZE];
        b[0..8].copy_from_slice(&MANIFEST_MAGIC);
        b[8..10].copy_from_slice(&MANIFEST_FORMAT.to_le_bytes());
        b[12..16].copy_from_slice(&self.shard_index.to_le_bytes());
        b[16..20].copy_from_slice(&self.shard_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.token_epoch.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a manifest, or says why the bytes are not one.
    pub fn decode(b: &[u8]) -> Result<Manifest, &'static str> {
        if b.len() != MANIFEST_SIZE {
            return Err("wrong length");
        }
        if b[0..8] != MANIFEST_MAGIC {
            return Err("wrong magic");
        }
        let crc = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
        if crc32fast::hash(&b[..32]) != crc {
            return Err("CRC mismatch");
        }
        if u16::from_le_bytes([b[8], b[9]]) != MANIFEST_FORMAT {
            return Err("unknown format");
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[24..32]);
        let m = Manifest {
            shard_index: u32_at(12),
            shard_count: u32_at(16),
            token_epoch: u64::from_le_bytes(e),
        };
        if m.shard_count == 0 || m.shard_count > SHARDS_MAX || m.shard_index >= m.shard_count {
            return Err("shard index or count out of range");
        }
        if m.token_epoch > TOKEN_EPOCH_MAX {
            return Err("token epoch out of range");
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = Manifest {
            shard_index: 2,
            shard_count: 4,
            token_epoch: 77,
        };
        let b = m.encode();
        assert_eq!(Manifest::decode(&b), Ok(m));
        for i in 0..MANIFEST_SIZE {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(
                Manifest::decode(&d).is_err(),
                "flip in byte {i} not detected"
            );
        }
        assert!(Manifest::decode(&b[..35]).is_err());
    }
}
