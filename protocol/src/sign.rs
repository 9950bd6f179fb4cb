//! Ed25519 keys and signed envelopes. The node key that is a peer's libp2p
//! identity also signs its attestations and gossip; a recipe publisher's key
//! signs recipe ids.
//!
//! A `Signed<T>` carries the canonical bytes of a `T`, the signer's public
//! key and a signature over a domain tag and those bytes. `verify` checks
//! the signature before it decodes anything, so a flipped bit anywhere in
//! the envelope is refused.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use ed25519_dalek::Signer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{from_hex, to_hex};
use crate::wire::{self, WireError};

/// Largest body a signed envelope may carry.
pub const SIGNED_BODY_BYTES_MAX: usize = 256 * 1024;

/// An ed25519 public key: a worker, a coordinator or a recipe publisher.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SignError;

    fn from_str(s: &str) -> Result<PublicKey, SignError> {
        let bytes = from_hex::<32>(s.trim()).ok_or_else(|| SignError::KeyText(s.chars().take(80).collect()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SignError::KeyText(s.chars().take(80).collect()))?;
        Ok(PublicKey(bytes))
    }
}

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", to_hex(&self.0))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl FromStr for Signature {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Signature, SignError> {
        from_hex::<64>(s.trim()).map(Signature).ok_or(SignError::SignatureText)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Two fixed halves: serde has no impls for arrays over 32 elements,
        // and a fixed-size tuple encodes without a length prefix.
        let (a, b) = self.0.split_at(32);
        let mut first = [0u8; 32];
        let mut second = [0u8; 32];
        first.copy_from_slice(a);
        second.copy_from_slice(b);
        (first, second).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        let (first, second) = <([u8; 32], [u8; 32])>::deserialize(deserializer)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&first);
        out[32..].copy_from_slice(&second);
        Ok(Signature(out))
    }
}

/// A secret signing key. Not `Serialize`, and its `Debug` shows only the
/// public half: it never leaves the node except as the key file.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl SecretKey {
    /// A key from 32 secret bytes (read from the key file, or fresh random).
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` under `domain` (see [`Signable::DOMAIN`]).
    pub fn sign_raw(&self, domain: &str, message: &[u8]) -> Signature {
        Signature(self.0.sign(&domain_message(domain, message)).to_bytes())
    }
}

/// Verifies a signature made by [`SecretKey::sign_raw`].
pub fn verify_raw(key: &PublicKey, domain: &str, message: &[u8], signature: &Signature) -> Result<(), SignError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key.0).map_err(|_| SignError::BadKey)?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(&domain_message(domain, message), &signature)
        .map_err(|_| SignError::BadSignature)
}

fn domain_message(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

/// Why a signature or a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signature does not verify: the signed bytes, the key or the signature were altered")]
    BadSignature,
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("{0:?} is not a public key: expected 64 hex characters, as printed by `kiln keygen`")]
    KeyText(String),
    #[error("not a signature: expected 128 hex characters")]
    SignatureText,
    #[error("signed body: {0}")]
    Body(#[from] WireError),
}

/// A type that can travel inside a [`Signed`] envelope, with its own signing
/// domain so a signature for one kind can never be replayed as another.
pub trait Signable: Serialize + DeserializeOwned {
    const DOMAIN: &'static str;
}

/// A value with the signature of whoever vouches for it.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    body: Vec<u8>,
    signer: PublicKey,
    signature: Signature,
    #[serde(skip)]
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature,
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signer == other.signer && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl<T: Signable> Signed<T> {
    /// Signs the canonical bytes of `value` with `key`.
    pub fn sign(key: &SecretKey, value: &T) -> Signed<T> {
        let body = wire::canonical(value);
        let signature = key.sign_raw(T::DOMAIN, &body);
        Signed {
            body,
            signer: key.public(),
            signature,
            kind: PhantomData,
        }
    }

    /// Checks the signature, then decodes the body.
    pub fn verify(&self) -> Result<T, SignError> {
        if self.body.len() > SIGNED_BODY_BYTES_MAX {
            return Err(WireError::TooLarge {
                len: self.body.len(),
                limit: SIGNED_BODY_BYTES_MAX,
            }
            .into());
        }
        verify_raw(&self.signer, T::DOMAIN, &self.body, &self.signature)?;
        Ok(wire::decode::<T, SIGNED_BODY_BYTES_MAX>(&self.body)?)
    }

    /// Who signed it (not yet verified: call [`Signed::verify`]).
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The signed bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        n: u64,
    }

    impl Signable for Note {
        const DOMAIN: &'static str = "kiln test note";
    }

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_and_verify() {
        let note = Note {
            text: "hello".into(),
            n: 7,
        };
        let signed = Signed::sign(&key(1), &note);
        assert_eq!(signed.verify().unwrap(), note);
        assert_eq!(signed.signer(), key(1).public());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let signed = Signed::sign(
            &key(1),
            &Note {
                text: "hello".into(),
                n: 7,
            },
        );
        let bytes = wire::encode(&signed).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let outcome = wire::decode::<Signed<Note>, 4096>(&damaged).map(|s| s.verify());
            assert!(!matches!(outcome, Ok(Ok(_))), "bit {bit} flipped and still verified");
        }
    }

    #[test]
    fn key_text_round_trips_and_rejects_garbage() {
        let public = key(3).public();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        let err = "nope".parse::<PublicKey>().unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
    }

    #[test]
    fn domains_separate_signatures() {
        let sig = key(1).sign_raw("a", b"m");
        assert!(verify_raw(&key(1).public(), "a", b"m", &sig).is_ok());
        assert!(verify_raw(&key(1).public(), "b", b"m", &sig).is_err());
    }
}
