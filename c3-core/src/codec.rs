//! How values are stored in L2 (`docs/PROTOCOL.md`, "Values and
//! encodings"): JSON, optionally LZ4-compressed above a size threshold, and
//! the `absent` marker of negative caching. Every row records its encoding,
//! so a reader never guesses: an encoding it cannot read is a typed error.

use std::borrow::Cow;

use serde::Serialize;

use crate::error::{Repr, Result};

/// UTF-8 JSON text.
pub(crate) const JSON: &str = "json";
/// JSON text compressed as one LZ4 block, prefixed by its uncompressed
/// length (4 bytes, little-endian).
#[cfg(feature = "lz4")]
pub(crate) const JSON_LZ4: &str = "json+lz4";
/// The largest uncompressed value a `json+lz4` row may claim (c3's own
/// values are bounded by `max_value_bytes`, far below this).
#[cfg(feature = "lz4")]
const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

/// A cached "not found"; the value is empty.
pub(crate) const ABSENT: &str = "absent";

/// Encodes `value` for L2: JSON, compressed when it is larger than
/// `compress_above` and compression makes it smaller. `max` bounds the JSON
/// text, compressed or not, so the limit does not depend on the data.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    max: usize,
    compress_above: Option<usize>,
) -> Result<(Vec<u8>, &'static str)> {
    let json = serde_json::to_vec(value).map_err(Repr::Encode)?;
    if json.len() > max {
        return Err(Repr::ValueTooLarge {
            size: json.len(),
            max,
        }
        .into());
    }
    #[cfg(feature = "lz4")]
    if compress_above.is_some_and(|t| json.len() > t) {
        let packed = lz4_flex::compress_prepend_size(&json);
        if packed.len() < json.len() {
            return Ok((packed, JSON_LZ4));
        }
    }
    #[cfg(not(feature = "lz4"))]
    let _ = compress_above;
    Ok((json, JSON))
}

/// The JSON text of a stored value, decompressing it if needed.
pub(crate) fn json_text<'a>(key: &str, encoding: &str, value: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    match encoding {
        JSON => Ok(Cow::Borrowed(value)),
        #[cfg(feature = "lz4")]
        JSON_LZ4 => {
            let corrupt = |message: String| Repr::Corrupt {
                key: key.to_owned(),
                message,
            };
            // The length prefix comes from the row: check it before it sizes
            // an allocation.
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
            lz4_flex::decompress_size_prepended(value)
                .map(Cow::Owned)
                .map_err(|e| corrupt(e.to_string()).into())
        }
        _ => Err(Repr::UnknownEncoding {
            key: key.to_owned(),
            encoding: encoding.to_owned(),
        }
        .into()),
    }
}

#[cfg(all(test, feature = "lz4"))]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_compressed_and_read_back() {
        let text: Vec<String> = (0..2000).map(|i| format!("item {i}")).collect();
        let (bytes, enc) = encode(&text, 1 << 20, Some(1024)).unwrap();
        assert_eq!(enc, JSON_LZ4);
        let json = serde_json::to_vec(&text).unwrap();
        assert!(bytes.len() < json.len() / 2);
        assert_eq!(&*json_text("k", enc, &bytes).unwrap(), json.as_slice());
        // Small values stay plain; incompressible ones too.
        assert_eq!(encode(&"short", 1 << 20, Some(1024)).unwrap().1, JSON);
        // Garbage under a compressed encoding never panics and never yields
        // a value; a huge claimed size is refused before allocating.
        for garbage in [
            &[1u8, 2, 3][..],
            &[10, 0, 0, 0, 0xff, 0xff],
            &[1, 2, 3, 4, 5],
        ] {
            if let Ok(j) = json_text("k", JSON_LZ4, garbage) {
                assert!(serde_json::from_slice::<Vec<String>>(&j).is_err());
            }
        }
        let err = json_text("k", JSON_LZ4, &[0xff, 0xff, 0xff, 0x7f, 0]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Decode);
    }
}
