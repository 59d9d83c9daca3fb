//! The relay transport (feature `relay`; PROTOCOL.md §6): past a few dozen
//! replicas, one PostgreSQL's NOTIFY is the ceiling — every notifying commit
//! takes one database-wide lock and signals every listener. In relay mode a
//! write's own transaction emits its invalidation into the WAL as a logical
//! message, a relay reads the slot and publishes each message to NATS in
//! commit order, and nodes subscribe there instead of holding a LISTEN
//! session.
//!
//! * [`Relay`] reads a logical replication slot (pgoutput, `messages
//!   'true'`) and publishes every c3 message, stamped with an epoch and a
//!   per-subject sequence. One relay per slot is active: the leader holds
//!   an advisory lock on a session of its own; the others wait hot. It
//!   acknowledges to PostgreSQL only commits NATS has accepted.
//! * Nodes ([`C3Builder::relay`](crate::C3Builder::relay)) check the
//!   sequence, and send their heartbeats through the same path (WAL, slot,
//!   relay, NATS): one check that covers a dead relay, a stuck slot, a
//!   NATS partition and PostgreSQL down.
//!
//! The `c3-relay` crate runs a relay as its own process; a node runs one
//! with [`C3Builder::embedded_relay`](crate::C3Builder::embedded_relay).

mod election;
mod leadership;
mod metrics;
mod nats;
mod settings;
mod slot;
mod stream;
pub(crate) mod subscribe;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use nats::Nats;
pub use settings::RelayStatus;
use settings::Settings;

/// Configures a [`Relay`]. Start from [`Relay::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`postgres`](Self::postgres) | `C3_DATABASE_URL`, else `DATABASE_URL` (with [`from_env`](Self::from_env)) |
/// | [`nats`](Self::nats) | `C3_NATS_*` (with `from_env`) |
/// | [`slot`](Self::slot) | `c3_relay` |
/// | [`publication`](Self::publication) | `c3_relay` |
/// | [`ack_interval`](Self::ack_interval) | 50 ms |
/// | [`batch_window`](Self::batch_window) | none: batches follow the load |
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct RelayBuilder {
    pub(crate) postgres: Option<String>,
    pub(crate) nats: Option<Nats>,
    slot: String,
    publication: String,
    ack_interval: Duration,
    batch_window: Duration,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
    name: Option<String>,
}

impl Default for RelayBuilder {
    fn default() -> Self {
        RelayBuilder {
            postgres: None,
            nats: None,
            slot: "c3_relay".to_owned(),
            publication: "c3_relay".to_owned(),
            ack_interval: Duration::from_millis(50),
            batch_window: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            name: None,
        }
    }
}

impl RelayBuilder {
    /// From `C3_DATABASE_URL` (else `DATABASE_URL`), the `C3_NATS_*`
    /// variables ([`Nats::from_env`]) and `C3_RELAY_SLOT`.
    pub fn from_env(self) -> Self {
        self.with_lookup(&|k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub(crate) fn from_lookup(var: &dyn Fn(&str) -> Option<String>) -> Self {
        RelayBuilder::default().with_lookup(var)
    }

    fn with_lookup(mut self, var: &dyn Fn(&str) -> Option<String>) -> Self {
        if let Some(url) = var("C3_DATABASE_URL").or_else(|| var("DATABASE_URL")) {
            self.postgres = Some(url);
        }
        if let Some(nats) = Nats::from_lookup(var) {
            self.nats = Some(nats);
        }
        if let Some(slot) = var("C3_RELAY_SLOT") {
            self.slot = slot.trim().to_owned();
        }
        self
    }

    /// The PostgreSQL to read: a URL as for [`C3Builder::postgres`](crate::C3Builder::postgres)
    /// (TLS settings included). Its role needs `REPLICATION`; the server
    /// `wal_level = logical`. Not through a transaction pooler.
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.postgres = Some(url.into());
        self
    }

    /// The NATS to publish to.
    pub fn nats(mut self, nats: Nats) -> Self {
        self.nats = Some(nats);
        self
    }

    /// The logical replication slot (created when missing; one per
    /// database is enough for every c3 table in it).
    pub fn slot(mut self, name: impl Into<String>) -> Self {
        self.slot = name.into();
        self
    }

    /// The publication pgoutput reads through (created when missing; it
    /// replicates no table — c3 sends only logical messages).
    pub fn publication(mut self, name: impl Into<String>) -> Self {
        self.publication = name.into();
        self
    }

    /// How often, at most, NATS is asked to confirm what was published, and
    /// the slot acknowledged up to it.
    pub fn ack_interval(mut self, every: Duration) -> Self {
        self.ack_interval = every;
        self
    }

    /// The least time between two messages on the same stream, for
    /// commits to share one. Without it (the default) batches follow the
    /// load: a commit is published as soon as the relay has checked that it
    /// is visible (one query), and the commits decoded during that check go
    /// out together in the next message — no wait when writes are rare,
    /// fewer and larger messages for every subscriber when they are
    /// frequent. A window trades latency (up to the window) for still fewer
    /// messages.
    pub fn batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Bound on connecting to PostgreSQL or NATS, and on NATS confirming
    /// what the relay published: a stream whose confirmation takes longer
    /// starts over (in a new epoch) and reports why, rather than holding
    /// every acknowledgement back while the slot's WAL grows.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Backoff between attempts to lead (and after a lost stream).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// A name for this relay in `pg_stat_activity` and NATS (default: a
    /// random one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config): no PostgreSQL URL or
    /// NATS, an invalid URL, slot or publication name.
    pub fn build(self) -> crate::Result<Relay> {
        use crate::error::Error;
        let url = self.postgres.ok_or_else(|| {
            Error::config("relay: no PostgreSQL URL (postgres(url), C3_DATABASE_URL)")
        })?;
        let nats = self
            .nats
            .ok_or_else(|| Error::config("relay: no NATS (nats(Nats::new(url)), C3_NATS_URL)"))?;
        nats.validate()
            .map_err(|e| Error::config(format!("relay: {e}")))?;
        for (what, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            crate::ident::validate_ident(what, name, 63)
                .map_err(|e| Error::config(format!("relay: {e}")))?;
        }
        let name = self.name.unwrap_or_else(|| {
            format!(
                "c3-relay {:08x}",
                crate::key::fnv1a(
                    format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes()
                ) as u32
            )
        });
        let postgres = settings::Postgres::parse(&url, &name)
            .map_err(|e| Error::config(format!("relay: {e}")))?;
        let (status, _) = watch::channel(RelayStatus::default());
        Ok(Relay {
            settings: Arc::new(Settings {
                postgres,
                nats,
                slot: self.slot,
                publication: self.publication,
                ack_interval: self.ack_interval,
                batch_window: self.batch_window,
                connect_timeout: self.connect_timeout,
                backoff: self.backoff,
                name,
            }),
            status: Arc::new(status),
        })
    }
}

/// A relay: reads c3's messages from a logical replication slot and
/// publishes them to NATS. Build with [`Relay::builder`], then
/// [`spawn`](Self::spawn) it.
pub struct Relay {
    settings: Arc<Settings>,
    status: Arc<watch::Sender<RelayStatus>>,
}

impl Relay {
    /// A builder with the defaults.
    pub fn builder() -> RelayBuilder {
        RelayBuilder::default()
    }

    /// Starts the relay on the current Tokio runtime: it competes for the
    /// slot's leadership, and streams while it holds it, until
    /// [`RelayHandle::shutdown`].
    #[must_use = "dropping the handle leaves the relay running with no way to stop it"]
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let status = self.status.subscribe();
        let meter = opentelemetry::global::meter_with_scope(
            opentelemetry::InstrumentationScope::builder("c3")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        metrics::observe(&meter, &self.settings.slot, &status);
        let task = tokio::spawn(election::run(self.settings, self.status, stopped));
        RelayHandle { stop, status, task }
    }
}

/// A running relay.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    status: watch::Receiver<RelayStatus>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// The relay's state now.
    #[must_use]
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of state.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<RelayStatus> {
        self.status.clone()
    }

    /// Stops streaming, gives up the leadership and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once, like a killed process: nothing more is published or
    /// acknowledged, the sessions are dropped.
    pub fn abort(&self) {
        self.task.abort();
    }
}
