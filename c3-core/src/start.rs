//! Start-up: from the settings a [`C3Builder`] holds to a running [`C3`] —
//! L1, the L2 store and the tasks that serve it (the invalidation feed, the
//! sweeper). The one place that picks a store: the in-process server
//! (`crate::memory`) or PostgreSQL (`crate::postgres`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::breaker::Breaker;
use crate::builder::{C3Builder, Source};
use crate::cache::{C3, Inner, Limits, SqlNames};
use crate::coherency::Coherency;
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::flights::Flights;
use crate::postgres;
use crate::stats::Counters;
use crate::store::Store;

impl C3Builder {
    /// Connects, creates or upgrades the L2 table, starts the listener and the
    /// sweeper, and returns the handle.
    ///
    /// With PostgreSQL this waits (up to `connect_timeout`) for LISTEN to be in
    /// effect, so L1 is in use as soon as it returns; if LISTEN is not up by
    /// then, the handle still works with L1 bypassed until it is.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for invalid settings or no
    /// backend; a backend or timeout error if the table cannot be created.
    pub async fn build(mut self) -> Result<C3> {
        self.validate()?;
        let node_id = self.node_id.clone().unwrap_or_else(random_node_id);
        let counters = Arc::new(Counters::default());
        let sql_names = SqlNames {
            table: crate::ident::qualified(&self.schema, &self.table),
            channel: self.channel.clone(),
            invalidate_function: postgres::invalidate_function(&self.schema, &self.table),
        };
        let meter = self.meter.clone().unwrap_or_else(|| {
            opentelemetry::global::meter_with_scope(
                opentelemetry::InstrumentationScope::builder("c3")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            )
        });
        let metrics = Arc::new(crate::telemetry::Metrics::new(&meter, &sql_names.table));
        let mut coherency = Coherency::new(
            self.l1_max_bytes,
            self.l1,
            node_id.clone(),
            Arc::clone(&counters),
            Arc::clone(&metrics),
            Arc::clone(&self.clock),
        );
        coherency.observer = self.on_applied.clone();
        let coherency = Arc::new(coherency);
        let feed = Feed::new(Arc::clone(&coherency));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (backend, tasks) =
            start_store(&mut self, &node_id, &feed, &shutdown_tx, shutdown_rx).await?;
        let c3 = C3::from_inner(Inner {
            coherency,
            feed,
            metrics,
            l2: crate::l2::L2::new(
                backend,
                Breaker::new(self.l2_breaker),
                self.op_timeout,
                Arc::clone(&counters),
                sql_names.table.clone(),
            ),
            clock: self.clock,
            system_clock: self.system_clock,
            counters,
            sql_names,
            trace_keys: self.trace_keys,
            combiner: Arc::default(),
            limits: Limits {
                codecs: self.codecs.clone(),
                compress_above: self.compress_above,
                max_key_bytes: self.max_key_bytes,
                max_value_bytes: self.max_value_bytes,
                default_ttl: self.default_ttl,
                op_timeout: self.op_timeout,
                push_prefixes: self.push_prefixes,
            },
            shutdown: shutdown_tx,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(tasks),
            loader_breakers: crate::breaker::SourceBreakers::new(self.loader_breaker),
            flights: Flights::default(),
            #[cfg(feature = "test-util")]
            fill_hook: self.fill_hook,
        });
        crate::telemetry::metrics::observe(&meter, &c3.inner.sql_names.table, &c3.inner);
        Ok(c3)
    }
}

/// Starts L2 — the in-process server, or PostgreSQL — with the tasks that
/// serve it: the feed, what the store still owes (a degraded start's schema
/// step), and the sweeper beside the store's sweep.
async fn start_store(
    settings: &mut C3Builder,
    node_id: &str,
    feed: &Feed,
    shutdown_tx: &watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(Arc<dyn Store>, Vec<JoinHandle<()>>)> {
    let mut tasks = Vec::new();
    let store: Arc<dyn Store> = match std::mem::replace(&mut settings.source, Source::Unset) {
        Source::Unset => {
            return Err(Error::config(
                "no backend: call .postgres(url), .pool(pool) or .memory(&server) — or set \
                 C3_DATABASE_URL (else DATABASE_URL) and use C3Builder::from_env()",
            ));
        }
        Source::Memory(server) => {
            crate::memory::start(server, feed, shutdown_rx.clone(), &mut tasks)
        }
        source @ (Source::Postgres(_) | Source::Pool(_)) => {
            postgres::start(settings, source, node_id, feed, shutdown_tx, &mut tasks).await?
        }
    };
    #[cfg(feature = "relay")]
    start_relay(settings, &store, feed, &shutdown_rx, &mut tasks).await?;
    if let Some(every) = settings.sweep_interval {
        tasks.push(tokio::spawn(crate::store::sweeper(
            Arc::clone(&store),
            Arc::clone(&settings.clock),
            every,
            settings.sweep_batch,
            settings.op_timeout,
            shutdown_rx,
        )));
    }
    Ok((store, tasks))
}

/// Relay mode: the embedded relay, if asked for, and the NATS subscription
/// in place of LISTEN — waited for (bounded), like LISTEN, so L1 is in use
/// as soon as `build` returns when the relay path works.
#[cfg(feature = "relay")]
async fn start_relay(
    settings: &C3Builder,
    store: &Arc<dyn Store>,
    feed: &Feed,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<()> {
    if let Some(relay) = settings.embedded_relay.clone() {
        let mut relay = relay;
        if relay.postgres.is_none() {
            relay = match &settings.listener_url {
                Some(url) => relay.postgres(url.clone()),
                None => relay,
            };
        }
        if relay.nats.is_none()
            && let Some(nats) = &settings.relay
        {
            relay = relay.nats(nats.clone());
        }
        let handle = relay.build()?.spawn();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            handle.shutdown().await;
        }));
    }
    let Some(nats) = settings.relay.clone() else {
        return Ok(());
    };
    nats.validate().map_err(Error::config)?;
    let mut state = feed.subscribe();
    tasks.push(tokio::spawn(crate::relay::subscribe::run(
        feed.clone(),
        Arc::clone(store),
        crate::relay::subscribe::Settings {
            nats,
            channel: settings.channel.clone(),
            connect_timeout: settings.connect_timeout,
            heartbeat_interval: settings.heartbeat_interval,
            heartbeat_timeout: settings.heartbeat_timeout,
            backoff: settings.backoff,
        },
        shutdown.clone(),
    )));
    let wait = settings.connect_timeout * 2 + settings.heartbeat_timeout;
    let _ = tokio::time::timeout(
        wait,
        state.wait_for(|s| *s == crate::ListenerState::Listening),
    )
    .await;
    Ok(())
}

/// A node id unlikely to collide: process id, time and a per-process counter,
/// mixed by std's randomly keyed hasher.
fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("n{:016x}", h.finish())
}
