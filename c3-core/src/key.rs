//! Validation of cache keys and SQL identifiers.
//!
//! Keys travel in NOTIFY payloads, whose hard limit is 8000 bytes, and are stored
//! in a `text` column, which cannot hold NUL. Validating them up front turns both
//! limits into a typed error at the call site instead of a failed transaction.

/// Keys may never be longer than this, whatever the configuration says: a key
/// must always fit in one notification together with the message header.
pub const MAX_KEY_BYTES_LIMIT: usize = 7000;

/// The prefix that marks c3's own notification messages; keys may not start
/// with it, or a bare-key notification could be mistaken for a message.
pub(crate) const RESERVED_PREFIX: &str = "c3|";

/// FNV-1a: cheap, stable across processes and releases, and good enough to
/// spread keys over stripes or to derive names from ids. Not for anything an
/// attacker could exploit (no key, trivially collided).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("key is empty")]
    Empty,
    /// The key is longer than the configured maximum.
    #[error("key is {len} bytes, over the maximum of {max} bytes")]
    TooLong {
        /// Length of the key in bytes.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The key contains a control character (including NUL and newline).
    #[error("key contains control character U+{code:04X} at byte {at}")]
    ControlCharacter {
        /// The code point found.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// The key starts with the reserved `c3|` prefix.
    #[error("key starts with the reserved prefix \"c3|\"")]
    ReservedPrefix,
}

/// Checks a key against the rules in `docs/PROTOCOL.md`.
pub(crate) fn validate_key(key: &str, max: usize) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max {
        return Err(KeyError::TooLong {
            len: key.len(),
            max,
        });
    }
    // Control characters are C0 and DEL (single bytes) and C1 (U+0080 to
    // U+009F, encoded 0xC2 0x80..=0x9F). A branch-free byte scan clears an
    // ordinary key (every read pays this); only a key holding a suspect byte
    // is walked character by character.
    let suspect = key
        .bytes()
        .fold(false, |s, b| s | (b < 0x20) | (b == 0x7F) | (b == 0xC2));
    if suspect && let Some((at, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlCharacter { code: c as u32, at });
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Err(KeyError::ReservedPrefix);
    }
    Ok(())
}

/// How the HTTP layer stores a response's surrogate keys (`Surrogate-Key`,
/// `Cache-Tag`) as c3 tags: `http-tag:<tag>`. Adapters that invalidate an
/// entity also invalidate `http-tag:<its cache key>`, so an HTTP response
/// tagged with an entity's cache key (e.g. `users:42`) is purged by every
/// write to that entity — through c3-sqlx or through its SQL trigger.
pub const HTTP_TAG_PREFIX: &str = "http-tag:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(validate_key("", 10), Err(KeyError::Empty));
        assert!(validate_key("user:42", 10).is_ok());
        assert_eq!(
            validate_key("abcdefghijk", 10),
            Err(KeyError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(
            validate_key("a\0b", 10),
            Err(KeyError::ControlCharacter { code: 0, at: 1 })
        );
        assert_eq!(
            validate_key("a\nb", 10),
            Err(KeyError::ControlCharacter { code: 10, at: 1 })
        );
        assert_eq!(validate_key("c3|x", 10), Err(KeyError::ReservedPrefix));
        assert!(validate_key("'; DROP TABLE x; --", 100).is_ok());
        assert!(validate_key("ключ", 100).is_ok());
    }

    #[test]
    fn the_byte_scan_finds_every_control_character() {
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let key = format!("k{c}k");
            let refused = matches!(
                validate_key(&key, 100),
                Err(KeyError::ControlCharacter { at: 1, .. })
            );
            assert_eq!(refused, c.is_control(), "U+{:04X}", c as u32);
        }
    }
}
