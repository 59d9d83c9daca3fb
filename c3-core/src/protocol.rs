//! The notification payload grammar (see `docs/PROTOCOL.md`).
//!
//! Two kinds of payload arrive on the channel:
//!
//! * a **bare key** (`user:42`), which any client can send with
//!   `SELECT pg_notify('cache_invalidate', 'user:42')`; it always invalidates;
//! * a **c3 message**, `c3|1|<node>|<sent-at-µs>|<op>` followed by
//!   newline-separated lines, which carries the writer's node id (so a writer
//!   can recognise its own writes), the commit's row version (so a late
//!   notification never evicts a newer value) and a timestamp (for lag metrics).
//!
//! The parser never panics; anything it cannot read is a [`ProtocolError`],
//! which the coherency engine answers by purging L1, because a message it
//! cannot read may have been an invalidation.

use crate::key::{MAX_KEY_BYTES_LIMIT, RESERVED_PREFIX, validate_key};

/// PostgreSQL rejects payloads of 8000 bytes or more.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 7999;

/// Protocol version written in every c3 message.
pub(crate) const VERSION: &str = "1";

/// Node ids are at most this long, so a header always leaves room for a key.
pub(crate) const MAX_NODE_ID_BYTES: usize = 64;

/// A parsed notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    /// The sending node, or `None` for bare keys and anonymous senders (`-`).
    pub(crate) node: Option<String>,
    /// Sender's wall clock in microseconds since the Unix epoch, if it said.
    pub(crate) sent_at_us: Option<u64>,
    pub(crate) body: Body,
}

/// What a notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// `k`: these keys were written (set or deleted) by a commit that gave
    /// them these row versions. Entries at an older version are stale.
    Written(Vec<(u64, String)>),
    /// `i` or a bare key: drop these keys from L1 whatever their version.
    Invalidate(Vec<String>),
    /// `c`: drop everything.
    Clear,
    /// `h`: a node's heartbeat to itself; everyone else ignores it.
    Heartbeat,
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The payload was empty or its bare key is not a valid key.
    #[error("bare-key payload is not a valid key: {0}")]
    BadBareKey(String),
    /// A `c3|` message whose header does not parse.
    #[error("malformed c3 message header")]
    BadHeader,
    /// A c3 message from a newer protocol version.
    #[error("unsupported protocol version {0:?}")]
    UnsupportedVersion(String),
    /// An operation this build does not know.
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    /// A body line that does not parse.
    #[error("malformed body line {line}")]
    BadLine {
        /// 1-based line number after the header.
        line: usize,
    },
}

/// Parses one payload.
pub(crate) fn parse(payload: &str) -> Result<Notification, ProtocolError> {
    let Some(rest) = payload.strip_prefix(RESERVED_PREFIX) else {
        validate_key(payload, MAX_KEY_BYTES_LIMIT)
            .map_err(|e| ProtocolError::BadBareKey(e.to_string()))?;
        return Ok(Notification {
            node: None,
            sent_at_us: None,
            body: Body::Invalidate(vec![payload.to_owned()]),
        });
    };
    let mut lines = rest.split('\n');
    let header = lines.next().unwrap_or_default();
    let mut fields = header.split('|');
    let (Some(version), Some(node), Some(ts), Some(op), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProtocolError::BadHeader);
    };
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version.to_owned()));
    }
    let node = match node {
        "-" => None,
        n if valid_node_id(n) => Some(n.to_owned()),
        _ => return Err(ProtocolError::BadHeader),
    };
    let sent_at_us = match ts {
        "" | "-" => None,
        t => Some(t.parse::<u64>().map_err(|_| ProtocolError::BadHeader)?),
    };
    let body = match op {
        "k" => {
            let mut entries = Vec::new();
            for (i, line) in lines.enumerate() {
                let bad = || ProtocolError::BadLine { line: i + 1 };
                let (v, key) = line.split_once(' ').ok_or_else(bad)?;
                let v = v.parse::<u64>().map_err(|_| bad())?;
                validate_key(key, MAX_KEY_BYTES_LIMIT).map_err(|_| bad())?;
                entries.push((v, key.to_owned()));
            }
            if entries.is_empty() {
                return Err(ProtocolError::BadLine { line: 1 });
            }
            Body::Written(entries)
        }
        "i" => {
            let mut keys = Vec::new();
            for (i, line) in lines.enumerate() {
                validate_key(line, MAX_KEY_BYTES_LIMIT)
                    .map_err(|_| ProtocolError::BadLine { line: i + 1 })?;
                keys.push(line.to_owned());
            }
            if keys.is_empty() {
                return Err(ProtocolError::BadLine { line: 1 });
            }
            Body::Invalidate(keys)
        }
        "c" | "h" => {
            // Trailing lines are allowed (a heartbeat may carry a nonce) but ignored.
            if op == "c" {
                Body::Clear
            } else {
                Body::Heartbeat
            }
        }
        other => return Err(ProtocolError::UnknownOp(other.to_owned())),
    };
    Ok(Notification {
        node,
        sent_at_us,
        body,
    })
}

/// Whether `id` may be used as a node id in message headers.
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_BYTES
        && id != "-"
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The header of a message from `node`, without a trailing newline.
pub(crate) fn header(node: &str, sent_at_us: u64, op: char) -> String {
    format!("{RESERVED_PREFIX}{VERSION}|{node}|{sent_at_us}|{op}")
}

/// Splits `lines` into as few payloads as possible, each under the NOTIFY limit.
/// Every line must be short enough to fit after a header on its own, which key
/// validation guarantees.
pub(crate) fn pack(header: &str, lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::from(header);
    let mut has_line = false;
    for line in lines {
        if has_line && cur.len() + 1 + line.len() > MAX_PAYLOAD_BYTES {
            out.push(std::mem::replace(&mut cur, String::from(header)));
        }
        cur.push('\n');
        cur.push_str(&line);
        has_line = true;
    }
    if has_line {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_keys() {
        let n = parse("user:42").unwrap();
        assert_eq!(n.body, Body::Invalidate(vec!["user:42".into()]));
        assert_eq!(n.node, None);
        assert!(parse("").is_err());
        assert!(parse("a\0b").is_err());
        assert!(parse(&"x".repeat(MAX_KEY_BYTES_LIMIT + 1)).is_err());
    }

    #[test]
    fn messages() {
        let n = parse("c3|1|node-a|1700000000000000|k\n5 user:1\n6 user:2 with space").unwrap();
        assert_eq!(n.node.as_deref(), Some("node-a"));
        assert_eq!(n.sent_at_us, Some(1_700_000_000_000_000));
        assert_eq!(
            n.body,
            Body::Written(vec![(5, "user:1".into()), (6, "user:2 with space".into())])
        );
        assert_eq!(parse("c3|1|-||c").unwrap().body, Body::Clear);
        assert_eq!(parse("c3|1|n|1|h\nnonce").unwrap().body, Body::Heartbeat);
        assert_eq!(
            parse("c3|1|-|-|i\na\nb").unwrap().body,
            Body::Invalidate(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn malformed() {
        for bad in [
            "c3|",
            "c3|1",
            "c3|1|n|1",
            "c3|1|n|x|k\n1 a",
            "c3|1|n|1|k",
            "c3|1|n|1|k\nnot-a-version a",
            "c3|1|n|1|k\n1",
            "c3|1|n|1|i",
            "c3|1|n|1|i\n",
            "c3|1|bad node|1|c",
            "c3|1|n|1|c|extra",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            parse("c3|2|n|1|k\n1 a"),
            Err(ProtocolError::UnsupportedVersion("2".into()))
        );
        assert_eq!(
            parse("c3|1|n|1|z"),
            Err(ProtocolError::UnknownOp("z".into()))
        );
    }

    #[test]
    fn pack_respects_limit() {
        let h = header("node", 1, 'k');
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{i} {}", "k".repeat(500)))
            .collect();
        let payloads = pack(&h, lines.clone());
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD_BYTES);
            match parse(p).unwrap().body {
                Body::Written(e) => seen.extend(e.into_iter().map(|(v, k)| format!("{v} {k}"))),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, lines);
        assert!(pack(&h, Vec::<String>::new()).is_empty());
    }
}

/// Hostile and random input: the parser never panics, and what c3 packs
/// always parses back to the same lines, under the payload limit.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Keys c3 accepts: printable text, sometimes long, sometimes with `|`,
    /// spaces, quotes and SQL metacharacters.
    fn key() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("user:".to_owned()),
            Just("'; DROP TABLE cache_data; --".to_owned()),
            Just("|".to_owned()),
            Just(" ".to_owned()),
            Just("é€😀".to_owned()),
            "[a-z0-9]{1,8}".prop_map(|s| s),
            any::<u64>().prop_map(|n| n.to_string()),
        ];
        prop::collection::vec(piece, 1..40)
            .prop_map(|parts| parts.concat())
            .prop_filter("c3 accepts it", |k| {
                validate_key(k, MAX_KEY_BYTES_LIMIT).is_ok()
            })
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(payload in any::<String>()) {
            let _ = parse(&payload);
        }

        #[test]
        fn arbitrary_c3_messages_never_panic(body in any::<String>(), op in "[kich?]") {
            let _ = parse(&format!("{RESERVED_PREFIX}{VERSION}|node-1|123|{op}\n{body}"));
        }

        #[test]
        fn keys_with_control_characters_are_refused(prefix in "[a-z]{0,5}", c in 0u32..0x20, suffix in "[a-z]{0,5}") {
            let k = format!("{prefix}{}{suffix}", char::from_u32(c).unwrap());
            prop_assert!(validate_key(&k, MAX_KEY_BYTES_LIMIT).is_err());
        }
    }

    proptest! {
        // Each case packs and parses hundreds of keys: fewer cases suffice.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn packed_batches_parse_back(keys in prop::collection::vec(key(), 1..300), v in 1u64..u64::MAX / 2) {
            let head = header("node-7", 1_732_280_000_123_456, 'k');
            let lines: Vec<String> = keys.iter().enumerate().map(|(i, k)| format!("{} {k}", v + i as u64)).collect();
            let mut back = Vec::new();
            for p in pack(&head, lines) {
                prop_assert!(p.len() <= MAX_PAYLOAD_BYTES);
                let n = parse(&p).expect("c3's own payload parses");
                prop_assert_eq!(n.node.as_deref(), Some("node-7"));
                match n.body {
                    Body::Written(w) => back.extend(w),
                    other => prop_assert!(false, "unexpected body {:?}", other),
                }
            }
            let expected: Vec<(u64, String)> = keys.iter().enumerate().map(|(i, k)| (v + i as u64, k.clone())).collect();
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn every_valid_key_is_a_bare_invalidation(k in key()) {
            if !k.starts_with(RESERVED_PREFIX) {
                let n = parse(&k).expect("a valid key parses as a bare key");
                prop_assert_eq!(n.body, Body::Invalidate(vec![k]));
            }
        }

    }
}
