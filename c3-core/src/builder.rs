//! [`C3Builder`]: every setting of a cache, with defaults that suit a small
//! service, checked once in [`build`](C3Builder::build).

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::clock::{Clock, SystemClock};
use crate::coherency::{L1Eviction, L1Settings};
use crate::error::{Error, Result};
use crate::ident::validate_ident;
use crate::key::MAX_KEY_BYTES_LIMIT;
use crate::memory::MemoryServer;
use crate::protocol::valid_node_id;
use crate::store::Durability;

/// Longest table or channel name: derived names (`<table>_version_seq`,
/// `<channel>_hb_<16 hex>`) must stay within PostgreSQL's 63-byte limit.
pub(crate) const MAX_DERIVED_IDENT: usize = 40;

pub(crate) enum Source {
    Unset,
    /// A connection URL, parsed (TLS settings included) at start-up.
    Postgres(String),
    Pool(deadpool_postgres::Pool),
    Memory(MemoryServer),
}

/// A hook run after an L2 read and before its L1 fill (feature `test-util`).
#[cfg(feature = "test-util")]
pub type FillHook = Arc<
    dyn Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync,
>;

/// Configures and builds a [`C3`](crate::C3). Start from [`C3::builder`](crate::C3::builder).
///
/// | setting | default |
/// |---|---|
/// | [`l1_max_bytes`](Self::l1_max_bytes) | 64 MiB |
/// | [`default_ttl`](Self::default_ttl) | 5 minutes |
/// | [`schema`](Self::schema) / [`table`](Self::table) / [`channel`](Self::channel) | `public` / `cache_data` / `cache_invalidate` |
/// | [`max_key_bytes`](Self::max_key_bytes) / [`max_value_bytes`](Self::max_value_bytes) | 1024 / 1 MiB |
/// | [`op_timeout`](Self::op_timeout) / [`connect_timeout`](Self::connect_timeout) | 5 s / 5 s |
/// | [`heartbeat`](Self::heartbeat) interval / timeout | 1 s / 1 s |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 100 ms … 5 s, with jitter |
/// | [`sweep_interval`](Self::sweep_interval) | 60 s |
/// | [`pool_size`](Self::pool_size) | 4 |
/// | [`l2_breaker`](Self::l2_breaker) / [`loader_breaker`](Self::loader_breaker) | 5 failures, 5 s cool-down |
#[must_use = "a builder does nothing until build() is called"]
pub struct C3Builder {
    pub(crate) source: Source,
    pub(crate) listener_url: Option<String>,
    /// Set by `listen_postgres`: the listener URL is not `postgres`'s.
    pub(crate) listener_explicit: bool,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    pub(crate) prepared_statements: bool,
    pub(crate) migrate: bool,
    pub(crate) start_degraded: bool,
    pub(crate) warm_reconnect: bool,
    pub(crate) durability: Durability,
    /// The first invalid setting, reported by `build`.
    pub(crate) error: Option<String>,
    pub(crate) l1_max_bytes: u64,
    pub(crate) l1: L1Settings,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) channel: String,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) sweep_batch: i64,
    pub(crate) pool_size: usize,
    pub(crate) node_id: Option<String>,
    pub(crate) clock: Arc<dyn Clock>,
    /// False once `clock` was given: then no coarse shortcut (see `Inner`).
    pub(crate) system_clock: bool,
    pub(crate) l2_breaker: BreakerConfig,
    pub(crate) loader_breaker: BreakerConfig,
    #[cfg(feature = "test-util")]
    pub(crate) fill_hook: Option<FillHook>,
    /// The oldest fence a fill may be stored through (PROTOCOL.md, "Fills":
    /// half the deletion records' retention); only tests shorten it.
    pub(crate) fence_max_age: Duration,
    pub(crate) on_applied: Option<crate::events::AppliedObserver>,
    pub(crate) trace_keys: bool,
    pub(crate) meter: Option<opentelemetry::metrics::Meter>,
    pub(crate) push_prefixes: Vec<String>,
    pub(crate) compress_above: Option<usize>,
    pub(crate) codecs: crate::codec::CodecPolicy,
    /// Relay mode: invalidations through NATS instead of LISTEN.
    #[cfg(feature = "relay")]
    pub(crate) relay: Option<crate::relay::Nats>,
    /// A relay run inside this node (one leader per slot across the fleet).
    #[cfg(feature = "relay")]
    pub(crate) embedded_relay: Option<crate::relay::RelayBuilder>,
}

impl Default for C3Builder {
    fn default() -> Self {
        C3Builder {
            source: Source::Unset,
            listener_url: None,
            listener_explicit: false,
            tls_config: None,
            prepared_statements: true,
            migrate: true,
            start_degraded: false,
            warm_reconnect: false,
            durability: Durability::Logged,
            error: None,
            l1_max_bytes: 64 * 1024 * 1024,
            l1: L1Settings::default(),
            default_ttl: Some(Duration::from_secs(300)),
            schema: "public".into(),
            table: "cache_data".into(),
            channel: "cache_invalidate".into(),
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(1),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            sweep_interval: Some(Duration::from_secs(60)),
            sweep_batch: 1000,
            pool_size: 4,
            node_id: None,
            clock: Arc::new(SystemClock),
            system_clock: true,
            l2_breaker: BreakerConfig::default(),
            loader_breaker: BreakerConfig::default(),
            #[cfg(feature = "test-util")]
            fill_hook: None,
            fence_max_age: Duration::from_secs(30 * 60),
            on_applied: None,
            trace_keys: false,
            meter: None,
            push_prefixes: Vec::new(),
            compress_above: None,
            codecs: crate::codec::CodecPolicy::default(),
            #[cfg(feature = "relay")]
            relay: None,
            #[cfg(feature = "relay")]
            embedded_relay: None,
        }
    }
}

impl C3Builder {
    /// Records the first invalid setting; `build` reports it.
    pub(crate) fn fail(&mut self, message: impl std::fmt::Display) {
        if self.error.is_none() {
            self.error = Some(message.to_string());
        }
    }

    /// The codec that writes values (default [`Codec::Json`](crate::Codec::Json)).
    /// Readers decode by each row's recorded codec, so nodes may differ.
    pub fn codec(mut self, codec: crate::codec::Codec) -> Self {
        self.codecs.default = codec;
        self
    }

    /// The codec for keys starting with `prefix` (a namespace such as
    /// `"session:"`); the longest matching prefix wins over
    /// [`codec`](Self::codec).
    pub fn codec_for_prefix(
        mut self,
        prefix: impl Into<String>,
        codec: crate::codec::Codec,
    ) -> Self {
        self.codecs.prefixes.push((prefix.into(), codec));
        self
    }

    /// Stores values whose JSON is longer than `bytes` LZ4-compressed in L2
    /// (encoding `json+lz4`, see docs/PROTOCOL.md), when that makes them
    /// smaller. `None` (the default) never compresses. L1 is unaffected: it
    /// holds decoded values.
    #[cfg(feature = "lz4")]
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.compress_above = bytes;
        self
    }

    /// Puts keys in trace spans (`c3.key`). Off by default: keys may be
    /// personal data.
    pub fn trace_keys(mut self, on: bool) -> Self {
        self.trace_keys = on;
        self
    }

    /// The OpenTelemetry meter c3's instruments are created on. By default
    /// the global meter provider's `c3` meter, as it is when `build` runs:
    /// install the application's provider first, or pass its meter here.
    ///
    /// The instruments — names, kinds, units, attributes; every one carries
    /// `c3.cache`, the L2 table — are listed once, in the README's "Observing
    /// c3" table (and defined in `telemetry/metrics.rs`).
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Value push for keys starting with `prefix` (call again for more
    /// namespaces; `""` is every key). A `set` of such a key sends the new
    /// value in its notification, and the other nodes put it straight into
    /// L1 — their next read is an L1 hit instead of an L2 round trip.
    ///
    /// Only values stored as uncompressed JSON travel, and only if the
    /// message fits PostgreSQL's 8000-byte NOTIFY limit; others are sent as
    /// plain invalidations, as are loads' write-backs. Ordering holds as for
    /// invalidations: a node keeps a pushed value only if it has seen no
    /// newer version of the key, so a late push never overwrites a newer
    /// value. Receivers decode the value on its first read.
    ///
    /// Use it for small, hot values that many nodes read right after a
    /// write (configuration, feature flags, session-like state). Leave it
    /// off for large values or write-heavy keys: every write then costs a
    /// payload to every node, read or not, and goes through PostgreSQL's
    /// notification queue.
    pub fn push_values(mut self, prefix: impl Into<String>) -> Self {
        self.push_prefixes.push(prefix.into());
        self
    }

    /// The eviction policy of L1 (default [`L1Eviction::TinyLfu`]).
    pub fn l1_eviction(mut self, policy: L1Eviction) -> Self {
        self.l1.eviction = policy;
        self
    }

    /// Caps how long any L1 copy lives, whatever the entry's TTL (`None`,
    /// the default: the entry's TTL). A short cap bounds staleness even if a
    /// notification were lost, at the price of more L2 reads. Without a cap,
    /// a copy past its TTL is never served and stays, counted against
    /// [`l1_max_bytes`](Self::l1_max_bytes), until it is replaced or evicted
    /// (a per-entry expiry in moka would cost every hit a fifth more).
    pub fn l1_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.l1.ttl = ttl;
        self
    }

    /// Sliding expiration for L1: a copy not read for this long is dropped
    /// (`None`, the default: no idle limit). L2 keeps the entry.
    pub fn l1_time_to_idle(mut self, idle: Option<Duration>) -> Self {
        self.l1.time_to_idle = idle;
        self
    }

    /// Uses PostgreSQL at `url` (`postgres://user@host:port/db` or a libpq
    /// key=value string) for L2 and for the LISTEN connection.
    ///
    /// TLS follows libpq: `sslmode` (`disable`, `prefer` — the default —,
    /// `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file or
    /// `system`), `sslcert`/`sslkey`, or the `PGSSLMODE`… variables; see
    /// [`tls`](crate::tls) for exactly what each mode verifies.
    pub fn postgres(mut self, url: &str) -> Self {
        if !self.listener_explicit {
            self.listener_url = Some(url.to_owned());
        }
        if !matches!(self.source, Source::Pool(_)) {
            self.source = Source::Postgres(url.to_owned());
        }
        self
    }

    /// Uses `url` for the LISTEN connection only, while L2 queries use
    /// [`postgres`](Self::postgres)'s URL or [`pool`](Self::pool) — e.g. the
    /// pool through PgBouncer in transaction mode, LISTEN direct to
    /// PostgreSQL (LISTEN cannot work through a transaction pooler).
    pub fn listen_postgres(mut self, url: &str) -> Self {
        self.listener_url = Some(url.to_owned());
        self.listener_explicit = true;
        self
    }

    /// Whether `build()` creates or upgrades the L2 schema (`true`, the
    /// default; idempotent, safe from many nodes at once). With `false` the
    /// application role needs no DDL rights: `build()` only checks that every
    /// table, sequence, function, trigger and column c3 needs exists, and
    /// fails with an error listing what is missing. Apply
    /// [`migration_sql`](Self::migration_sql) (or `cargo run --bin c3-sql`)
    /// with a role that may.
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// Whether `build()` may return before PostgreSQL answers (default
    /// `false`: it fails with a typed error within the connect timeout).
    /// With `true`, a node started before its database answers L2 calls with
    /// `L2Unavailable`-kind errors (`get_or_load` still calls its loader) and
    /// bypasses L1; in the background it migrates (or checks the schema)
    /// once PostgreSQL answers, its listener connects, and it becomes
    /// coherent with no restart. `c3::axum::health` reports 503 until then.
    pub fn start_degraded(mut self, on: bool) -> Self {
        self.start_degraded = on;
        self
    }

    /// Whether a lost LISTEN connection keeps L1 (default `false`: it purges
    /// L1, twice). With `true`, L1 is only bypassed while the node is not
    /// listening; once LISTEN is back, the node asks the L2 table which keys
    /// changed since the last snapshot it provably heard of — rows carry
    /// their writer's transaction id, deletions are recorded — drops exactly
    /// those and uses L1 again. It still purges when that cannot be proven:
    /// a gap over 30 minutes, another cluster or timeline (failover), a
    /// restart with an unlogged table, a clear, or a failed replay query.
    ///
    /// Turn it on only if **every invalidator goes through the table**: c3
    /// nodes, the SQL invalidation function (c3-sqlx's `invalidate` and
    /// triggers), or deletes that record themselves (PROTOCOL.md §4.1). A
    /// bare `pg_notify` from a foreign client leaves nothing to replay.
    /// [`C3::invalidate`](crate::C3::invalidate) records its keys, so it is
    /// replayed too.
    pub fn warm_reconnect(mut self, on: bool) -> Self {
        self.warm_reconnect = on;
        self
    }

    /// Relay mode (feature `relay`): this node hears invalidations through
    /// NATS, published by a relay that reads them from PostgreSQL's logical
    /// decoding, instead of holding a LISTEN session. Writes announce with
    /// a transactional logical message (no NOTIFY lock at commit); the
    /// node's own heartbeats go the same way — WAL, slot, relay, NATS — and
    /// must come back within the [`heartbeat`](Self::heartbeat) timeout, or
    /// L1 is purged and bypassed until they do. The node holds no
    /// PostgreSQL session but its pool, which may go through a transaction
    /// pooler. Every node of a table must use the same transport; the
    /// table remembers which (PROTOCOL.md §6, README "More than a few dozen
    /// replicas").
    #[cfg(feature = "relay")]
    pub fn relay(mut self, nats: crate::relay::Nats) -> Self {
        self.relay = Some(nats);
        self
    }

    /// Runs a relay inside this node (implies nothing about the node's
    /// own transport: set [`relay`](Self::relay) too). Every node may
    /// embed one: they elect one leader per slot, the others wait hot. The
    /// relay takes the node's PostgreSQL URL and NATS settings unless
    /// `relay` names its own; its replication session needs a role with
    /// `REPLICATION` and a server with `wal_level = logical`.
    #[cfg(feature = "relay")]
    pub fn embedded_relay(mut self, relay: crate::relay::RelayBuilder) -> Self {
        self.embedded_relay = Some(relay);
        self
    }

    /// Whether this node hears invalidations through the relay.
    pub(crate) fn relay_mode(&self) -> bool {
        #[cfg(feature = "relay")]
        return self.relay.is_some();
        #[cfg(not(feature = "relay"))]
        return false;
    }

    /// How the L2 tables are stored (default [`Durability::Logged`]).
    ///
    /// [`Durability::Unlogged`] creates them `UNLOGGED` (and switches
    /// existing ones, once, at migration): a cache write then writes no WAL
    /// and its commit does not wait for the disk — several times the write
    /// throughput (see docs/BENCHMARKS.md). The price: a PostgreSQL crash, or
    /// a failover to a standby (unlogged tables are not replicated), empties
    /// the cache. That is safe — every node's LISTEN connection breaks with
    /// it, and a node purges L1 when it reconnects (also with warm reconnect,
    /// which detects the restart), and a fill that began before the crash is
    /// refused — but the cache is cold afterwards. Only c3's own tables are
    /// affected: a transaction of yours that calls the invalidation function
    /// commits as durably as before.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether L2 statements are prepared once per connection and reused
    /// (`true`, the default: the fastest) or sent as one unnamed statement
    /// each, with their parameter types (`false`). Set `false` when the pool
    /// goes through a transaction pooler that cannot keep prepared statements
    /// across transactions (PgBouncer before 1.21, or later with
    /// `max_prepared_statements = 0`); each statement is then still one round
    /// trip, parsed by the server every time. The LISTEN connection must not
    /// go through such a pooler (see [`listen_postgres`](Self::listen_postgres)).
    pub fn prepared_statements(mut self, on: bool) -> Self {
        self.prepared_statements = on;
        self
    }

    /// Secures the PostgreSQL connections with this rustls configuration
    /// instead of the one c3 derives from `sslmode`/`sslrootcert`/… (client
    /// certificates, another verifier, pinned roots). The URL's `sslmode`
    /// still decides whether TLS is used: `disable`, `prefer` or required.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(Arc::new(config));
        self
    }

    /// Uses an existing connection pool for L2. The LISTEN connection cannot
    /// come from a pool, so [`postgres`](Self::postgres) must also be given; it
    /// is then used for the listener only.
    pub fn pool(mut self, pool: deadpool_postgres::Pool) -> Self {
        self.source = Source::Pool(pool);
        self
    }

    /// Uses an in-process [`MemoryServer`] as L2. Handles built on the same
    /// server form a simulated cluster.
    pub fn memory(mut self, server: &MemoryServer) -> Self {
        self.source = Source::Memory(server.clone());
        self
    }

    /// Maximum L1 size in bytes (encoded value size plus key, per entry).
    /// `0` disables L1: every read goes to L2.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// TTL for writes that do not give one; `None` keeps entries until deleted.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Schema of the L2 table (created if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Name of the L2 table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Notification channel shared by all nodes of one cache.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Longest accepted key, in bytes (at most 7000, so a key always fits in
    /// one notification).
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Largest accepted encoded value, in bytes.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Upper bound on every L2 call, including waiting for a pooled connection.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Upper bound on opening a connection (pool and listener).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the listener proves its connection works, and how long the
    /// proof may take. A dead or half-open link is detected, and L1 purged,
    /// within `interval + timeout`.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Reconnect delays: exponential from `min` to `max`, each jittered down by
    /// up to half.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// How often expired rows are deleted from L2 (`None`: never). Only one
    /// node sweeps at a time.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Connections in the L2 pool (default 4). With the LISTEN connection,
    /// a node holds at most `pool_size + 1` connections (+1 for a moment
    /// while a new LISTEN connection is probed): ten replicas with the
    /// defaults take 50 of PostgreSQL's default `max_connections = 100`,
    /// leaving room for the applications' own pools. Concurrent writes share
    /// transactions (write combining), so a small pool still carries many
    /// writers; behind PgBouncer the pool may be larger (the pooler bounds
    /// the server side) while LISTEN stays one direct connection per node.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// This node's id in notifications (`[A-Za-z0-9_.:-]`, up to 64 bytes).
    /// Defaults to a random id; it must be unique per live handle.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The circuit breaker guarding L2: after this many consecutive L2
    /// failures (timeouts included) L2 is not called for the cool-down, and
    /// `get_or_load` goes straight to the loader.
    pub fn l2_breaker(mut self, config: BreakerConfig) -> Self {
        self.l2_breaker = config;
        self
    }

    /// The circuit breaker settings for each loader source of `get_or_load`.
    pub fn loader_breaker(mut self, config: BreakerConfig) -> Self {
        self.loader_breaker = config;
        self
    }

    /// The wall clock used for expiry (tests pass a [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.system_clock = false;
        self
    }

    /// Calls `observer` for every notification from another node or client
    /// that this node applies (see [`Applied`](crate::Applied)): the hook
    /// for propagation-lag metrics and delivery benchmarks. It runs on the
    /// listener's task: keep it short, and do not panic — a panic there
    /// ends the listener, and L1 is then purged and off for good (reads go
    /// to L2) until the cache is built again.
    pub fn on_applied(
        mut self,
        observer: impl Fn(&crate::events::Applied<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_applied = Some(Arc::new(observer));
        self
    }

    /// Runs `hook` between every L2 read and its L1 fill, so tests can inject
    /// an invalidation into that window deterministically.
    #[cfg(feature = "test-util")]
    pub fn fill_hook(mut self, hook: FillHook) -> Self {
        self.fill_hook = Some(hook);
        self
    }

    /// Shortens the oldest fence a fill may be stored through (30 minutes:
    /// half the deletion records' retention), so tests can see an old fence
    /// refused without waiting half an hour. Only ever shorter: a longer one
    /// would let a fill miss a deletion whose record was swept.
    #[cfg(feature = "test-util")]
    pub fn fence_max_age(mut self, age: Duration) -> Self {
        self.fence_max_age = age.min(self.fence_max_age);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(Error::config(e.clone()));
        }
        validate_ident("schema", &self.schema, 63).map_err(Error::config)?;
        validate_ident("table", &self.table, MAX_DERIVED_IDENT).map_err(Error::config)?;
        validate_ident("channel", &self.channel, MAX_DERIVED_IDENT).map_err(Error::config)?;
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_BYTES_LIMIT {
            return Err(Error::config(format!(
                "max_key_bytes must be between 1 and {MAX_KEY_BYTES_LIMIT}, got {}",
                self.max_key_bytes
            )));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 512 * 1024 * 1024 {
            return Err(Error::config(
                "max_value_bytes must be between 1 and 512 MiB",
            ));
        }
        if let Some(id) = &self.node_id
            && !valid_node_id(id)
        {
            return Err(Error::config(format!(
                "node id {id:?} must be 1 to 64 characters from [A-Za-z0-9_.:-]"
            )));
        }
        for (name, d) in [
            ("op_timeout", self.op_timeout),
            ("connect_timeout", self.connect_timeout),
            ("heartbeat interval", self.heartbeat_interval),
            ("heartbeat timeout", self.heartbeat_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!("{name} must be greater than zero")));
            }
        }
        if self.pool_size == 0 {
            return Err(Error::config("pool_size must be at least 1"));
        }
        Ok(())
    }
}
