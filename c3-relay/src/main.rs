//! `c3-relay`: the relay as a process. Configured by the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `C3_DATABASE_URL` (else `DATABASE_URL`) | the PostgreSQL to read (a role with `REPLICATION`; `wal_level = logical`; not through a transaction pooler) |
//! | `C3_NATS_URL` | the NATS server(s) |
//! | `C3_NATS_CREDS` / `C3_NATS_NKEY` / `C3_NATS_CA` | NATS credentials file, nkey seed, CA file (TLS) |
//! | `C3_NATS_SUBJECT_PREFIX` | first subject token (default `c3`; nodes must agree) |
//! | `C3_RELAY_SLOT` | the replication slot (default `c3_relay`) |
//!
//! Run one or several: they elect one leader per slot, the others wait
//! hot. Stops on SIGINT or SIGTERM.

use std::time::Duration;

use c3_relay::Relay;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let relay = match Relay::builder().from_env().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("c3-relay: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let handle = relay.spawn();
    let mut status = handle.watch();
    let reporter = tokio::spawn(async move {
        let mut last = (false, None);
        while status.changed().await.is_ok() {
            let s = status.borrow().clone();
            if (s.leader, s.epoch.clone()) != last {
                tracing::info!(leader = s.leader, epoch = ?s.epoch, "relay state");
                last = (s.leader, s.epoch);
            }
        }
    });
    stopped().await;
    tracing::info!("stopping");
    if tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the relay did not stop within 10s");
    }
    reporter.abort();
    std::process::ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
