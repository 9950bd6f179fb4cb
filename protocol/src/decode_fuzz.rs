//! Property test: every decoder that reads bytes from a peer or a user is
//! fed random bytes and mutations of valid encodings; none may panic, and
//! nothing altered may verify as the original signer's.

use proptest::prelude::*;

use crate::coord::{CoordReply, CoordRequest, COORD_FRAME_BYTES_MAX};
use crate::messages::{decode_frame, decode_frame_max, decode_gossip, encode_frame, encode_gossip};
use crate::messages::{samples, BlobReply, BlobRequest, Gossip, WorkReply, WorkRequest};
use crate::recipe::Recipe;
use crate::sign::Signed;
use crate::wire;
use crate::{Attestation, Hash, PublicKey};

const RECIPE: &str = r#"
name = "t"
version = "1"
[requirements]
os = "linux"
[options.opt]
values = ["a", "b"]
default = "a"
[build]
steps = ["echo ${opt} > out"]
outputs = ["out"]
"#;

fn valid_encodings() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = samples::gossip()
        .iter()
        .map(|(_, g)| encode_gossip(&samples::key(), g).unwrap())
        .collect();
    out.extend(samples::requests().iter().map(|r| encode_frame(r).unwrap()));
    out.extend(samples::replies().iter().map(|r| encode_frame(r).unwrap()));
    let (assign, work_replies) = samples::work();
    out.push(encode_frame(&assign).unwrap());
    out.extend(work_replies.iter().map(|r| encode_frame(r).unwrap()));
    let (coord_requests, coord_replies) = samples::coord();
    out.extend(coord_requests.iter().map(|r| encode_frame(r).unwrap()));
    out.extend(coord_replies.iter().map(|r| encode_frame(r).unwrap()));
    out.push(wire::encode(&Signed::sign(&samples::key(), &samples::attestation())).unwrap());
    let (recipe, _) = Recipe::from_toml(RECIPE).unwrap();
    out.push(recipe.canonical_bytes());
    out
}

/// Runs every decoder on `bytes`; returns the gossip message if one decoded.
fn feed_every_decoder(bytes: &[u8]) -> Option<(PublicKey, Gossip)> {
    let _ = decode_frame::<BlobRequest>(bytes);
    let _ = decode_frame::<BlobReply>(bytes);
    let _ = decode_frame::<WorkRequest>(bytes);
    let _ = decode_frame::<WorkReply>(bytes);
    let _ = decode_frame_max::<CoordRequest, COORD_FRAME_BYTES_MAX>(bytes);
    let _ = decode_frame_max::<CoordReply, COORD_FRAME_BYTES_MAX>(bytes);
    let _ = crate::messages::check_email(&String::from_utf8_lossy(bytes));
    let _ = Recipe::from_canonical_bytes(bytes);
    if let Ok(signed) = wire::decode::<Signed<Attestation>, 4096>(bytes) {
        let _ = signed.verify();
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Recipe::from_toml(text);
        let _ = text.parse::<Hash>();
        let _ = text.parse::<PublicKey>();
    }
    decode_gossip(bytes).ok()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, byte: u8 },
    Overwrite { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match *mutation {
        Mutation::Flip { at, bit } => {
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        Mutation::Truncate { at } => bytes.truncate(at % bytes.len()),
        Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
        Mutation::Overwrite { at, byte } => {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed_every_decoder(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_nor_pass_as_the_signer(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let valid = valid_encodings();
        let original = &valid[which % valid.len()];
        let mut bytes = original.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        // Whatever decodes as signed by the sample key must be a message
        // that key really signed: no mutation forges new content.
        if let Some((signer, message)) = feed_every_decoder(&bytes) {
            if signer == samples::key().public() {
                prop_assert!(samples::gossip().iter().any(|(_, g)| *g == message), "an altered gossip message verified");
            }
        }
    }
}
