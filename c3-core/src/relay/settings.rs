//! What a relay runs with once its builder checked it, and what it reports:
//! the settings, the connection details of its two PostgreSQL sessions, its
//! status, and the backoff it retries with.

use std::time::Duration;

use super::Nats;
use crate::tls;

/// What a relay runs with, once checked.
pub(crate) struct Settings {
    pub(crate) postgres: Postgres,
    pub(crate) nats: Nats,
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) ack_interval: Duration,
    pub(crate) batch_window: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) name: String,
}

/// A relay's state, as it last reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Whether this relay holds the slot's leadership.
    pub leader: bool,
    /// The epoch it publishes in (`None` while not streaming).
    pub epoch: Option<String>,
    /// Epochs started by this relay so far.
    pub epochs: u64,
    /// Slots this relay created (missing, or lost and recreated).
    pub slots_created: u64,
    /// Messages published.
    pub published: u64,
    /// End LSN of the last commit published.
    pub published_lsn: u64,
    /// The position acknowledged to PostgreSQL: NATS confirmed everything
    /// before it.
    pub acked_lsn: u64,
    /// WAL the slot holds back (`pg_current_wal_lsn()` minus its confirmed
    /// position), bytes, as last read by the leader.
    pub slot_lag_bytes: Option<u64>,
    /// How long the slot has held back what it holds back, in ms: the age
    /// of the newest WAL position it has confirmed, among the positions the
    /// leader samples every second — an upper bound on the age of the
    /// oldest unacknowledged change, to within that second; 0 when caught
    /// up. Keeps growing while nothing is acknowledged (NATS down, a relay
    /// stuck), however little is written.
    pub slot_lag_millis: Option<u64>,
    /// The last failure, if streaming is not running.
    pub last_error: Option<String>,
}

/// How the relay reaches PostgreSQL: the leadership session (tokio-postgres,
/// with c3's TLS rules) and the replication session (pgwire-replication).
pub(crate) struct Postgres {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: tokio_postgres_rustls::MakeRustlsConnect,
    replication: pgwire_replication::ReplicationConfig,
}

impl Postgres {
    pub(crate) fn parse(url: &str, name: &str) -> Result<Postgres, String> {
        let (mut config, settings) = tls::parse(url)?;
        let app: String = name.chars().take(63).collect();
        config
            .application_name(&app)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(2))
            .tcp_user_timeout(Duration::from_secs(5));
        let tls_connector = settings.connector(None, "the relay's leadership session")?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        use pgwire_replication::{SslMode as Wire, TlsConfig};
        let mut tls = match settings.mode {
            tls::SslMode::Disable => TlsConfig::disabled(),
            tls::SslMode::Prefer => TlsConfig {
                mode: Wire::Prefer,
                ..TlsConfig::disabled()
            },
            tls::SslMode::Require if settings.root_cert().is_none() => TlsConfig::require(),
            tls::SslMode::Require | tls::SslMode::VerifyCa => {
                TlsConfig::verify_ca(settings.root_cert().map(Into::into))
            }
            tls::SslMode::VerifyFull => {
                TlsConfig::verify_full(settings.root_cert().map(Into::into))
            }
        };
        if let Some((cert, key)) = settings.client_cert() {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        let replication = pgwire_replication::ReplicationConfig::new(
            host,
            user,
            password,
            database,
            "",
            Vec::<String>::new(),
        )
        .with_port(port)
        .with_tls(tls)
        .with_application_name(app);
        Ok(Postgres {
            config,
            tls: tls_connector,
            replication,
        })
    }

    /// The replication session's configuration for `slot`.
    pub(crate) fn replication(
        &self,
        slot: &str,
        publication: &str,
        status_interval: Duration,
    ) -> pgwire_replication::ReplicationConfig {
        let mut c = self.replication.clone();
        c.slot = slot.to_owned();
        c.publication = vec![publication.to_owned()].into();
        // The position is reported this often once raised; on an idle
        // stream keepalives are answered with it too.
        c.with_status_interval(status_interval)
            .with_wakeup_interval(Duration::from_secs(1))
    }
}

/// Exponential backoff with jitter (the fleet's relays must not retry in
/// lockstep).
pub(crate) fn backoff(attempt: u32, (min, max): (Duration, Duration), seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + Duration::from_micros(*seed % (half.as_micros() as u64 + 1))
}
