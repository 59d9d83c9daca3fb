//! How values are stored in L2 (`docs/PROTOCOL.md`, "Values and
//! encodings"): JSON, optionally LZ4-compressed above a size threshold, and
//! the `absent` marker of negative caching. Every row records its encoding,
//! so a reader never guesses: an encoding it cannot read is a typed error.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Repr, Result};

/// How values are serialised in L2. Every row records its codec, so nodes
/// with different settings (or builds) never misread each other: a row in a
/// codec this build lacks is a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// UTF-8 JSON (`json`): readable by any language. The default.
    #[default]
    Json,
    /// MessagePack with field names (`msgpack`): compact, self-describing,
    /// readable by MessagePack libraries in most languages. Feature `msgpack`.
    #[cfg(feature = "msgpack")]
    MessagePack,
    /// postcard (`postcard`): the most compact, but not self-describing —
    /// the reader must know the exact type, and internally tagged enums are
    /// not supported. Feature `postcard`.
    #[cfg(feature = "postcard")]
    Postcard,
}

impl Codec {
    /// The encoding name in the row, plain and LZ4-compressed.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Codec::Json => (JSON, "json+lz4"),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => ("msgpack", "msgpack+lz4"),
            #[cfg(feature = "postcard")]
            Codec::Postcard => ("postcard", "postcard+lz4"),
        }
    }
}

/// Which codec writes which keys: the longest matching prefix wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct CodecPolicy {
    pub(crate) default: Codec,
    pub(crate) prefixes: Vec<(String, Codec)>,
}

impl CodecPolicy {
    pub(crate) fn for_key(&self, key: &str) -> Codec {
        self.prefixes
            .iter()
            .filter(|(p, _)| key.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default, |(_, c)| *c)
    }
}

/// UTF-8 JSON text.
pub(crate) const JSON: &str = "json";

/// The largest uncompressed value a compressed row may claim (c3's own
/// values are bounded by `max_value_bytes`, far below this).
#[cfg(feature = "lz4")]
const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

/// A cached "not found"; the value is empty.
pub(crate) const ABSENT: &str = "absent";

/// Encodes `value` for L2 with `codec`, compressed when the serialised form
/// is larger than `compress_above` and compression makes it smaller. `max`
/// bounds the serialised form, compressed or not, so the limit does not
/// depend on the data.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    codec: Codec,
    max: usize,
    compress_above: Option<usize>,
) -> Result<(Vec<u8>, &'static str)> {
    let raw = match codec {
        Codec::Json => serde_json::to_vec(value).map_err(Repr::Encode)?,
        #[cfg(feature = "msgpack")]
        Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| Repr::EncodeWith {
            codec: "msgpack",
            message: e.to_string(),
        })?,
        #[cfg(feature = "postcard")]
        Codec::Postcard => postcard::to_allocvec(value).map_err(|e| Repr::EncodeWith {
            codec: "postcard",
            message: e.to_string(),
        })?,
    };
    if raw.len() > max {
        return Err(Repr::ValueTooLarge {
            size: raw.len(),
            max,
        }
        .into());
    }
    let (plain, _compressed) = codec.names();
    #[cfg(feature = "lz4")]
    if compress_above.is_some_and(|t| raw.len() > t) {
        let packed = lz4_flex::compress_prepend_size(&raw);
        if packed.len() < raw.len() {
            return Ok((packed, _compressed));
        }
    }
    #[cfg(not(feature = "lz4"))]
    let _ = compress_above;
    Ok((raw, plain))
}

/// Decodes a stored value whatever codec and compression wrote it.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, encoding: &str, value: &[u8]) -> Result<T> {
    let unknown = || Repr::UnknownEncoding {
        key: key.to_owned(),
        encoding: encoding.to_owned(),
    };
    let (codec, compression) = match encoding.split_once('+') {
        Some((c, z)) => (c, Some(z)),
        None => (encoding, None),
    };
    let bytes: Cow<'_, [u8]> = match compression {
        None => Cow::Borrowed(value),
        #[cfg(feature = "lz4")]
        Some("lz4") => Cow::Owned(decompress_lz4(key, value)?),
        Some(_) => return Err(unknown().into()),
    };
    let with = |codec: &'static str, message: String| Repr::DecodeWith {
        key: key.to_owned(),
        codec,
        message,
    };
    match codec {
        JSON => serde_json::from_slice(&bytes).map_err(|source| {
            Repr::Decode {
                key: key.to_owned(),
                source,
            }
            .into()
        }),
        #[cfg(feature = "msgpack")]
        "msgpack" => {
            rmp_serde::from_slice(&bytes).map_err(|e| with("msgpack", e.to_string()).into())
        }
        #[cfg(feature = "postcard")]
        "postcard" => {
            postcard::from_bytes(&bytes).map_err(|e| with("postcard", e.to_string()).into())
        }
        _ => {
            let _ = with;
            Err(unknown().into())
        }
    }
}

#[cfg(feature = "lz4")]
fn decompress_lz4(key: &str, value: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |message: String| Repr::Corrupt {
        key: key.to_owned(),
        message,
    };
    // The length prefix comes from the row: check it before it sizes an
    // allocation.
    let claimed = value
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("shorter than its length prefix".into()))?;
    if claimed > MAX_DECOMPRESSED_BYTES {
        return Err(corrupt(format!(
            "claims {claimed} bytes uncompressed, over {MAX_DECOMPRESSED_BYTES}"
        ))
        .into());
    }
    lz4_flex::decompress_size_prepended(value).map_err(|e| corrupt(e.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Vec<String> {
        (0..2000).map(|i| format!("item {i}")).collect()
    }

    #[allow(unused_mut)] // without the optional codecs there is nothing to push
    fn codecs() -> Vec<Codec> {
        let mut v = vec![Codec::Json];
        #[cfg(feature = "msgpack")]
        v.push(Codec::MessagePack);
        #[cfg(feature = "postcard")]
        v.push(Codec::Postcard);
        v
    }

    #[test]
    fn every_codec_round_trips_plain_and_compressed() {
        for codec in codecs() {
            for compress in [None, Some(1024)] {
                let (bytes, enc) = encode(&doc(), codec, 1 << 20, compress).unwrap();
                let back: Vec<String> = decode("k", enc, &bytes).unwrap();
                assert_eq!(back, doc(), "{codec:?} {enc}");
                #[cfg(feature = "lz4")]
                assert_eq!(enc.ends_with("+lz4"), compress.is_some(), "{enc}");
            }
        }
    }

    #[test]
    fn unknown_and_corrupt_rows_are_typed_errors() {
        for enc in ["yaml", "json+zstd", "json+"] {
            let err = decode::<String>("k", enc, b"x").unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Decode, "{enc}");
        }
        // Garbage under a compressed encoding never panics and never yields
        // a value; a huge claimed size is refused before allocating.
        #[cfg(feature = "lz4")]
        for garbage in [
            &[1u8, 2, 3][..],
            &[10, 0, 0, 0, 0xff, 0xff],
            &[1, 2, 3, 4, 5],
            &[0xff, 0xff, 0xff, 0x7f, 0],
        ] {
            assert!(decode::<Vec<String>>("k", "json+lz4", garbage).is_err());
        }
        // Self-describing codecs catch a reader expecting another type;
        // postcard cannot (documented on `Codec::Postcard`).
        for codec in codecs() {
            #[cfg(feature = "postcard")]
            if codec == Codec::Postcard {
                continue;
            }
            let (bytes, enc) = encode(&doc(), codec, 1 << 20, None).unwrap();
            assert!(
                decode::<u64>("k", enc, &bytes).is_err(),
                "a type mismatch under {enc}"
            );
        }
    }

    #[test]
    #[cfg(all(feature = "msgpack", feature = "postcard"))]
    fn the_longest_prefix_picks_the_codec() {
        // Three different codecs, so each answer says which rule won.
        let p = CodecPolicy {
            default: Codec::Json,
            prefixes: vec![
                ("user:".into(), Codec::MessagePack),
                ("user:blob:".into(), Codec::Postcard),
            ],
        };
        assert_eq!(p.for_key("other"), Codec::Json);
        assert_eq!(p.for_key("user:1"), Codec::MessagePack);
        assert_eq!(p.for_key("user:blob:1"), Codec::Postcard);
        // The order of the rules does not matter.
        let p = CodecPolicy {
            default: Codec::Json,
            prefixes: vec![
                ("user:blob:".into(), Codec::Postcard),
                ("user:".into(), Codec::MessagePack),
            ],
        };
        assert_eq!(p.for_key("user:blob:1"), Codec::Postcard);
    }
}
