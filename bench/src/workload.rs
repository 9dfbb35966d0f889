//! What one simulated PHP request does, and on which sessions: the workload settings, the key
//! space (uniform or Zipf) and the session-ID text the Redis and memcached handlers use.

use std::net::{Ipv4Addr, SocketAddr};

use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};
use scd_wire::SessionId;
use serde::Serialize;

/// The workloads of the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// One PHP request: read with lock, then write and unlock (or touch, when unchanged).
    Cycle,
    /// Read only (PHP's `read_and_close`), each handler as it really does it.
    Read,
    /// A login storm: every request starts a new session.
    Create,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Cycle => "session cycle",
            WorkloadKind::Read => "read only",
            WorkloadKind::Create => "create heavy",
        }
    }
}

/// How sessions are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDist {
    /// Every session equally likely.
    Uniform,
    /// A few hot sessions (Zipf, exponent `--zipf-s`).
    Zipf,
}

/// The workload of one run, the same for every target.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub size_bytes: usize,
    pub sessions: usize,
    pub dist: KeyDist,
    pub zipf_s: f64,
    /// Share (0..=1) of cycles whose data did not change: they touch instead of writing.
    pub touch_share: f64,
    pub connections: usize,
    pub threads: usize,
    pub in_flight: usize,
    pub seed: u64,
}

/// Picks session indexes in `0..n` by the workload's distribution.
#[derive(Clone, Debug)]
pub struct KeyPicker {
    n: usize,
    zipf: Option<Zipf<f64>>,
}

impl KeyPicker {
    pub fn new(n: usize, dist: KeyDist, zipf_s: f64) -> anyhow::Result<KeyPicker> {
        anyhow::ensure!(n > 0, "the key space is empty");
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf => Some(
                Zipf::new(n as f64, zipf_s)
                    .map_err(|e| anyhow::anyhow!("zipf exponent {zipf_s}: {e}"))?,
            ),
        };
        Ok(KeyPicker { n, zipf })
    }

    pub fn pick(&self, rng: &mut SmallRng) -> usize {
        match &self.zipf {
            None => rng.random_range(0..self.n),
            // Zipf yields 1..=n as a float; rank 1 is the hottest session.
            Some(z) => (z.sample(rng) as usize).clamp(1, self.n) - 1,
        }
    }
}

/// 32 lowercase hex digits derived from (seed, index): a session ID as PHP's default
/// `create_sid` makes them (`sid_length = 32`), reproducible so that every run of one seed uses
/// the same keys.
pub fn hex_id(seed: u64, index: u64) -> [u8; 32] {
    let a = splitmix64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let b = splitmix64(a ^ 0xD1B5_4A32_D192_ED03);
    hex32(((a as u128) << 64) | b as u128)
}

/// 32 lowercase hex digits of a random 128-bit value (a fresh session ID).
pub fn random_hex_id(rng: &mut SmallRng) -> [u8; 32] {
    hex32(rng.random())
}

fn hex32(v: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((v >> (124 - 4 * i)) & 0xF) as usize];
    }
    out
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A well-formed scd session ID for the null server, which keeps no sessions and so hands out
/// none: the same 60 bytes on the wire as a real one.
pub fn synthetic_id(seed: u64, index: u64) -> SessionId {
    let hex = hex_id(seed, index);
    let mut hash = [0u8; 16];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = (nibble(hex[2 * i]) << 4) | nibble(hex[2 * i + 1]);
    }
    SessionId::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 34567)),
        None,
        1,
        hash,
    )
}

fn nibble(h: u8) -> u8 {
    match h {
        b'0'..=b'9' => h - b'0',
        _ => h - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hex_ids_are_reproducible_distinct_and_php_valid() {
        let a = hex_id(1, 0);
        assert_eq!(a, hex_id(1, 0));
        assert_ne!(a, hex_id(1, 1));
        assert_ne!(a, hex_id(2, 0));
        assert!(
            a.iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        );
    }

    #[test]
    fn zipf_picks_stay_in_range_and_favour_the_first_keys() {
        let picker = KeyPicker::new(1000, KeyDist::Zipf, 0.99).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut first = 0;
        for _ in 0..10_000 {
            let k = picker.pick(&mut rng);
            assert!(k < 1000);
            if k < 10 {
                first += 1;
            }
        }
        // Uniform would give ~100 of 10,000 in the first 1%; Zipf(0.99) gives several thousand.
        assert!(first > 1000, "first 10 keys drew {first}");
    }

    #[test]
    fn synthetic_ids_differ_by_index() {
        assert!(!synthetic_id(1, 1).same_session(&synthetic_id(1, 2)));
        assert!(synthetic_id(1, 1).same_session(&synthetic_id(1, 1)));
    }
}
