//! The fan-out floor: NATS alone, without c3, where the relay section runs.
//!
//! The relay series measure write issued → applied on every listener. How
//! much of that is NATS delivering one message to N connections on the
//! fan-out CPUs, and how much is c3? This series answers with no database,
//! no relay and no c3 node: a publisher on the database side sends
//! messages of the relay's shape (its three headers, a payload of a
//! one-write message's size) at the series' rate, and N plain `async-nats`
//! subscribers — one connection each, as each node has — in a child process
//! on the fan-out CPUs note when each arrives. The CPU both sides spend per
//! delivery is what bounds a relay series' tail on the same CPUs.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Env;
use crate::coherency::{mono_ns, pace};
use crate::listeners::Child;
use crate::placement::{Split, cpu_time};
use crate::stats::Samples;

/// The flag that makes this binary the floor's subscriber child.
pub(crate) const FLAG: &str = "--nats-floor-child";

/// The last message of a series.
const END: &[u8] = b"end";

/// One floor series.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Floor {
    pub(crate) listeners: usize,
    pub(crate) target_rate: String,
    pub(crate) achieved_rate: f64,
    pub(crate) deliveries: u64,
    pub(crate) lost: u64,
    /// Published → received.
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    /// CPU of the subscribers' process per delivery.
    pub(crate) subscribers_cpu_us: f64,
    /// CPU of the NATS server per delivery (when it runs on this machine).
    pub(crate) server_cpu_us: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct Spec {
    nats: String,
    subject: String,
    listeners: usize,
}

/// What the child's subscribers received.
#[derive(Serialize, Deserialize)]
struct Received {
    deliveries: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    cpu_us: f64,
}

/// One series: `listeners` subscribers, `rate` messages per second for the
/// env's series length.
pub(crate) async fn run(
    env: &Env,
    nats: &str,
    split: &Split,
    listeners: usize,
    rate: u32,
) -> Floor {
    let subject = format!("c3bench.floor.{listeners}.{}", std::process::id());
    let spec = Spec {
        nats: nats.to_owned(),
        subject: subject.clone(),
        listeners,
    };
    let mut child =
        Child::start_as(split, FLAG, &serde_json::to_string(&spec).expect("spec")).await;
    let client = async_nats::connect(nats).await.expect("NATS for the floor");
    let server_before = split.nats.and_then(cpu_time);
    // A one-write message as the relay sends it: the epoch, sequence and
    // LSN headers, and a payload of that size whose first token is the
    // publish time.
    let body =
        "{\"v\":1,\"written\":[[\"k123456\",\"1765000000000000\"]],\"from\":\"bench-writer\"}";
    let start = Instant::now();
    let mut published = 0u64;
    while start.elapsed() < env.series {
        pace(start, published, Some(rate)).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(c3::core::relay::wire::HEADER_EPOCH, "6f1c2b9e0d3a4c5b");
        headers.insert(
            c3::core::relay::wire::HEADER_SEQ,
            (published + 1).to_string().as_str(),
        );
        headers.insert(c3::core::relay::wire::HEADER_LSN, "0/1A2B3C4D");
        let payload = format!("{} {body}", mono_ns());
        client
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .expect("publish");
        // The relay waits for NATS to confirm each publish (a flush).
        client.flush().await.expect("flush");
        published += 1;
    }
    let elapsed = start.elapsed();
    client.publish(subject, END.into()).await.expect("publish");
    client.flush().await.expect("flush");
    let line = child.answer(&published.to_string()).await;
    let received: Received = serde_json::from_str(&line).expect("the floor child's report");
    let server = server_before
        .zip(split.nats.and_then(cpu_time))
        .map(|(before, after)| after.saturating_sub(before));
    let expected = published * listeners as u64;
    let per = |cpu: f64| cpu / (received.deliveries.max(1) as f64);
    Floor {
        listeners,
        target_rate: format!("{rate}/s"),
        achieved_rate: published as f64 / elapsed.as_secs_f64(),
        deliveries: received.deliveries,
        lost: expected.saturating_sub(received.deliveries),
        p50_us: received.p50_us,
        p99_us: received.p99_us,
        max_us: received.max_us,
        subscribers_cpu_us: per(received.cpu_us),
        server_cpu_us: server.map(|d| per(d.as_secs_f64() * 1e6)),
    }
}

/// The child's side: `spec` is the JSON argument after [`FLAG`].
pub(crate) fn child_main(spec: &str) {
    let spec: Spec = serde_json::from_str(spec).expect("floor spec");
    // One thread, as the listener child has.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..spec.listeners {
            let client = async_nats::connect(spec.nats.as_str())
                .await
                .expect("NATS for a floor subscriber");
            let mut sub = client
                .subscribe(spec.subject.clone())
                .await
                .expect("subscribe");
            client.flush().await.expect("flush");
            tasks.push(tokio::spawn(async move {
                let _client = client;
                let mut lags = Vec::new();
                while let Some(m) = sub.next().await {
                    let now = mono_ns();
                    if m.payload.as_ref() == END {
                        break;
                    }
                    let sent = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|p| p.split(' ').next()?.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        lags.push(now.saturating_sub(sent));
                    }
                }
                lags
            }));
        }
        let cpu_before = cpu_time(std::process::id()).unwrap_or_default();
        println!("ready");
        let mut input =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        let _published = input.next_line().await;
        let mut all = Samples::default();
        // A subscriber that missed the end message would hang the run; its
        // messages count as lost.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for t in tasks {
            if let Ok(Ok(lags)) = tokio::time::timeout_at(deadline, t).await {
                all.0.extend(lags);
            }
        }
        let cpu = cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        let s = all.summary("floor", spec.listeners, Duration::from_secs(1));
        let received = Received {
            deliveries: s.count,
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            max_us: s.max_us,
            cpu_us: cpu.as_secs_f64() * 1e6,
        };
        println!("{}", serde_json::to_string(&received).expect("report"));
    });
}
