//! # c3-bench: c3 against what users would pick instead, in one run
//!
//! ```text
//! scripts/with-relay-env.sh cargo run -p c3-bench --release   # full run with the relay section
//! cargo run -p c3-bench --release            # full run, under 10 minutes (relay section skipped)
//! cargo run -p c3-bench --release -- --quick # under 2 minutes
//! cargo run -p c3-bench --release -- --only write  # one section, printed, docs untouched
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`, else the local default) and Redis
//! (`REDIS_ADDR`, else `127.0.0.1:6379`) for the baselines. Writes
//! `target/bench/report.json`, `target/bench/report.md` and regenerates
//! `docs/BENCHMARKS.md` with `docs/benchmarks.svg`.
//!
//! ## Layout
//!
//! * `read` — read path: c3 L1/L2 against moka, Redis `GET` and a `SELECT`.
//! * `http` — an axum endpoint without cache, with the layer (L1, L2), and static.
//! * `coherency` — invalidation propagation to N listeners, against Redis pub/sub.
//! * `relay` — the relay transport (logical decoding → NATS) beside LISTEN/NOTIFY,
//!   1 to 128 listeners, on a server with `wal_level = logical`
//!   (`C3_RELAY_DATABASE_URL`, `C3_NATS_URL`: `scripts/with-relay-env.sh` starts both).
//!   `placement` splits the CPUs between the database side and the fan-out
//!   side; `listeners` runs the listener nodes in a child process there;
//!   `floor` measures NATS alone on the same CPUs.
//! * `loader` — `get_or_load` under a 100-way stampede and while the source is down.
//! * `write` — `set` (upsert + notify) against the bare upsert; batching.
//! * `memory` — bytes per L1 entry against moka alone.
//! * `reconnect` — L2 reads after a lost LISTEN connection: warm reconnect
//!   against the full purge.
//! * `report` — machine facts, the Markdown report and the chart.
//! * `stats`, `redis` — latency summaries; a minimal RESP client.

mod coherency;
mod floor;
mod http;
mod listeners;
mod loader;
mod memory;
mod placement;
mod read;
mod reconnect;
mod redis;
mod relay;
mod report;
mod stats;
mod write;

use std::time::Duration;

use c3::{C3, C3Builder};
use serde::{Deserialize, Serialize};

/// Every scenario's shared settings.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) url: String,
    pub(crate) redis: String,
    pub(crate) quick: bool,
    /// Length of one measured series.
    pub(crate) series: Duration,
}

/// The schema every table of the run lives in; dropped at the start and end.
pub(crate) const SCHEMA: &str = "c3_bench";

impl Env {
    /// A c3 node on the bench schema and `channel`, with `l1` bytes of L1.
    pub(crate) fn node(&self, channel: &str, l1: u64) -> C3Builder {
        C3::builder()
            .postgres(&self.url)
            .schema(SCHEMA)
            .channel(channel)
            .l1_max_bytes(l1)
            .pool_size(4)
            .default_ttl(Some(Duration::from_secs(3600)))
    }

    pub(crate) async fn pg(&self) -> tokio_postgres::Client {
        let (config, tls) = c3::core::tls::connect_config(&self.url)
            .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", self.url));
        let (client, conn) = config
            .connect(tls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", self.url));
        tokio::spawn(conn);
        client
    }
}

/// The typical cached value: a user profile of about 200 bytes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Profile {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) bio: String,
}

impl Profile {
    pub(crate) fn sample(id: u64) -> Profile {
        Profile {
            id,
            name: "Ada Lovelace".into(),
            email: "ada.lovelace@example.com".into(),
            bio: "Mathematician and writer, known for her work on Charles Babbage's \
                  proposed mechanical general-purpose computer, the Analytical Engine."
                .into(),
        }
    }
}

/// Drops the bench schema (leftovers of an interrupted run), and creates it
/// again unless `only_drop`.
async fn reset_schema(admin: &tokio_postgres::Client, only_drop: bool) {
    let create = if only_drop {
        String::new()
    } else {
        format!("CREATE SCHEMA {SCHEMA}")
    };
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; {create}"))
        .await
        .expect("bench schema");
}

/// Runs one section and prints its raw figures (for profiling a fix).
async fn run_one(env: &Env, section: &str) {
    let admin = env.pg().await;
    reset_schema(&admin, false).await;
    let out = match section {
        "read" => serde_json::to_string_pretty(&read::run(env).await),
        "http" => {
            let _ = read::run(&Env {
                series: Duration::from_millis(10),
                ..env.clone()
            })
            .await;
            serde_json::to_string_pretty(&http::run(env).await)
        }
        "coherency" => serde_json::to_string_pretty(&coherency::run(env).await),
        "write" => serde_json::to_string_pretty(&write::run(env).await),
        "loader" => serde_json::to_string_pretty(&loader::run(env).await),
        "memory" => serde_json::to_string_pretty(&memory::run()),
        "reconnect" => serde_json::to_string_pretty(&reconnect::run(env).await),
        "relay" => match relay::env() {
            Some((url, nats)) => serde_json::to_string_pretty(&relay::run(env, &url, &nats).await),
            None => {
                eprintln!("{}", relay::SKIPPED);
                std::process::exit(2);
            }
        },
        other => {
            eprintln!(
                "unknown section {other:?}: read, http, coherency, relay, loader, write, memory, reconnect"
            );
            std::process::exit(2);
        }
    };
    println!("{}", out.expect("json"));
    reset_schema(&admin, true).await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(kind) = args.iter().position(|a| a == "--memory-child") {
        // A fresh process per measurement, so one allocator's leftovers do
        // not flatter the other (see `memory`).
        memory::child(args.get(kind + 1).map_or("", String::as_str));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == listeners::FLAG) {
        // The relay section's listener nodes (see `listeners`).
        listeners::child_main(args.get(at + 1).map_or("", String::as_str));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == floor::FLAG) {
        // The NATS floor's subscribers (see `floor`).
        floor::child_main(args.get(at + 1).map_or("", String::as_str));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let env = Env {
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        redis: std::env::var("REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into()),
        quick,
        series: if quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(5)
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = std::time::Instant::now();
    if let Some(section) = only {
        rt.block_on(run_one(&env, &section));
        return;
    }
    let report = rt.block_on(async {
        let admin = env.pg().await;
        reset_schema(&admin, false).await;
        eprintln!("c3-bench: read path");
        let read = read::run(&env).await;
        eprintln!("c3-bench: HTTP");
        let http = http::run(&env).await;
        eprintln!("c3-bench: coherency");
        let coherency = coherency::run(&env).await;
        let relay = match relay::env() {
            Some((url, nats)) => {
                eprintln!("c3-bench: relay transport");
                Some(relay::run(&env, &url, &nats).await)
            }
            None => {
                eprintln!("c3-bench: {}", relay::SKIPPED);
                None
            }
        };
        eprintln!("c3-bench: loading");
        let loading = loader::run(&env).await;
        eprintln!("c3-bench: write cost");
        let write = write::run(&env).await;
        eprintln!("c3-bench: reconnect");
        let reconnect = reconnect::run(&env).await;
        eprintln!("c3-bench: memory");
        let memory = memory::run();
        reset_schema(&admin, true).await;
        report::Report {
            machine: report::machine(),
            quick,
            read,
            http,
            coherency,
            relay,
            loading,
            write,
            reconnect,
            memory,
        }
    });
    let took = started.elapsed();
    if let Err(e) = report::write(&report, took) {
        eprintln!("c3-bench: could not write the report: {e}");
        std::process::exit(1);
    }
    eprintln!("c3-bench: done in {took:?}; docs/BENCHMARKS.md regenerated");
}
