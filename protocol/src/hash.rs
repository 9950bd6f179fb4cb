//! `Hash`: the 32-byte BLAKE3 digest that names every blob, recipe and build
//! in Kiln. Shown as 64 lowercase hex characters, exactly what `b3sum` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of a hash in bytes.
pub const HASH_BYTES: usize = 32;
/// Length of a hash written as hex.
pub const HASH_HEX_CHARS: usize = 64;
/// Multihash code for BLAKE3 (multicodec table: `blake3` = 0x1e).
pub const MULTIHASH_BLAKE3: u8 = 0x1e;

/// An incremental BLAKE3 hasher (also `std::io::Write`): feed it bytes,
/// then `Hash::from(hasher.finalize())`.
pub use blake3::Hasher;

/// A BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hash([u8; HASH_BYTES]);

impl Hash {
    /// Hash of a byte slice (what `b3sum` prints for a file with these bytes).
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Hash of `bytes` in a domain: BLAKE3 in key-derivation mode, so hashes
    /// made for different purposes can never collide with each other or with
    /// a plain blob hash.
    pub fn derive(domain: &str, bytes: &[u8]) -> Hash {
        Hash(blake3::derive_key(domain, bytes))
    }

    pub const fn from_bytes(bytes: [u8; HASH_BYTES]) -> Hash {
        Hash(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; HASH_BYTES] {
        &self.0
    }

    /// The hash as a multihash (`0x1e 0x20` then the 32 bytes): the key under
    /// which libp2p/IPFS implementations look up BLAKE3-addressed content.
    pub fn multihash(&self) -> [u8; HASH_BYTES + 2] {
        let mut out = [0u8; HASH_BYTES + 2];
        out[0] = MULTIHASH_BLAKE3;
        out[1] = HASH_BYTES as u8;
        out[2..].copy_from_slice(&self.0);
        out
    }

    /// Parses a multihash made by [`Hash::multihash`].
    pub fn from_multihash(bytes: &[u8]) -> Option<Hash> {
        match bytes {
            [MULTIHASH_BLAKE3, len, rest @ ..] if usize::from(*len) == HASH_BYTES && rest.len() == HASH_BYTES => {
                let mut out = [0u8; HASH_BYTES];
                out.copy_from_slice(rest);
                Some(Hash(out))
            }
            _ => None,
        }
    }

    /// The first 12 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Hash {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    /// 64 lowercase hex digits, written at once: one write per digit pair
    /// would be one system call each on an unbuffered stream (stderr).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, byte) in self.0.iter().enumerate() {
            hex[2 * i] = DIGITS[usize::from(byte >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        f.pad(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a Kiln hash: {reason}; a hash is 64 lowercase hex characters (0-9, a-f), as printed by `b3sum`"
)]
pub struct ParseHashError {
    input: String,
    reason: &'static str,
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Hash, ParseHashError> {
        let fail = |reason| ParseHashError {
            input: s.chars().take(80).collect(),
            reason,
        };
        if s.len() != HASH_HEX_CHARS {
            return Err(fail(if s.len() < HASH_HEX_CHARS {
                "too short"
            } else {
                "too long"
            }));
        }
        let mut out = [0u8; HASH_BYTES];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or_else(|| fail("contains a character that is not lowercase hex"))?;
            let lo = hex_digit(pair[1]).ok_or_else(|| fail("contains a character that is not lowercase hex"))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Hash(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Hex of arbitrary bytes (keys, signatures), lowercase.
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses lowercase or uppercase hex of exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0].to_ascii_lowercase())?;
        let lo = hex_digit(pair[1].to_ascii_lowercase())?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known vectors: `printf '' | b3sum` and `printf 'abc' | b3sum`.
    const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    const ABC: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";

    #[test]
    fn matches_b3sum_vectors() {
        assert_eq!(Hash::of(b"").to_string(), EMPTY);
        assert_eq!(Hash::of(b"abc").to_string(), ABC);
        // A longer input that spans several BLAKE3 chunks (1 KiB each).
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(Hash::of(&big), Hash::from(blake3::hash(&big)));
    }

    #[test]
    fn parse_round_trips() {
        let h: Hash = ABC.parse().unwrap();
        assert_eq!(h.to_string(), ABC);
        assert_eq!(h, Hash::of(b"abc"));
    }

    #[test]
    fn parse_rejects_with_explanation() {
        for bad in [
            "",
            "abc",
            &ABC.to_uppercase(),
            &format!("{ABC}0"),
            &ABC.replace('6', "g"),
        ] {
            let err = bad.parse::<Hash>().unwrap_err().to_string();
            assert!(err.contains("64 lowercase hex characters"), "{err}");
        }
        // Non-ASCII input of the right byte length must not panic.
        let weird = "é".repeat(32);
        assert!(weird.parse::<Hash>().is_err());
    }

    #[test]
    fn multihash_round_trips() {
        let h = Hash::of(b"abc");
        let mh = h.multihash();
        assert_eq!(&mh[..2], &[0x1e, 0x20]);
        assert_eq!(Hash::from_multihash(&mh), Some(h));
        assert_eq!(Hash::from_multihash(&mh[..33]), None);
    }

    #[test]
    fn derive_is_domain_separated() {
        assert_ne!(Hash::derive("a", b"x"), Hash::derive("b", b"x"));
        assert_ne!(Hash::derive("a", b"x"), Hash::of(b"x"));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(to_hex(&[0, 255, 16]), "00ff10");
        assert_eq!(from_hex::<3>("00FF10"), Some([0, 255, 16]));
        assert_eq!(from_hex::<3>("00ff1"), None);
    }
}
