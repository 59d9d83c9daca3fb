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
    /// `v`: one key was written at this version, and here is its new value
    /// (value push): receivers drop older copies and may keep this one.
    Pushed(Pushed),
}

/// The content of a `v` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) version: u64,
    /// Wall-clock µs the value is fresh until (`u64::MAX`: no expiry).
    pub(crate) fresh_until_us: u64,
    /// Wall-clock µs it may be served as fail-safe stale until.
    pub(crate) stale_until_us: u64,
    pub(crate) key: String,
    /// The value as JSON text (the `json` encoding of an L2 row).
    pub(crate) json: String,
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
        t => Some(digits(t).ok_or(ProtocolError::BadHeader)?),
    };
    let body = match op {
        "k" => Body::Written(body_lines(lines, |line| {
            let (v, key) = line.split_once(' ')?;
            validate_key(key, MAX_KEY_BYTES_LIMIT).ok()?;
            Some((digits(v)?, key.to_owned()))
        })?),
        "i" => Body::Invalidate(body_lines(lines, |line| {
            validate_key(line, MAX_KEY_BYTES_LIMIT).ok()?;
            Some(line.to_owned())
        })?),
        "v" => {
            // Two lines after the header: everything after the second one is
            // the value, whatever it contains.
            let mut parts = rest.splitn(3, '\n').skip(1);
            let (Some(line), Some(json)) = (parts.next(), parts.next()) else {
                return Err(ProtocolError::BadLine { line: 1 });
            };
            Body::Pushed(parse_pushed(line, json).ok_or(ProtocolError::BadLine { line: 1 })?)
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

/// The lines after the header, each read by `read`; at least one, and the
/// first that cannot be read is the error.
fn body_lines<'a, T>(
    lines: impl Iterator<Item = &'a str>,
    read: impl Fn(&'a str) -> Option<T>,
) -> Result<Vec<T>, ProtocolError> {
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        out.push(read(line).ok_or(ProtocolError::BadLine { line: i + 1 })?);
    }
    if out.is_empty() {
        return Err(ProtocolError::BadLine { line: 1 });
    }
    Ok(out)
}

/// `<version> <fresh-until-µs|-> <stale-until-µs|-> <key>` and the JSON.
fn parse_pushed(line: &str, json: &str) -> Option<Pushed> {
    let mut f = line.splitn(4, ' ');
    let (version, fresh, stale, key) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let until = |t: &str| match t {
        "-" => Some(u64::MAX),
        t => digits(t),
    };
    validate_key(key, MAX_KEY_BYTES_LIMIT).ok()?;
    let fresh_until_us = until(fresh)?;
    let stale_until_us = until(stale)?;
    if json.is_empty() || stale_until_us < fresh_until_us {
        return None;
    }
    Some(Pushed {
        version: version.parse().ok()?,
        fresh_until_us,
        stale_until_us,
        key: key.to_owned(),
        json: json.to_owned(),
    })
}

/// The notifications for a committed write: a `v` message for each item
/// that asked to be pushed and fits under the NOTIFY limit, `k` lines
/// (packed) for the rest. `header` is the `k` header of the write.
pub(crate) fn write_payloads(
    header: &str,
    items: &[crate::entry::WriteItem],
    versions: &[u64],
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut out = Vec::new();
    for (item, version) in items.iter().zip(versions) {
        match push_message(header, item, *version) {
            Some(m) => out.push(m),
            None => lines.push(format!("{version} {}", item.key)),
        }
    }
    out.extend(pack(header, lines));
    out
}

fn push_message(header: &str, item: &crate::entry::WriteItem, version: u64) -> Option<String> {
    if !item.push || item.encoding != crate::codec::JSON {
        return None;
    }
    // JSON is UTF-8 and serde_json never writes a NUL byte unescaped, but a
    // value from elsewhere is checked rather than trusted.
    let json = std::str::from_utf8(&item.value).ok()?;
    if json.contains('\0') {
        return None;
    }
    let micros = |t: Option<std::time::SystemTime>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| crate::clock::unix_micros(t).to_string(),
        )
    };
    let fresh = micros(item.fresh_until);
    let stale = match item.stale_until {
        Some(_) => micros(item.stale_until),
        None => fresh.clone(),
    };
    let op_at = header.len().checked_sub(1)?;
    let m = format!(
        "{}v\n{version} {fresh} {stale} {}\n{json}",
        &header[..op_at],
        item.key
    );
    (m.len() <= MAX_PAYLOAD_BYTES).then_some(m)
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

/// A number as §3 writes it: ASCII digits only (`u64::from_str` would also
/// take a leading `+`, which other implementations need not accept).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, json: &str, push: bool) -> crate::entry::WriteItem {
        crate::entry::WriteItem {
            key: key.into(),
            value: json.as_bytes().to_vec(),
            encoding: crate::codec::JSON,
            fresh_until: Some(std::time::UNIX_EPOCH + std::time::Duration::from_micros(2_000)),
            stale_until: None,
            tags: Vec::new(),
            push,
        }
    }

    #[test]
    fn pushed_values_round_trip_and_fall_back_to_invalidation() {
        let h = header("n1", 5, 'k');
        let items = [
            item("user:1", r#"{"name":"a\nb"}"#, true),
            item("user:2", "2", false),
            item("user:3", &format!("\"{}\"", "x".repeat(8000)), true),
        ];
        let p = write_payloads(&h, &items, &[7, 8, 9]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            "c3|1|n1|5|v\n7 2000 2000 user:1\n{\"name\":\"a\\nb\"}"
        );
        let n = parse(&p[0]).unwrap();
        assert_eq!(n.node.as_deref(), Some("n1"));
        assert_eq!(
            n.body,
            Body::Pushed(Pushed {
                version: 7,
                fresh_until_us: 2000,
                stale_until_us: 2000,
                key: "user:1".into(),
                json: r#"{"name":"a\nb"}"#.into(),
            })
        );
        // Too big to push, or not asked to: plain `k` lines.
        assert_eq!(
            parse(&p[1]).unwrap().body,
            Body::Written(vec![(8, "user:2".into()), (9, "user:3".into())])
        );
        // A value may contain newlines: everything after the key line is it.
        let n = parse("c3|1|-|-|v\n3 - - k\n[1,\n2]").unwrap();
        let Body::Pushed(p) = n.body else { panic!() };
        assert_eq!((p.json.as_str(), p.fresh_until_us), ("[1,\n2]", u64::MAX));
    }

    #[test]
    fn malformed_pushes_are_refused() {
        for bad in [
            "c3|1|-|-|v",
            "c3|1|-|-|v\n3 - - k",
            "c3|1|-|-|v\n3 - - k\n",
            "c3|1|-|-|v\nx - - k\n1",
            "c3|1|-|-|v\n3 9 8 k\n1",
            "c3|1|-|-|v\n3 - -\n1",
            "c3|1|-|-|v\n3 - - a\0b\n1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

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
            // Numbers are digits only.
            "c3|1|n|+1|c",
            "c3|1|n|1|k\n+5 a",
            "c3|1|n|1|k\n 5 a",
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
