//! Keys and MACs: the cluster key, its derived keys, and constant-time comparison.
//!
//! One configured secret yields two independent keys through BLAKE3's key-derivation mode, so a
//! heartbeat tag can never be replayed as a relay tag (docs/wire.md, "Keys"). Every comparison of
//! a tag or key goes through [`constant_time_eq`], so a mismatch takes the same time wherever it
//! is.

use core::fmt;

use crate::constants::{
    CLUSTER_SECRET_MAX, CLUSTER_SECRET_MIN, HEARTBEAT_KEY_CONTEXT, RELAY_KEY_CONTEXT,
};

/// Why a configured cluster secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Shorter than [`CLUSTER_SECRET_MIN`] bytes.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Longer than [`CLUSTER_SECRET_MAX`] bytes.
    TooLong {
        /// Its length.
        len: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::TooShort { len } => write!(
                f,
                "cluster key is {len} bytes, at least {CLUSTER_SECRET_MIN} required"
            ),
            KeyError::TooLong { len } => write!(
                f,
                "cluster key is {len} bytes, at most {CLUSTER_SECRET_MAX} allowed"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// The keys derived from the configured cluster secret.
#[derive(Clone)]
pub struct ClusterKey {
    pub(crate) relay: [u8; 32],
    pub(crate) heartbeat: [u8; 32],
}

impl ClusterKey {
    /// Derives the relay and heartbeat keys from the configured secret (its raw bytes).
    pub fn from_secret(secret: &[u8]) -> Result<ClusterKey, KeyError> {
        if secret.len() < CLUSTER_SECRET_MIN {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        if secret.len() > CLUSTER_SECRET_MAX {
            return Err(KeyError::TooLong { len: secret.len() });
        }
        Ok(ClusterKey {
            relay: blake3::derive_key(RELAY_KEY_CONTEXT, secret),
            heartbeat: blake3::derive_key(HEARTBEAT_KEY_CONTEXT, secret),
        })
    }
}

/// Never print key material.
impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Constant-time equality of two 16-byte secrets.
pub fn ct_eq_16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    constant_time_eq::constant_time_eq_16(a, b)
}

/// Constant-time equality of two 32-byte secrets.
pub fn ct_eq_32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    constant_time_eq::constant_time_eq_32(a, b)
}

/// BLAKE3 keyed hash of the concatenation of `parts` (no copy of the parts).
pub(crate) fn keyed(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    for part in parts {
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_length_is_bounded() {
        assert!(matches!(
            ClusterKey::from_secret(&[1; 15]),
            Err(KeyError::TooShort { len: 15 })
        ));
        assert!(matches!(
            ClusterKey::from_secret(&[1; CLUSTER_SECRET_MAX + 1]),
            Err(KeyError::TooLong { .. })
        ));
        assert!(ClusterKey::from_secret(&[1; 16]).is_ok());
    }

    #[test]
    fn derived_keys_differ_from_each_other_and_per_secret() {
        let a = ClusterKey::from_secret(b"0123456789abcdef").unwrap();
        let b = ClusterKey::from_secret(b"0123456789abcdeg").unwrap();
        assert_ne!(a.relay, a.heartbeat);
        assert_ne!(a.relay, b.relay);
        assert_ne!(a.heartbeat, b.heartbeat);
        assert_eq!(format!("{a:?}"), "ClusterKey(..)");
    }

    #[test]
    fn keyed_hash_of_parts_equals_keyed_hash_of_whole() {
        let key = [7u8; 32];
        let whole = blake3::keyed_hash(&key, b"headerbody");
        assert_eq!(keyed(&key, &[b"head", b"er", b"body"]), *whole.as_bytes());
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq_16(&[1; 16], &[1; 16]));
        assert!(!ct_eq_16(&[1; 16], &[2; 16]));
        assert!(ct_eq_32(&[1; 32], &[1; 32]));
        assert!(!ct_eq_32(&[1; 32], &[0; 32]));
    }
}
