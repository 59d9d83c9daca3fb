//! Everything PostgreSQL: the L2 store (its SQL, schema and operations),
//! the LISTEN session that feeds invalidations to the engine, warm
//! reconnect's change-log replay, and TLS. Only start-up (`crate::start`)
//! reaches in here, to start it; the engine sees a [`Store`] and the
//! notifications the LISTEN task applies.

pub(crate) mod listen;
mod schema;
mod session;
mod sql;
mod store;

pub(crate) mod warm_reconnect;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::builder::{C3Builder, MAX_DERIVED_IDENT, Source};
use crate::error::{Error, Result};
use crate::feed::{Feed, ListenerState};
use crate::ident::validate_ident;
use crate::store::Store;
use crate::tls;
use listen::{ListenerSettings, NotListening};
use schema::SchemaStep;
pub(crate) use sql::Announce;
pub(crate) use sql::invalidate_function;
use sql::migration_sql;
use store::{PgStore, PoolSettings, build_pool};
use warm_reconnect::replay_sql;

impl C3Builder {
    /// The DDL `build()` runs for this builder's schema and table: for a DBA,
    /// `sqlx migrate`, Flyway or Atlas when the application may not run DDL
    /// (see [`migrate`](Self::migrate)). Idempotent.
    ///
    /// # Errors
    ///
    /// An invalid schema or table name.
    pub fn migration_sql(&self) -> Result<String> {
        validate_ident("schema", &self.schema, 63).map_err(Error::config)?;
        validate_ident("table", &self.table, MAX_DERIVED_IDENT).map_err(Error::config)?;
        Ok(migration_sql(
            &self.schema,
            &self.table,
            self.durability,
            announce(self),
        ))
    }
}

/// How this node's writes announce themselves: LISTEN/NOTIFY, or the relay.
fn announce(settings: &C3Builder) -> Announce {
    if settings.relay_mode() {
        Announce::Relay
    } else {
        Announce::Notify
    }
}

/// Builds the pool (or takes the one given), checks or migrates the
/// schema, and — unless the node hears invalidations through the relay —
/// starts the LISTEN task, waiting for it to listen, so a listener that
/// can never work is a configuration error now. Returns the backend, and
/// the schema step still to retry in the background when PostgreSQL did
/// not answer and `start_degraded` allowed that.
pub(crate) async fn start(
    settings: &C3Builder,
    source: Source,
    node_id: &str,
    feed: &Feed,
    shutdown_tx: &watch::Sender<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Arc<dyn Store>> {
    let listen = if settings.relay_mode() {
        None
    } else {
        let Some(listen_url) = &settings.listener_url else {
            return Err(Error::config(
                "a pool was given but no URL for the LISTEN connection: also call .postgres(url)",
            ));
        };
        Some(tls::parse(listen_url).map_err(|e| {
            Error::config(if settings.listener_explicit {
                format!("listener URL: {e}")
            } else {
                e
            })
        })?)
    };
    let (pool, pool_ssl) = pool_for(settings, source, node_id)?;
    let pg = PgStore::new(
        pool,
        pool_ssl,
        !settings.prepared_statements,
        (&settings.schema, &settings.table, &settings.channel),
        (settings.durability, announce(settings)),
        settings.fence_max_age,
    );
    let step = SchemaStep {
        migrate: settings.migrate,
        schema: settings.schema.clone(),
        table: settings.table.clone(),
        timeout: settings.connect_timeout + settings.op_timeout,
        backoff: settings.backoff,
        announce: announce(settings),
    };
    let schema_ready = match step.once(&pg).await {
        Ok(()) => true,
        Err(e) if settings.start_degraded && e.is_l2_unavailable() && !e.is_tls() => {
            tracing::warn!(target: "c3::start", error = %e,
                "PostgreSQL does not answer; starting degraded (L1 off, L2 errors) until it does");
            false
        }
        Err(e) => return Err(e),
    };
    if let Some((mut listen_cfg, listen_tls)) = listen {
        let listen = listener_settings(settings, node_id, &mut listen_cfg, &listen_tls)?;
        let state = feed.subscribe();
        let (problem_tx, problem) = watch::channel(None);
        tasks.push(tokio::spawn(listen::run_postgres(
            feed.clone(),
            listen_cfg,
            listen,
            problem_tx,
            shutdown_tx.subscribe(),
        )));
        if schema_ready {
            wait_listening(settings, shutdown_tx, state, problem).await?;
        }
    }
    let pg = Arc::new(pg);
    if !schema_ready {
        tasks.push(tokio::spawn(
            step.retry(Arc::clone(&pg), shutdown_tx.subscribe()),
        ));
    }
    Ok(pg)
}

/// The pool: the one given, or one built from the URL (its TLS, its
/// application name carrying the node id).
fn pool_for(
    settings: &C3Builder,
    source: Source,
    node_id: &str,
) -> Result<(deadpool_postgres::Pool, Option<tls::SslMode>)> {
    match source {
        Source::Pool(pool) => Ok((pool, None)),
        Source::Postgres(url) => {
            let (mut cfg, tls) = tls::parse(&url).map_err(Error::config)?;
            let app: String = format!("c3-pool {node_id}").chars().take(63).collect();
            // A request stuck in a dead link must not reach the server
            // long after its caller was told it failed: the kernel
            // aborts a connection whose data stays unacknowledged this
            // long (PROTOCOL.md §2, "Bounded transactions"), and
            // keepalives find a silent peer between operations.
            cfg.application_name(&app)
                .keepalives(true)
                .keepalives_idle(settings.heartbeat_interval.max(Duration::from_secs(1)))
                .tcp_user_timeout((settings.op_timeout / 2).max(Duration::from_secs(1)));
            let connector = tls
                .connector(settings.tls_config.as_ref(), "the pool")
                .map_err(Error::config)?;
            let settings = PoolSettings {
                max_size: settings.pool_size,
                wait_timeout: settings.op_timeout,
                connect_timeout: settings.connect_timeout,
            };
            Ok((build_pool(cfg, connector, &settings)?, Some(tls.mode)))
        }
        _ => unreachable!("only PostgreSQL sources reach here"),
    }
}

/// The LISTEN connection's settings (and its connection options).
fn listener_settings(
    settings: &C3Builder,
    node_id: &str,
    listen_cfg: &mut tokio_postgres::Config,
    listen_tls: &tls::TlsSettings,
) -> Result<ListenerSettings> {
    // Keepalives and a user timeout make the kernel give up on a dead
    // peer too; the heartbeat below is what bounds detection.
    // The node id in the application name lets operators (and the
    // fault tests) find a node's listener in pg_stat_activity.
    let app: String = format!("c3-listener {node_id}").chars().take(63).collect();
    listen_cfg
        .application_name(&app)
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(settings.heartbeat_interval.max(Duration::from_secs(1)))
        .tcp_user_timeout(settings.heartbeat_interval + settings.heartbeat_timeout);
    Ok(ListenerSettings {
        heartbeat_channel: format!(
            "{}_hb_{:016x}",
            settings.channel,
            crate::key::fnv1a(node_id.as_bytes())
        ),
        channel: settings.channel.clone(),
        connect_timeout: settings.connect_timeout,
        heartbeat_interval: settings.heartbeat_interval,
        heartbeat_timeout: settings.heartbeat_timeout,
        backoff_min: settings.backoff.0,
        backoff_max: settings.backoff.1,
        tls: listen_tls
            .connector(settings.tls_config.as_ref(), "the LISTEN connection")
            .map_err(Error::config)?,
        ssl_mode: listen_tls.mode,
        warm_reconnect: settings
            .warm_reconnect
            .then(|| warm_reconnect::WarmReconnect {
                sql: replay_sql(&settings.schema, &settings.table),
                table: crate::ident::qualified(&settings.schema, &settings.table),
                window: warm_reconnect::WINDOW,
                max_keys: 1_000_000,
                timeout: settings.op_timeout,
            }),
    })
}

/// Waits (bounded) for the listener to be in effect: connect, LISTEN,
/// the probe's own connection, its echo. A listener that can never work
/// (LISTEN through a transaction pooler) is a configuration error,
/// reported at once; any other failure is an outage to ride out with L1
/// off.
async fn wait_listening(
    settings: &C3Builder,
    shutdown_tx: &watch::Sender<bool>,
    mut state: watch::Receiver<ListenerState>,
    mut problem: watch::Receiver<Option<NotListening>>,
) -> Result<()> {
    let no_echo = |p: &Option<NotListening>| matches!(p, Some(NotListening::NoEcho));
    let wait = settings.connect_timeout * 2 + listen::probe_wait(settings.heartbeat_timeout);
    let _ = tokio::time::timeout(wait, async {
        tokio::select! {
            _ = state.wait_for(|s| *s == ListenerState::Listening) => {}
            _ = problem.wait_for(no_echo) => {}
        }
    })
    .await;
    if *state.borrow() != ListenerState::Listening && no_echo(&problem.borrow()) {
        let _ = shutdown_tx.send(true);
        return Err(Error::config(NotListening::NoEcho.to_string()));
    }
    Ok(())
}
