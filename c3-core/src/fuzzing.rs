//! Entry points for the fuzz targets in `fuzz/`, compiled only with
//! `--cfg fuzzing` (which `cargo fuzz` sets). Not part of the API.
//!
//! Each one feeds untrusted input to a parser and checks what must hold for
//! every input, beyond "does not panic".

use crate::ident::{quote_ident, validate_ident};
use crate::key::{MAX_KEY_BYTES_LIMIT, RESERVED_PREFIX, validate_key};
use crate::protocol::{self, Body, MAX_PAYLOAD_BYTES};

/// A notification payload. Whatever parses as `k` lines is packed again
/// (as a sender would) into payloads under the limit that parse back to
/// the same lines.
pub fn notification(payload: &str) {
    let Ok(n) = protocol::parse(payload) else {
        return;
    };
    if let Body::Written(entries) = &n.body {
        let header = protocol::header("fuzz", 1, 'k');
        let lines = entries.iter().map(|(v, k)| format!("{v} {k}"));
        let mut back = Vec::new();
        for p in protocol::pack(&header, lines) {
            assert!(p.len() <= MAX_PAYLOAD_BYTES, "{} bytes", p.len());
            match protocol::parse(&p).expect("a packed message parses").body {
                Body::Written(e) => back.extend(e),
                other => panic!("packed k lines parsed as {other:?}"),
            }
        }
        assert_eq!(&back, entries);
    }
}

/// A key or identifier. A valid key, sent bare, invalidates exactly itself;
/// an identifier that passes validation quotes into one closed identifier
/// (no quote of its own to break out with).
pub fn key(bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return;
    };
    if validate_key(s, MAX_KEY_BYTES_LIMIT).is_ok() && !s.starts_with(RESERVED_PREFIX) {
        let n = protocol::parse(s).expect("a valid key is a bare-key payload");
        assert_eq!(n.body, Body::Invalidate(vec![s.to_owned()]));
    }
    if validate_ident("name", s, 63).is_ok() {
        let q = quote_ident(s);
        assert!(!q[1..q.len() - 1].contains('"'), "a quote inside {q}");
        assert!(
            !s.contains(['\0', ';', ' ', '\'']),
            "{s:?} passed validation"
        );
    }
}
