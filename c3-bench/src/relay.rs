//! Past one PostgreSQL's NOTIFY: propagation and the writer's commit rate
//! with 1 to 128 listeners, through the relay (logical decoding → NATS)
//! and through LISTEN/NOTIFY, on the same server in the same run.
//!
//! Needs a PostgreSQL with `wal_level = logical` (`C3_RELAY_DATABASE_URL`)
//! and a NATS server (`C3_NATS_URL`); `scripts/with-relay-env.sh` starts
//! both. Listeners are nodes in one process: with NOTIFY each holds a
//! LISTEN session, with the relay a NATS subscription (and heartbeats
//! through the WAL). They run in a child process on the other half of the
//! CPUs, with the NATS server, while PostgreSQL, the writer and the relay
//! keep the first half (see `placement`: a fleet's listeners are other
//! machines).
//!
//! Each series has four writers on the writer node, at full speed (the
//! commit rate) or together at 1,000 writes/s (propagation at that rate).

use serde::Serialize;

use crate::Env;
use crate::coherency::{Propagation, SEVERAL, Transport, c3_run, rate_name};

/// The relay series' table (a table keeps one transport).
pub(crate) const TABLE: &str = "relay_cache";

/// The relay section: every series, and the writer's commit rate at each
/// listener count relative to one listener.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RelayReport {
    /// Where the processes ran (see `placement`).
    pub(crate) placement: String,
    pub(crate) series: Vec<Propagation>,
    /// `(system, listeners, commits/s at full speed, share of its rate at 1 listener)`.
    pub(crate) commit_rates: Vec<(String, usize, f64, f64)>,
    /// NATS alone on the fan-out CPUs, at each listener count and rate
    /// (split placement only; see `floor`).
    pub(crate) floor: Vec<crate::floor::Floor>,
}

/// Where the relay series run, if the environment names it.
pub(crate) fn env() -> Option<(String, String)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Some((var("C3_RELAY_DATABASE_URL")?, var("C3_NATS_URL")?))
}

pub(crate) async fn run(env: &Env, url: &str, nats: &str) -> RelayReport {
    let env = Env {
        url: url.to_owned(),
        ..env.clone()
    };
    let admin = env.pg().await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}",
            s = crate::SCHEMA
        ))
        .await
        .expect("bench schema on the relay's server");
    let mut relay = c3::core::relay::Relay::builder()
        .postgres(url)
        .nats(c3::core::relay::Nats::new(nats))
        .slot("c3_bench");
    // C3_BENCH_RELAY_WINDOW_MS: the relay's batch window, to see what
    // fewer, larger messages do to the fan-out.
    if let Some(ms) = std::env::var("C3_BENCH_RELAY_WINDOW_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        relay = relay.batch_window(std::time::Duration::from_millis(ms));
    }
    let relay = relay.build().expect("relay").spawn();
    // C3_BENCH_LISTENERS=128 C3_BENCH_TRANSPORTS=relay C3_BENCH_RATES=1000:
    // one series alone, e.g. to profile it.
    let list = |var: &str| -> Option<Vec<String>> {
        std::env::var(var)
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
    };
    let fanouts: Vec<usize> = list("C3_BENCH_LISTENERS")
        .map(|l| l.iter().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| {
            if env.quick {
                vec![1, 8, 32]
            } else {
                vec![1, 2, 8, 32, 128]
            }
        });
    let rates: Vec<Option<u32>> = list("C3_BENCH_RATES")
        .map(|l| l.iter().map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![None, Some(1000)]);
    let transports: Vec<Transport<'_>> = [Transport::Relay { nats }, Transport::Listen]
        .into_iter()
        .filter(|t| {
            list("C3_BENCH_TRANSPORTS").is_none_or(|l| {
                l.iter()
                    .any(|x| (x == "relay") == matches!(t, Transport::Relay { .. }))
            })
        })
        .collect();
    // The database side and the fan-out side on separate CPUs, when this
    // machine allows it (see `placement`).
    let backend: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let nats_port = nats
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(4222);
    let mut split = crate::placement::Split::plan();
    if let Ok(s) = &mut split
        && let Err(why) = s.apply(u32::try_from(backend).unwrap_or(0), nats_port)
    {
        s.undo();
        split = Err(why);
    }
    let placement = match &split {
        Ok(s) => format!(
            "split: PostgreSQL, the writer and the relay on CPU {}; the NATS server and the \
             listener nodes (a child process) on CPU {}",
            s.database, s.fanout
        ),
        Err(why) => format!("shared: every process on every CPU ({why})"),
    };
    eprintln!("  placement: {placement}");
    let mut series = Vec::new();
    let mut run = 1000;
    for &n in &fanouts {
        for &rate in &rates {
            for &t in &transports {
                run += 1;
                eprintln!(
                    "  {n} listeners at {}, {:?}",
                    rate_name(rate),
                    matches!(t, Transport::Relay { .. })
                );
                let child = split.as_ref().ok();
                series.push(c3_run(&env, n, rate, (SEVERAL, t), run, child).await);
            }
        }
    }
    relay.shutdown().await;
    let mut floor = Vec::new();
    if let Ok(s) = &split
        && transports
            .iter()
            .any(|t| matches!(t, Transport::Relay { .. }))
    {
        for &n in &fanouts {
            for rate in rates.iter().flatten() {
                eprintln!("  NATS alone: {n} subscribers at {rate}/s");
                floor.push(crate::floor::run(&env, nats, s, n, *rate).await);
            }
        }
    }
    if let Ok(s) = &mut split {
        s.undo();
    }
    let _ = admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE; SELECT pg_drop_replication_slot('c3_bench')",
            crate::SCHEMA
        ))
        .await;
    let commit_rates = commit_rates(&series);
    RelayReport {
        placement,
        series,
        commit_rates,
        floor,
    }
}

/// Full-speed commit rate per system and listener count, against the same
/// system's rate with one listener.
fn commit_rates(series: &[Propagation]) -> Vec<(String, usize, f64, f64)> {
    let full: Vec<&Propagation> = series.iter().filter(|p| p.target_rate == "max").collect();
    full.iter()
        .map(|p| {
            let one = full
                .iter()
                .find(|q| q.system == p.system && q.listeners == 1)
                .map_or(p.achieved_rate, |q| q.achieved_rate);
            (
                p.system.clone(),
                p.listeners,
                p.achieved_rate,
                p.achieved_rate / one,
            )
        })
        .collect()
}

/// Why the relay series did not run.
pub(crate) const SKIPPED: &str = "relay series skipped: set C3_RELAY_DATABASE_URL (wal_level = logical) \
and C3_NATS_URL, or run through scripts/with-relay-env.sh";
