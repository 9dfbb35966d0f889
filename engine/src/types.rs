//! The small value types of the public API and the routing function.

use core::fmt;
use core::num::NonZeroU64;

/// A session's identity: the 128 random bits (HASH) of its session ID. The engine never sees
/// the text ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub [u8; 16]);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Who holds or waits for a lock: the daemon assigns one per client connection, and calls
/// `Shard::release_owner` when that connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// Proof of holding a session lock. Never issued twice by a shard, not even across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockToken(pub NonZeroU64);

impl LockToken {
    /// The token as a number (for the wire).
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// A token from a number received on the wire; `None` for zero, which is never issued.
    pub fn from_u64(value: u64) -> Option<LockToken> {
        NonZeroU64::new(value).map(LockToken)
    }
}

/// A queued lock request; resolved later by `Event::LockGranted` or `Event::LockTimedOut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitId(pub u64);

/// A write-through write waiting for its flush; `Event::Durable` names it when the flush is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// The shard a session belongs to, for a store of `shards` shards.
///
/// Keys are uniformly random, so multiply-shift of the first 8 bytes spreads them evenly.
/// The result depends only on the key bytes and `shards` (fixed little-endian read, fixed
/// arithmetic), so every process and every build agrees on it. `shards` of 0 is treated as 1.
pub fn shard_for(key: &SessionKey, shards: usize) -> usize {
    let shards = shards.max(1) as u64;
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.0[..8]);
    let x = u64::from_le_bytes(first);
    // Lemire's multiply-shift: maps x in [0, 2^64) onto [0, shards) without division bias
    // that matters for random keys.
    ((u128::from(x) * u128::from(shards)) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_is_stable_and_in_range() {
        let key = SessionKey([0xff; 16]);
        assert_eq!(shard_for(&key, 4), 3);
        assert_eq!(shard_for(&SessionKey([0; 16]), 4), 0);
        // Golden value: must never change, or sessions land on other shards after an upgrade.
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&0x8000_0000_0000_0000u64.to_le_bytes());
        assert_eq!(shard_for(&SessionKey(k), 6), 3);
        assert_eq!(shard_for(&key, 0), 0);
        for s in 1..64 {
            assert!(shard_for(&key, s) < s);
        }
    }

    #[test]
    fn shard_for_spreads_keys() {
        let mut counts = [0usize; 7];
        let mut x: u64 = 0x1234_5678_9abc_def0;
        for _ in 0..70_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&x.to_le_bytes());
            counts[shard_for(&SessionKey(k), 7)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn token_zero_is_refused() {
        assert!(LockToken::from_u64(0).is_none());
        assert!(matches!(LockToken::from_u64(7), Some(t) if t.get() == 7));
    }
}
