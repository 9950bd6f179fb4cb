//! The one way Kiln turns values into bytes and back: bincode 2 with the
//! standard configuration, decoded with an explicit size limit, trailing
//! bytes refused. Canonical bytes (for hashing and signing) use the same
//! encoding; every map in the vocabulary is a `BTreeMap`, so equal values
//! always give equal bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message is {len} bytes, over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("message has {0} unexpected trailing bytes")]
    Trailing(usize),
    #[error("value does not encode: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| WireError::Encode(e.to_string()))
}

/// Canonical bytes of one of our own values, for hashing and signing.
///
/// Encoding a value of the vocabulary into a `Vec` cannot fail (every
/// sequence has a known length, no custom serializer refuses): a failure
/// here is a bug in this crate, not bad input, so it is an assertion.
#[allow(clippy::expect_used)]
pub fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value).expect("vocabulary values always encode")
}

/// Decodes bytes of at most `LIMIT` bytes into a value; the limit also caps
/// what the decoder may allocate. Never panics on any input.
pub fn decode<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > LIMIT {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: LIMIT,
        });
    }
    let config = config().with_limit::<LIMIT>();
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| WireError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::Trailing(bytes.len() - used));
    }
    Ok(value)
}
