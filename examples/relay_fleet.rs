//! A relay-mode fleet in one process: N nodes that hold no LISTEN session,
//! each embedding a relay (one leads, the others stand by), hearing every
//! write through logical decoding and NATS (docs/PROTOCOL.md §6).
//!
//! ```text
//! scripts/with-relay-env.sh cargo run --features relay --example relay_fleet -- --nodes 8
//! ```
//!
//! `scripts/with-relay-env.sh` starts a throwaway PostgreSQL with
//! `wal_level = logical` and a `nats-server`, and sets `DATABASE_URL`,
//! `C3_NATS_URL` and `C3_TRANSPORT=relay` for the command. Flags: `--nodes N`
//! (default 8), `--writes N` (default 200).

use std::time::{Duration, Instant};

use c3::C3;
use c3::core::ListenerState;
use c3::core::relay::Relay;

fn flag(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name} needs a positive number")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes = flag(&args, "--nodes", 8)?;
    let writes = flag(&args, "--writes", 200)?;
    if std::env::var("C3_NATS_URL").is_err() {
        return Err("C3_NATS_URL is not set: run through scripts/with-relay-env.sh".into());
    }
    let mut fleet = Vec::new();
    for i in 0..nodes {
        // C3_TRANSPORT=relay and C3_NATS_URL make the node a relay-mode
        // node; each also runs a relay, and the relays elect one leader.
        let node = C3::builder()
            .from_env()
            .node_id(format!("node-{i}"))
            .embedded_relay(Relay::builder().name(format!("relay-in-node-{i}")))
            .build()
            .await?;
        fleet.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .iter()
        .any(|n| n.listener_state() != ListenerState::Listening)
    {
        if Instant::now() > deadline {
            return Err("the nodes did not hear their heartbeats through the relay in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{nodes} nodes, no LISTEN session, heartbeats through WAL → relay → NATS: all up");

    // Each write on one node; then every node serves it as soon as the
    // invalidation reached it (until then, its L1 may still answer the
    // previous value — never an older one).
    let mut lags = Vec::with_capacity(writes);
    let mut regressions = 0u64;
    for i in 0..writes as u64 {
        let writer = &fleet[i as usize % nodes];
        let t = Instant::now();
        writer.set("counter", &i).await?;
        for node in &fleet {
            loop {
                match node.get::<u64>("counter").await?.map(|v| *v) {
                    Some(v) if v == i => break,
                    Some(v) if i > 0 && v + 1 == i => {}
                    other => {
                        regressions += 1;
                        eprintln!(
                            "{} served {other:?} while write {i} was committed",
                            node.node_id()
                        );
                    }
                }
                if t.elapsed() > Duration::from_secs(5) {
                    return Err(
                        format!("{} did not hear write {i} within 5 s", node.node_id()).into(),
                    );
                }
                tokio::task::yield_now().await;
            }
        }
        lags.push(t.elapsed());
    }
    lags.sort();
    let p = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
    println!(
        "{writes} writes, each read back by all {nodes} nodes ({regressions} older than the previous write); \
         write → every node serving it: p50 {:?}, p99 {:?}",
        p(0.5),
        p(0.99)
    );
    let gaps: u64 = fleet.iter().map(|n| n.stats().relay_gaps).sum();
    println!("relayed messages found missing by the nodes: {gaps}");
    for node in fleet {
        node.shutdown().await;
    }
    Ok(())
}
