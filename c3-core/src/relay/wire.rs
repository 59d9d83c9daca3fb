//! The relay transport on the wire (PROTOCOL.md §6): what a writer emits
//! into the WAL, what the relay publishes to NATS, and how a node checks
//! that it heard every message. One home for these names, shared by the
//! relay and the nodes.

/// Every c3 message in the WAL is a transactional logical message whose
/// prefix is this, followed by the channel it was sent on:
/// `pg_logical_emit_message(true, 'c3:' || channel, payload)`.
pub const MESSAGE_PREFIX: &str = "c3:";

/// Separates the c3 payloads one NATS message carries (commits published
/// together). PostgreSQL text cannot contain NUL, so no payload does.
pub const SEPARATOR: u8 = 0;

/// The largest payload the relay publishes as it is. c3 and foreign writers
/// announce under 8000 bytes (the NOTIFY limit, which the announce function
/// enforces in relay mode too); this bound only catches a payload emitted
/// around it, which NATS might refuse (its `max_payload` is 1 MiB by
/// default) — a refused publish would restart the relay on the same commit
/// again and again.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Why a committed payload cannot be published as it is, if it cannot: it
/// holds a NUL (the separator: a node would split it in two and misread
/// both halves — the `bytea` form of `pg_logical_emit_message` can emit
/// one), is not UTF-8 (payloads are text), or is over `limit` (at most
/// [`MAX_PAYLOAD`], less when the NATS server takes less). The relay
/// publishes [`drop_all`] in its place: nodes cannot know what it
/// invalidated.
#[must_use]
pub fn undeliverable(payload: &[u8], limit: usize) -> Option<&'static str> {
    if payload.len() > limit {
        Some("larger than the relay publishes")
    } else if payload.contains(&SEPARATOR) {
        Some("holds a NUL byte")
    } else if std::str::from_utf8(payload).is_err() {
        Some("not UTF-8")
    } else {
        None
    }
}

/// The payload that makes every node drop all of its L1 (§3.3 op `c`),
/// from `node` at `unix_micros`.
#[must_use]
pub fn drop_all(node: &str, unix_micros: u64) -> String {
    format!("c3|1|{node}|{unix_micros}|c")
}

/// The c3 payloads of one relayed NATS message, in order.
pub fn payloads(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message.split(|b| *b == SEPARATOR)
}

/// The header carrying the relay's epoch: an opaque token, new each time a
/// relay (re)starts reading the slot. Compare for equality only.
pub const HEADER_EPOCH: &str = "C3-Epoch";
/// The header carrying the message's sequence number: 1, 2, 3… per subject
/// within an epoch, without gaps.
pub const HEADER_SEQ: &str = "C3-Seq";
/// The header carrying the end LSN of the commit the message belongs to
/// (`X/Y`, as PostgreSQL prints it): for operators and duplicate tracing.
pub const HEADER_LSN: &str = "C3-Lsn";

/// The header of a heartbeat's echo carrying the sequence number of the
/// last message published on the channel's subject before it, in the same
/// epoch (0: none): the node has heard everything committed before its
/// heartbeat once it has seen that message.
pub const HEADER_UPTO: &str = "C3-Upto";

/// The subject a node's heartbeats come back on: `<channel subject>.h.<token>`,
/// the token being the 64-bit FNV-1a hash of the node id in 16 lowercase hex
/// digits (node ids may hold characters a subject cannot). Only that node
/// subscribes: heartbeats do not fan out to the fleet.
#[must_use]
pub fn heartbeat_subject(channel_subject: &str, node_id: &str) -> String {
    format!(
        "{channel_subject}.h.{:016x}",
        crate::key::fnv1a(node_id.as_bytes())
    )
}

/// The node id of a heartbeat payload (`c3|1|<node>|<time>|h`, then a line
/// with the nonce), or `None` for any other payload.
#[must_use]
pub fn heartbeat_node(payload: &[u8]) -> Option<&str> {
    let head = payload.split(|b| *b == b'\n').next()?;
    let head = std::str::from_utf8(head).ok()?;
    let mut fields = head.split('|');
    let (c3, _version, node, _time, kind) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    (c3 == "c3" && kind == "h" && fields.next().is_none() && !node.is_empty()).then_some(node)
}

/// What a node does with the echo of its own heartbeat ([`Continuity::echo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// Everything committed before the heartbeat has been heard.
    Heard,
    /// The echo is of an epoch this node did not follow: a relay started
    /// a new one, and what was committed meanwhile may never be published.
    /// Drop L1, then count the echo as heard.
    NewEpoch,
    /// Messages published before it have not arrived yet: hold the echo
    /// until [`Continuity::covers`] says they have.
    Wait,
}

/// The subject a channel's messages are published on: `<prefix>.<channel>`.
#[must_use]
pub fn subject(subject_prefix: &str, channel: &str) -> String {
    format!("{subject_prefix}.{channel}")
}

/// The channel a logical message was emitted on, if it is a c3 message
/// for a channel a node could subscribe to (`[a-z_][a-z0-9_]*`, at most 40
/// bytes, as PROTOCOL.md §1 names channels).
#[must_use]
pub fn channel_of(message_prefix: &str) -> Option<&str> {
    let channel = message_prefix.strip_prefix(MESSAGE_PREFIX)?;
    let mut bytes = channel.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    (first_ok && rest_ok && channel.len() <= 40).then_some(channel)
}

/// What one received message means for the continuity of a node's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The next message of the epoch this node follows.
    InOrder,
    /// The first message this node saw since it started following.
    First,
    /// A message of another epoch: a relay (re)started reading the slot —
    /// what was committed meanwhile may never be published.
    NewEpoch,
    /// Messages of this epoch were lost (or reordered) between the relay
    /// and this node.
    Gap {
        /// The sequence number this node expected.
        expected: u64,
        /// The one it received.
        got: u64,
    },
    /// The message carries no epoch or sequence this node can read.
    Unreadable,
}

/// A node's position in the relay's stream for one subject: the epoch it
/// follows and the sequence number it expects next.
#[derive(Debug, Default)]
pub struct Continuity {
    epoch: Option<String>,
    next: u64,
}

impl Continuity {
    /// Forget the position: the next message is taken as the first
    /// (after a reconnect, when L1 was purged anyway).
    pub fn reset(&mut self) {
        self.epoch = None;
        self.next = 0;
    }

    /// Classifies a received message by its headers and moves the position
    /// past it. Anything but [`Step::InOrder`] and [`Step::First`] means
    /// messages may have been missed.
    pub fn observe(&mut self, epoch: Option<&str>, seq: Option<&str>) -> Step {
        let (Some(epoch), Some(seq)) = (epoch, seq.and_then(|s| s.parse::<u64>().ok())) else {
            // The position stays: forgetting it would take the next message
            // as a first one, and a message lost between the two would go
            // unseen. The next readable one is judged against it (a gap,
            // if the unreadable message took a number).
            return Step::Unreadable;
        };
        let step = match &self.epoch {
            None => Step::First,
            Some(e) if e != epoch => Step::NewEpoch,
            Some(_) if seq == self.next => Step::InOrder,
            Some(_) => Step::Gap {
                expected: self.next,
                got: seq,
            },
        };
        if self.epoch.as_deref() != Some(epoch) {
            self.epoch = Some(epoch.to_owned());
        }
        self.next = seq.saturating_add(1);
        step
    }

    /// The epoch followed, if any.
    #[must_use]
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Classifies the echo of this node's heartbeat, published in `epoch`
    /// after the channel's message `upto`. A node that follows no epoch yet
    /// (nothing heard since it subscribed or last lost track) or another
    /// one takes the position from the echo: the next channel message
    /// must be `upto + 1`, anything else is a gap.
    pub fn echo(&mut self, epoch: &str, upto: u64) -> Echo {
        match self.epoch.as_deref() {
            Some(e) if e == epoch => {
                if self.covers(epoch, upto) {
                    Echo::Heard
                } else {
                    Echo::Wait
                }
            }
            followed => {
                let new_epoch = followed.is_some();
                self.epoch = Some(epoch.to_owned());
                self.next = upto.saturating_add(1);
                if new_epoch {
                    Echo::NewEpoch
                } else {
                    Echo::Heard
                }
            }
        }
    }

    /// Whether the channel's messages up to `upto` of `epoch` have been
    /// heard.
    #[must_use]
    pub fn covers(&self, epoch: &str, upto: u64) -> bool {
        self.epoch.as_deref() == Some(epoch) && self.next > upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuity_sees_gaps_and_new_epochs() {
        let mut c = Continuity::default();
        assert_eq!(c.observe(Some("e1"), Some("5")), Step::First);
        assert_eq!(c.observe(Some("e1"), Some("6")), Step::InOrder);
        assert_eq!(
            c.observe(Some("e1"), Some("8")),
            Step::Gap {
                expected: 7,
                got: 8
            }
        );
        assert_eq!(c.observe(Some("e1"), Some("9")), Step::InOrder);
        // A repeated or older number is not the next one either.
        assert_eq!(
            c.observe(Some("e1"), Some("9")),
            Step::Gap {
                expected: 10,
                got: 9
            }
        );
        assert_eq!(c.observe(Some("e2"), Some("1")), Step::NewEpoch);
        assert_eq!(c.observe(Some("e2"), Some("2")), Step::InOrder);
        assert_eq!(c.observe(None, Some("3")), Step::Unreadable);
        assert_eq!(c.observe(Some("e2"), Some("x")), Step::Unreadable);
        // The two unreadable messages took 3 and 4; 5 is lost: 6 is a gap
        // (taking it as a first message would have hidden 5's loss).
        assert_eq!(
            c.observe(Some("e2"), Some("6")),
            Step::Gap {
                expected: 3,
                got: 6
            }
        );
        assert_eq!(c.observe(Some("e2"), Some("7")), Step::InOrder);
        // Nor does an echo after an unreadable message skip past it.
        assert_eq!(c.observe(None, None), Step::Unreadable);
        assert_eq!(c.echo("e2", 8), Echo::Wait);
    }

    #[test]
    fn payloads_that_cannot_travel_as_they_are_are_named() {
        assert_eq!(undeliverable(b"c3|1|n|1|k\n1 a", MAX_PAYLOAD), None);
        assert_eq!(undeliverable(&vec![b'a'; MAX_PAYLOAD], MAX_PAYLOAD), None);
        assert!(undeliverable(&vec![b'a'; MAX_PAYLOAD + 1], MAX_PAYLOAD).is_some());
        assert!(undeliverable(&[b'a'; 101], 100).is_some());
        assert!(undeliverable(b"c3|1|n|1|k\n1 a\0b", MAX_PAYLOAD).is_some());
        assert!(undeliverable(b"c3|1|n|1|k\n1 \xff", MAX_PAYLOAD).is_some());
        // What replaces them parses as "drop all of L1".
        assert_eq!(drop_all("relay", 7), "c3|1|relay|7|c");
        assert!(heartbeat_node(drop_all("relay", 7).as_bytes()).is_none());
    }

    #[test]
    fn an_echo_is_heard_once_the_messages_before_it_are() {
        let mut c = Continuity::default();
        // Nothing followed yet: the echo sets the position.
        assert_eq!(c.echo("e1", 4), Echo::Heard);
        assert_eq!(c.observe(Some("e1"), Some("5")), Step::InOrder);
        // Message 7 was published before the next echo but has not arrived.
        assert_eq!(c.echo("e1", 7), Echo::Wait);
        assert!(!c.covers("e1", 7));
        assert_eq!(c.observe(Some("e1"), Some("6")), Step::InOrder);
        assert_eq!(c.observe(Some("e1"), Some("7")), Step::InOrder);
        assert!(c.covers("e1", 7));
        assert_eq!(c.echo("e1", 7), Echo::Heard);
        assert_eq!(c.echo("e1", 0), Echo::Heard);
        // Another epoch: drop L1; its next message must follow the echo's.
        assert_eq!(c.echo("e2", 2), Echo::NewEpoch);
        assert!(!c.covers("e1", 7));
        assert_eq!(
            c.observe(Some("e2"), Some("2")),
            Step::Gap {
                expected: 3,
                got: 2
            }
        );
    }

    #[test]
    fn heartbeats_are_recognised_and_get_a_subject_per_node() {
        assert_eq!(heartbeat_node(b"c3|1|node-a|123|h\nabc-1"), Some("node-a"));
        assert_eq!(heartbeat_node(b"c3|1|node-a|123|k\n1 key"), None);
        assert_eq!(heartbeat_node(b"c3|1||123|h\nabc-1"), None);
        assert_eq!(heartbeat_node(b"user:1"), None);
        let a = heartbeat_subject("c3.cache_invalidate", "node a.*");
        assert!(a.starts_with("c3.cache_invalidate.h."), "{a}");
        assert_eq!(a.len(), "c3.cache_invalidate.h.".len() + 16);
        assert_ne!(a, heartbeat_subject("c3.cache_invalidate", "node b"));
        // PROTOCOL.md §6.4's example, for implementations elsewhere.
        assert_eq!(
            heartbeat_subject("c3.cache_invalidate", "node-a"),
            "c3.cache_invalidate.h.e6971cc22078cb53"
        );
    }

    #[test]
    fn a_message_carries_payloads_separated_by_nul() {
        let got: Vec<&[u8]> = payloads(b"c3|1|-|1|k\n1 a\0c3|1|-|2|k\n2 b").collect();
        assert_eq!(got, [&b"c3|1|-|1|k\n1 a"[..], &b"c3|1|-|2|k\n2 b"[..]]);
        assert_eq!(payloads(b"user:1").count(), 1);
    }

    #[test]
    fn only_c3_prefixes_with_valid_channels_are_relayed() {
        assert_eq!(channel_of("c3:cache_invalidate"), Some("cache_invalidate"));
        assert_eq!(channel_of("c3:"), None);
        assert_eq!(channel_of("c3:Bad"), None);
        assert_eq!(channel_of("c3:a.b"), None);
        assert_eq!(channel_of("c3:a b"), None);
        assert_eq!(channel_of("other:x"), None);
        assert_eq!(channel_of(&format!("c3:{}", "a".repeat(41))), None);
    }
}
