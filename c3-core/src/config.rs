//! Configuration from the environment: [`C3Builder::from_env`] and the
//! parsing of its `C3_*` variables.
//!
//! | variable | meaning | example |
//! |---|---|---|
//! | `C3_DATABASE_URL` (else `DATABASE_URL`) | PostgreSQL for L2 and LISTEN; libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` (or `PGSSLMODE`…) decide TLS | `postgres://app@db/app?sslmode=verify-full` |
//! | `C3_START_DEGRADED` | `true`: start before PostgreSQL answers (L1 off, L2 errors) and become coherent when it does | `true` |
//! | `C3_WARM_RECONNECT` | `true`: after a lost LISTEN connection, drop only the keys the L2 change log shows changed (every invalidator must go through the table) | `true` |
//! | `C3_DURABILITY` | `logged` (default) or `unlogged`: `UNLOGGED` L2 tables, fast writes, emptied by a crash | `unlogged` |
//! | `C3_MIGRATE` | `false`: never run DDL; check the schema at start-up instead | `false` |
//! | `C3_PREPARED_STATEMENTS` | `false` behind a transaction pooler without prepared-statement support (PgBouncer < 1.21) | `false` |
//! | `C3_LISTEN_DATABASE_URL` | a different URL for the LISTEN connection only (the pool may go through a transaction pooler; LISTEN cannot) | `postgres://app@db-direct/app` |
//! | `C3_L1_MAX_BYTES` | L1 capacity; `K`/`M`/`G` suffixes (binary) | `256M` |
//! | `C3_L1_POLICY` | `tinylfu` or `lru` | `lru` |
//! | `C3_L1_TTL` | longest life of an L1 copy, or `none` | `30s` |
//! | `C3_L1_TIME_TO_IDLE` | drop L1 copies unread this long, or `none` | `10m` |
//! | `C3_DEFAULT_TTL` | TTL of writes that give none, or `none` | `5m` |
//! | `C3_SCHEMA` / `C3_TABLE` / `C3_CHANNEL` | names | `cache` |
//! | `C3_MAX_KEY_BYTES` / `C3_MAX_VALUE_BYTES` | input limits | `2048` |
//! | `C3_OP_TIMEOUT` / `C3_CONNECT_TIMEOUT` | bounds on L2 calls / connecting | `2s` |
//! | `C3_HEARTBEAT_INTERVAL` / `C3_HEARTBEAT_TIMEOUT` | half-open detection | `1s` |
//! | `C3_POOL_SIZE` | L2 connections | `8` |
//! | `C3_NODE_ID` | this node's id in notifications | `api-7` |
//! | `C3_TRANSPORT` | `listen` (default) or `relay`: invalidations through NATS from logical decoding (feature `relay`; needs `C3_NATS_URL`) | `relay` |
//! | `C3_NATS_URL` / `C3_NATS_CREDS` / `C3_NATS_NKEY` / `C3_NATS_CA` | relay mode: the NATS server, a `.creds` file, an nkey seed, a CA file (TLS) | `nats://nats:4222` |
//! | `C3_EMBEDDED_RELAY` | relay mode: `true` runs a relay inside the node (one leader per slot); `C3_RELAY_SLOT` names the slot | `true` |
//! | `C3_PUSH_VALUES` | comma-separated key prefixes whose values are pushed to peers | `flag:,config:` |
//!
//! Durations are a number and a unit: `ms`, `s`, `m`, `h`, `d`.

use std::time::Duration;

use crate::L1Eviction;
use crate::builder::C3Builder;
use crate::error::Error;

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

/// A duration, or `none` for "no limit".
fn parse_optional_duration(text: &str) -> Option<Option<Duration>> {
    if text.trim().eq_ignore_ascii_case("none") {
        Some(None)
    } else {
        parse_duration(text).map(Some)
    }
}

/// Bytes with an optional binary `K`/`M`/`G` suffix (`KiB`, `MB` … also read).
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// A builder setter taking `T`, to apply a table of variables of one type.
type Setter<T> = fn(C3Builder, T) -> C3Builder;

fn invalid(var: &str, value: &str, expected: &str) -> Error {
    Error::config(format!("{var}={value:?} is invalid: expected {expected}"))
}

impl C3Builder {
    /// Reads the documented `C3_*` environment variables (the table at the
    /// top of this module's source and in the README's "Configuration");
    /// unset variables leave the builder's value alone.
    /// An invalid value makes [`build`](Self::build) fail with an error
    /// naming the variable.
    pub fn from_env(self) -> Self {
        self.from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables (a
    /// config map, or a test).
    pub fn from_vars(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        match apply(&mut self, &lookup) {
            Ok(b) => b,
            Err(e) => {
                self.fail(e);
                self
            }
        }
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
fn boolean(name: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, v, "true or false")),
    }
}

/// Applies every variable that is set, stopping at the first invalid one.
fn apply(b: &mut C3Builder, get: &impl Fn(&str) -> Option<String>) -> Result<C3Builder, Error> {
    let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let out = std::mem::take(b);
    let out = postgres_vars(out, &var)?;
    let out = l1_vars(out, &var)?;
    let out = timing_vars(out, &var)?;
    let out = transport_vars(out, &var)?;
    limit_and_name_vars(out, &var)
}

/// How invalidations reach the node: LISTEN, or NATS through the relay.
fn transport_vars(out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    let Some(v) = var("C3_TRANSPORT") else {
        return Ok(out);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "listen" => Ok(out),
        "relay" => relay_vars(out, var),
        _ => Err(invalid("C3_TRANSPORT", &v, "`listen` or `relay`")),
    }
}

#[cfg(feature = "relay")]
fn relay_vars(mut out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    let nats = crate::relay::Nats::from_lookup(var)
        .ok_or_else(|| invalid("C3_TRANSPORT", "relay", "`relay` with C3_NATS_URL set"))?;
    out = out.relay(nats);
    if let Some(v) = var("C3_EMBEDDED_RELAY")
        && boolean("C3_EMBEDDED_RELAY", &v)?
    {
        out = out.embedded_relay(crate::relay::RelayBuilder::from_lookup(var));
    }
    Ok(out)
}

#[cfg(not(feature = "relay"))]
fn relay_vars(_: C3Builder, _: &Var<'_>) -> Result<C3Builder, Error> {
    Err(invalid(
        "C3_TRANSPORT",
        "relay",
        "`listen`: this build has no relay transport (enable c3's `relay` feature)",
    ))
}

/// A variable's value, if set and not blank.
type Var<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// Where L2 is and how c3 uses it.
fn postgres_vars(mut out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    if let Some(url) = var("C3_DATABASE_URL").or_else(|| var("DATABASE_URL")) {
        out = out.postgres(&url);
    }
    if let Some(url) = var("C3_LISTEN_DATABASE_URL") {
        out = out.listen_postgres(&url);
    }
    let switches: [(&str, Setter<bool>); 4] = [
        ("C3_PREPARED_STATEMENTS", C3Builder::prepared_statements),
        ("C3_MIGRATE", C3Builder::migrate),
        ("C3_WARM_RECONNECT", C3Builder::warm_reconnect),
        ("C3_START_DEGRADED", C3Builder::start_degraded),
    ];
    for (name, set) in switches {
        if let Some(v) = var(name) {
            out = set(out, boolean(name, &v)?);
        }
    }
    if let Some(v) = var("C3_DURABILITY") {
        let d = match v.trim().to_ascii_lowercase().as_str() {
            "logged" => crate::store::Durability::Logged,
            "unlogged" => crate::store::Durability::Unlogged,
            _ => return Err(invalid("C3_DURABILITY", &v, "`logged` or `unlogged`")),
        };
        out = out.durability(d);
    }
    Ok(out)
}

/// L1's size and eviction policy.
fn l1_vars(mut out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    if let Some(v) = var("C3_L1_MAX_BYTES") {
        let bytes = parse_bytes(&v)
            .ok_or_else(|| invalid("C3_L1_MAX_BYTES", &v, "bytes, e.g. 268435456 or 256M"))?;
        out = out.l1_max_bytes(bytes);
    }
    if let Some(v) = var("C3_L1_POLICY") {
        let policy = match v.trim().to_ascii_lowercase().as_str() {
            "tinylfu" | "tiny_lfu" => L1Eviction::TinyLfu,
            "lru" => L1Eviction::Lru,
            _ => return Err(invalid("C3_L1_POLICY", &v, "tinylfu or lru")),
        };
        out = out.l1_eviction(policy);
    }
    Ok(out)
}

/// Lifetimes, timeouts and the heartbeat.
fn timing_vars(mut out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    let durations: [(&str, Setter<Option<Duration>>); 3] = [
        ("C3_L1_TTL", C3Builder::l1_ttl),
        ("C3_L1_TIME_TO_IDLE", C3Builder::l1_time_to_idle),
        ("C3_DEFAULT_TTL", C3Builder::default_ttl),
    ];
    for (name, set) in durations {
        if let Some(v) = var(name) {
            let d = parse_optional_duration(&v)
                .ok_or_else(|| invalid(name, &v, "a duration like 30s, 5m, 1h, or none"))?;
            out = set(out, d);
        }
    }
    let required: [(&str, Setter<Duration>); 2] = [
        ("C3_OP_TIMEOUT", C3Builder::op_timeout),
        ("C3_CONNECT_TIMEOUT", C3Builder::connect_timeout),
    ];
    for (name, set) in required {
        if let Some(v) = var(name) {
            let d =
                parse_duration(&v).ok_or_else(|| invalid(name, &v, "a duration like 500ms, 5s"))?;
            out = set(out, d);
        }
    }
    let (hb_i, hb_t) = (var("C3_HEARTBEAT_INTERVAL"), var("C3_HEARTBEAT_TIMEOUT"));
    if hb_i.is_some() || hb_t.is_some() {
        let parse = |name: &str, v: Option<String>, default: Duration| match v {
            Some(v) => parse_duration(&v).ok_or_else(|| invalid(name, &v, "a duration like 1s")),
            None => Ok(default),
        };
        let i = parse("C3_HEARTBEAT_INTERVAL", hb_i, out.heartbeat_interval)?;
        let t = parse("C3_HEARTBEAT_TIMEOUT", hb_t, out.heartbeat_timeout)?;
        out = out.heartbeat(i, t);
    }
    Ok(out)
}

/// Size limits, names, and which keys push their values.
fn limit_and_name_vars(mut out: C3Builder, var: &Var<'_>) -> Result<C3Builder, Error> {
    let sizes: [(&str, Setter<usize>); 3] = [
        ("C3_MAX_KEY_BYTES", C3Builder::max_key_bytes),
        ("C3_MAX_VALUE_BYTES", C3Builder::max_value_bytes),
        ("C3_POOL_SIZE", C3Builder::pool_size),
    ];
    for (name, set) in sizes {
        if let Some(v) = var(name) {
            let n = parse_bytes(&v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| invalid(name, &v, "a whole number"))?;
            out = set(out, n);
        }
    }
    let names: [(&str, Setter<String>); 4] = [
        ("C3_SCHEMA", |b, v| b.schema(v)),
        ("C3_TABLE", |b, v| b.table(v)),
        ("C3_CHANNEL", |b, v| b.channel(v)),
        ("C3_NODE_ID", |b, v| b.node_id(v)),
    ];
    for (name, set) in names {
        if let Some(v) = var(name) {
            out = set(out, v.trim().to_owned());
        }
    }
    if let Some(v) = var("C3_PUSH_VALUES") {
        for prefix in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out = out.push_values(prefix);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn values_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("five minutes"), None);
        assert_eq!(parse_optional_duration("none"), Some(None));
        assert_eq!(parse_bytes("256M"), Some(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("12X"), None);
    }

    #[test]
    fn variables_reach_the_builder() {
        let b = C3Builder::default().from_vars(vars(&[
            ("C3_L1_MAX_BYTES", "1M"),
            ("C3_DEFAULT_TTL", "none"),
            ("C3_L1_POLICY", "lru"),
            ("C3_TABLE", "app_cache"),
            ("C3_HEARTBEAT_TIMEOUT", "3s"),
            ("C3_PUSH_VALUES", "flag:, config:"),
        ]));
        assert!(b.error.is_none());
        assert_eq!(b.l1_max_bytes, 1 << 20);
        assert_eq!(b.default_ttl, None);
        assert_eq!(b.l1.eviction, L1Eviction::Lru);
        assert_eq!(b.table, "app_cache");
        assert_eq!(b.heartbeat_timeout, Duration::from_secs(3));
        assert_eq!(b.push_prefixes, ["flag:", "config:"]);
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        for (var, value) in [
            ("C3_DEFAULT_TTL", "10 minutes"),
            ("C3_L1_MAX_BYTES", "lots"),
            ("C3_L1_POLICY", "fifo"),
            ("C3_POOL_SIZE", "-1"),
            ("C3_OP_TIMEOUT", "none"),
        ] {
            let b = C3Builder::default().from_vars(vars(&[(var, value)]));
            let e = b.error.expect("an error").to_string();
            assert!(e.contains(var), "{e}");
        }
    }
}
