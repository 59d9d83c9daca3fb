//! The report: JSON for machines, Markdown for people, one SVG chart, and
//! the targets the issue set, each with its measured figure.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::coherency::Propagation;
use crate::memory::Memory;
use crate::stats::Summary;
use crate::write::{Batching, WriteCost};

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) quick: bool,
    pub(crate) read: Vec<Summary>,
    pub(crate) http: Vec<Summary>,
    pub(crate) coherency: Vec<Propagation>,
    /// The relay transport beside NOTIFY (`None`: no logical server and NATS).
    pub(crate) relay: Option<crate::relay::RelayReport>,
    pub(crate) loading: crate::loader::Loading,
    pub(crate) write: (Vec<WriteCost>, Batching),
    pub(crate) reconnect: Vec<crate::reconnect::Outage>,
    pub(crate) memory: Memory,
}

/// Where the numbers come from.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) os: String,
    pub(crate) postgres: String,
    pub(crate) redis: String,
    pub(crate) date: String,
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned());
    let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        os: command("uname", &["-sr"]),
        postgres: command("psql", &[&url, "-Atc", "SHOW server_version"]),
        redis: command("redis-server", &["--version"])
            .split_whitespace()
            .find(|w| w.starts_with("v="))
            .map_or_else(String::new, |v| v.trim_start_matches("v=").to_owned()),
        date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn mean_ns(s: &Summary) -> f64 {
    s.workers as f64 * 1e9 / s.ops_per_s.max(1e-9)
}

fn find<'a>(list: &'a [Summary], name: &str, workers: usize) -> Option<&'a Summary> {
    list.iter()
        .find(|s| s.name.starts_with(name) && s.workers == workers)
}

/// (target, measured, met) rows.
fn targets(r: &Report) -> Vec<(String, String, Option<bool>)> {
    let mut t = Vec::new();
    if let (Some(c3), Some(moka)) = (find(&r.read, "c3 L1", 1), find(&r.read, "moka", 1)) {
        let x = mean_ns(c3) / mean_ns(moka);
        // Each operation here is timed on its own (two clock reads) and the
        // c3 one clones its handle into the future: the 1.2× target is held
        // by criterion (`cargo bench --bench read_path`), which times loops.
        t.push((
            "L1 hit within 1.5× the bare moka get (per-op timing; criterion `read_path`: ≤ 1.2×)"
                .into(),
            format!("{:.0} ns vs {:.0} ns: {x:.2}×", mean_ns(c3), mean_ns(moka)),
            Some(x <= 1.5),
        ));
    }
    let (st, l1, un) = (
        r.http.iter().find(|s| s.name.starts_with("static")),
        r.http.iter().find(|s| s.name.contains("L1")),
        r.http.iter().find(|s| s.name.starts_with("no cache")),
    );
    if let (Some(st), Some(l1), Some(un)) = (st, l1, un) {
        let of_static = l1.ops_per_s / st.ops_per_s;
        let over_uncached = l1.ops_per_s / un.ops_per_s;
        t.push((
            "HTTP L1-hit throughput ≥ 90% of the static ceiling".into(),
            format!(
                "{:.0} vs {:.0} req/s: {:.0}%",
                l1.ops_per_s,
                st.ops_per_s,
                of_static * 100.0
            ),
            Some(of_static >= 0.9),
        ));
        t.push((
            "HTTP L1-hit throughput ≥ 10× the uncached endpoint".into(),
            format!(
                "{:.0} vs {:.0} req/s: {over_uncached:.1}×",
                l1.ops_per_s, un.ops_per_s
            ),
            Some(over_uncached >= 10.0),
        ));
    }
    for (n, limit) in [(8, 3000.0), (32, 5000.0)] {
        // The series that drove the rate asked, if one did (several writers
        // where one could not); else the single writer's.
        let runs = || {
            r.coherency.iter().filter(|p| {
                p.system.starts_with("c3") && p.listeners == n && p.target_rate == "1000/s"
            })
        };
        let p = runs()
            .find(|p| p.achieved_rate >= 950.0)
            .or_else(|| runs().next());
        t.push((
            format!(
                "propagation p99 ≤ {} ms at 1,000 writes/s with {n} listeners",
                limit / 1000.0
            ),
            // Met only at the rate asked: the writer must have achieved at
            // least 95 % of it.
            p.map_or_else(
                || "not run (--quick)".into(),
                |p| {
                    format!(
                        "p99 {:.2} ms at an achieved {:.0} writes/s ({} writer{})",
                        p.p99_us / 1000.0,
                        p.achieved_rate,
                        p.writers,
                        if p.writers == 1 { "" } else { "s" }
                    )
                },
            ),
            p.map(|p| p.p99_us <= limit && p.achieved_rate >= 950.0),
        ));
    }
    if let Some(w) = r.write.0.iter().find(|w| w.writers == 16) {
        t.push((
            "`set` throughput ≥ 0.85× the plain upsert at 16 writers".into(),
            format!(
                "{:.0} vs {:.0} writes/s: {:.2}×",
                w.c3_set.ops_per_s, w.plain_upsert.ops_per_s, w.ratio
            ),
            Some(w.ratio >= 0.85),
        ));
    }
    for w in &r.write.0 {
        let x = w.c3_set_unlogged.ops_per_s / w.c3_set.ops_per_s.max(1e-9);
        t.push((
            format!(
                "`set` on an unlogged table ≥ 3× a logged one at {} writers",
                w.writers
            ),
            format!(
                "{:.0} vs {:.0} writes/s: {x:.1}×",
                w.c3_set_unlogged.ops_per_s, w.c3_set.ops_per_s
            ),
            Some(x >= 3.0),
        ));
    }
    if let Some(w) = r.write.0.iter().find(|w| w.writers == 16) {
        t.push((
            "`set` on an unlogged table ≥ 0.5× Redis SET + PUBLISH at 16 writers".into(),
            w.redis_set_publish.as_ref().map_or_else(
                || "Redis not reachable".into(),
                |redis| {
                    format!(
                        "{:.0} vs {:.0} writes/s: {:.2}×",
                        w.c3_set_unlogged.ops_per_s,
                        redis.ops_per_s,
                        w.c3_set_unlogged.ops_per_s / redis.ops_per_s.max(1e-9)
                    )
                },
            ),
            w.redis_set_publish
                .as_ref()
                .map(|redis| w.c3_set_unlogged.ops_per_s >= 0.5 * redis.ops_per_s),
        ));
    }
    let stale: u64 = r.coherency.iter().filter_map(|p| p.stale_reads).sum();
    let checked: u64 = r.coherency.iter().filter_map(|p| p.reads_checked).sum();
    t.push((
        "zero stale reads after delivery".into(),
        format!("{stale} stale in {checked} reads checked"),
        Some(stale == 0 && checked > 0),
    ));
    match &r.relay {
        None => t.push((
            "relay: commit rate at 128 listeners ≥ 90 % of 1; p99 ≤ 5 ms at 1,000 writes/s to 128"
                .into(),
            crate::relay::SKIPPED.into(),
            None,
        )),
        Some(relay) => {
            let rate = relay
                .commit_rates
                .iter()
                .find(|(sys, n, _, _)| sys.contains("relay") && *n == 128);
            t.push((
                "relay: writer commit rate at 128 listeners ≥ 90 % of its rate at 1".into(),
                rate.map_or_else(
                    || "not run (--quick)".into(),
                    |(_, _, per_s, share)| format!("{per_s:.0} commits/s, {:.0} %", share * 100.0),
                ),
                rate.map(|(_, _, _, share)| *share >= 0.9),
            ));
            let p = relay.series.iter().find(|p| {
                p.system.contains("relay") && p.listeners == 128 && p.target_rate == "1000/s"
            });
            t.push((
                "relay: propagation p99 ≤ 5 ms at 1,000 writes/s to 128 listeners".into(),
                p.map_or_else(
                    || "not run (--quick)".into(),
                    |p| {
                        let floor = relay
                            .floor
                            .iter()
                            .find(|f| f.listeners == 128 && f.target_rate == "1000/s")
                            .map_or_else(String::new, |f| {
                                format!(
                                    " (NATS alone on the same CPUs, no c3: p99 {:.2} ms)",
                                    f.p99_us / 1000.0
                                )
                            });
                        format!(
                            "p99 {:.2} ms at an achieved {:.0} writes/s{floor}",
                            p.p99_us / 1000.0,
                            p.achieved_rate
                        )
                    },
                ),
                p.map(|p| p.p99_us <= 5000.0 && p.achieved_rate >= 950.0),
            ));
        }
    }
    t
}

fn markdown(r: &Report, took: Duration) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# c3 benchmarks\n");
    let _ = writeln!(
        md,
        "Regenerate everything on this page (about {} minutes; `--quick` takes under 2) — the wrapper starts the \
         PostgreSQL with `wal_level = logical` and the NATS server the relay section needs, and every section \
         runs on that server:\n\n```sh\nscripts/with-relay-env.sh cargo run -p c3-bench --release\n```\n",
        if r.quick {
            2
        } else {
            (took.as_secs() / 60).max(1)
        }
    );
    let _ = writeln!(
        md,
        "Last run: {} on {} ({} cores, {} GiB, {}), PostgreSQL {}, Redis {}{}. \
         Absolute times on a 2-core machine are noisy; compare rows of one run.\n",
        m.date,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.os,
        m.postgres,
        m.redis,
        if r.quick { ", **quick mode**" } else { "" }
    );
    let _ = writeln!(md, "![read path latency](benchmarks.svg)\n");
    let _ = writeln!(
        md,
        "## Targets\n\n| target | measured | met |\n|---|---|---|"
    );
    for (name, got, met) in targets(r) {
        let mark = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(md, "| {name} | {got} | {mark} |");
    }
    let table = |md: &mut String, title: &str, rows: &[Summary], unit: &str| {
        let _ = writeln!(
            md,
            "\n## {title}\n\n| series | workers | {unit}/s | p50 µs | p99 µs |\n|---|---|---|---|---|"
        );
        for s in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2} | {:.2} |",
                s.name, s.workers, s.ops_per_s, s.p50_us, s.p99_us
            );
        }
    };
    table(&mut md, "Read path (~200-byte value)", &r.read, "ops");
    table(
        &mut md,
        "HTTP over loopback (16 requests in flight)",
        &r.http,
        "req",
    );
    let _ = writeln!(
        md,
        "\n## Invalidation propagation\n\nFrom the writer issuing a write (so including its commit) to the listener \
         applying it; the last lag column counts from the writer seeing its commit acknowledged instead. \
         One writer, or several on the writer node where one could not drive the rate asked (their writes \
         share commits and notifications); `max` is as fast as they can commit.\n\n\
         | system | listeners | writers | target | achieved/s | deliveries | lost | p50 µs | p99 µs | max µs | p99 after ack µs | stale reads |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &r.coherency {
        let stale = stale_cell(p);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {stale} |",
            p.system,
            p.listeners,
            p.writers,
            p.target_rate,
            p.achieved_rate,
            p.deliveries,
            p.lost,
            p.p50_us,
            p.p99_us,
            p.max_us,
            p.p99_after_ack_us
        );
    }
    relay_section(&mut md, r.relay.as_ref());
    let l = &r.loading;
    let _ = writeln!(
        md,
        "\n## Cache-aside loading\n\n{} concurrent `get_or_load` calls of one cold key (a 20 ms source): \
         {} loader call(s), all answered in {:.1} ms. With the source failing past the TTL, \
         within the fail-safe window: {:.0} answers/s, p50 {:.1} µs, p99 {:.1} µs, and {} calls reached the \
         failing source (the breaker opened, then kept it quiet).",
        l.stampede_callers,
        l.stampede_loader_calls,
        l.stampede_all_answered_ms,
        l.fail_safe.ops_per_s,
        l.fail_safe.p50_us,
        l.fail_safe.p99_us,
        l.loader_calls_while_down
    );
    let _ = writeln!(
        md,
        "\n## Write cost of coherency\n\n`set` is one statement: the upsert and its `pg_notify`. Unlogged: the same on a table \
         created with `Durability::Unlogged`. Redis: `SET` and `PUBLISH` pipelined on one connection per writer.\n\n\
         | writers | c3 `set` writes/s | c3 `set`, unlogged | plain upsert | Redis SET+PUBLISH | set/upsert | unlogged/logged | unlogged/Redis | set p99 µs | unlogged p99 µs |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for w in &r.write.0 {
        let redis = w.redis_set_publish.as_ref();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {} | {:.0} | {:.0} |",
            w.writers,
            w.c3_set.ops_per_s,
            w.c3_set_unlogged.ops_per_s,
            w.plain_upsert.ops_per_s,
            redis.map_or_else(|| "n/a".into(), |r| format!("{:.0}", r.ops_per_s)),
            w.ratio,
            w.c3_set_unlogged.ops_per_s / w.c3_set.ops_per_s.max(1e-9),
            redis.map_or_else(
                || "n/a".into(),
                |r| format!("{:.2}", w.c3_set_unlogged.ops_per_s / r.ops_per_s.max(1e-9))
            ),
            w.c3_set.p99_us,
            w.c3_set_unlogged.p99_us
        );
    }
    let b = &r.write.1;
    let _ = writeln!(
        md,
        "\nBatching, one writer: {:.0} keys/s one per transaction, {:.0} keys/s {} per transaction (`set_many`).",
        b.single_keys_per_s, b.batched_keys_per_s, b.batch
    );
    let _ = writeln!(
        md,
        "\n## After a lost LISTEN connection\n\nOne node with a full L1 loses its LISTEN backend (terminated; it reconnects \
         after its backoff) while another node rewrites 1 % of the keys; two readers read random keys throughout. \
         Counted from the moment the node listens again (`C3_WARM_RECONNECT`, see PROTOCOL.md §4.1).\n\n\
         | mode | L1 entries | keys changed | outage ms | L1 entries kept | window s | L2 reads in the window | L1 hit ratio in the window |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for o in &r.reconnect {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {:.1} | {} | {:.3} |",
            o.mode,
            o.entries,
            o.changed,
            o.outage_ms,
            o.kept,
            o.window_s,
            o.l2_reads,
            o.l1_hit_ratio
        );
    }
    let mem = &r.memory;
    let _ = writeln!(
        md,
        "\n## Memory\n\n{} entries of a {}-byte (JSON) value: c3 L1 {:.0} bytes per entry, moka alone {:.0} bytes per entry \
         (resident set growth in a fresh process each).",
        mem.entries, mem.value_json_bytes, mem.c3_bytes_per_entry, mem.moka_bytes_per_entry
    );
    md
}

/// A horizontal bar chart of read-path latency (mean per operation, one
/// worker), on a log scale so nanoseconds and milliseconds share an axis.
fn svg(r: &Report) -> String {
    let rows: Vec<(&str, f64)> = r
        .read
        .iter()
        .filter(|s| s.workers == 1)
        .map(|s| (s.name.as_str(), mean_ns(s)))
        .collect();
    let (w, left, bar_h, gap) = (760.0, 230.0, 26.0, 10.0);
    let h = 60.0 + rows.len() as f64 * (bar_h + gap);
    let scale = |ns: f64| (ns.max(10.0).log10() - 1.0) / 5.0 * (w - left - 90.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">Read path: mean time per operation, one worker (log scale)</text>\n"
    );
    for (i, (name, ns)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar_h + gap);
        let label = if *ns >= 1000.0 {
            format!("{:.1} µs", ns / 1000.0)
        } else {
            format!("{ns:.0} ns")
        };
        let fill = if name.starts_with("c3") {
            "#2b7bb9"
        } else {
            "#999999"
        };
        let _ = write!(
            s,
            "<text x=\"10\" y=\"{ty}\">{name}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{fill}\"/>\n<text x=\"{lx:.1}\" y=\"{ty}\">{label}</text>\n",
            ty = y + 18.0,
            bw = scale(*ns).max(1.0),
            lx = left + scale(*ns).max(1.0) + 6.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A propagation series' stale-read check, as a table cell.
fn stale_cell(p: &Propagation) -> String {
    match (p.stale_reads, p.reads_checked) {
        (Some(s), Some(c)) => format!("{s} / {c} checked"),
        _ => "n/a".into(),
    }
}

/// The relay transport and LISTEN/NOTIFY side by side, on one server.
fn relay_section(md: &mut String, relay: Option<&crate::relay::RelayReport>) {
    let _ = writeln!(
        md,
        "\n## Past one PostgreSQL's NOTIFY: the relay transport\n\nThe same propagation measure, on a \
         server with `wal_level = logical`: through the relay (commit → logical decoding → relay → NATS → \
         node; PROTOCOL.md §6) and through LISTEN/NOTIFY, in the same run. Four writers on the writer node, \
         at full speed (the commit rate) or together at 1,000 writes/s; listeners are full c3 nodes in \
         one process (NATS subscribers, or LISTEN sessions). In a fleet the listeners run on other \
         machines; here, when the machine has two CPUs or more, the database side (PostgreSQL with its \
         backends, the writer node, the relay) keeps one half of the CPUs and the fan-out side (the NATS \
         server and the listeners' process) the other, so that the writer's commit rate shows what each \
         transport costs the database rather than how much CPU 128 subscribers take from it \
         (`C3_BENCH_SPLIT=0` shares every CPU). Run it alone with \
         `scripts/with-relay-env.sh cargo run -p c3-bench --release -- --only relay`.\n"
    );
    let Some(relay) = relay else {
        let _ = writeln!(md, "Not run: {}.", crate::relay::SKIPPED);
        return;
    };
    let _ = writeln!(md, "Placement in this run — {}.\n", relay.placement);
    if relay.placement.starts_with("split") {
        let _ = writeln!(
            md,
            "At full write speed the writers saturate the database's half; the walsender decoding the \
             slot and the relay share it, so the relay's propagation at `max` shows that backlog (every \
             write still delivered, none stale), not the transport's latency. The commit rate is that \
             series' measure; latency is measured at 1,000 writes/s.\n"
        );
    }
    let _ = writeln!(
        md,
        "| transport | listeners | target | achieved/s | deliveries | lost | p50 µs | p99 µs | max µs | stale reads |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &relay.series {
        let stale = stale_cell(p);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {stale} |",
            p.system,
            p.listeners,
            p.target_rate,
            p.achieved_rate,
            p.deliveries,
            p.lost,
            p.p50_us,
            p.p99_us,
            p.max_us
        );
    }
    floor_table(md, &relay.floor);
    let _ = writeln!(
        md,
        "\nWriter commit rate at full speed, against the same transport's rate with one listener:\n\n\
         | transport | listeners | commits/s | of 1 listener |\n|---|---|---|---|"
    );
    for (system, n, per_s, share) in &relay.commit_rates {
        let _ = writeln!(
            md,
            "| {system} | {n} | {per_s:.0} | {:.0} % |",
            share * 100.0
        );
    }
}

/// NATS alone on the fan-out CPUs: the floor under the relay's propagation.
fn floor_table(md: &mut String, floor: &[crate::floor::Floor]) {
    if floor.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nThe floor under those numbers: NATS alone on the same CPUs — no database, no relay, no c3. A \
         publisher on the database side sends messages of the relay's shape (its three headers, a \
         one-write payload) at the rate, waiting for each flush as the relay does; plain `async-nats` \
         subscribers, one connection each as each node has, run in a child process on the fan-out CPUs. \
         Published → received, and the CPU each side spends per delivery; *fan-out busy* is both \
         together at the achieved rate, as a share of one CPU (`floor`).\n\n\
         | subscribers | target | achieved/s | deliveries | lost | p50 µs | p99 µs | max µs | subscribers µs CPU/delivery | server µs CPU/delivery | fan-out busy |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in floor {
        let server = f
            .server_cpu_us
            .map_or_else(|| "—".to_owned(), |c| format!("{c:.1}"));
        let busy = (f.subscribers_cpu_us + f.server_cpu_us.unwrap_or(0.0))
            * f.achieved_rate
            * f.listeners as f64
            / 1e6;
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {server} | {:.0} % |",
            f.listeners,
            f.target_rate,
            f.achieved_rate,
            f.deliveries,
            f.lost,
            f.p50_us,
            f.p99_us,
            f.max_us,
            f.subscribers_cpu_us,
            busy * 100.0
        );
    }
}

pub(crate) fn write(r: &Report, took: Duration) -> std::io::Result<()> {
    let root = root();
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    let md = markdown(r, took);
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(root.join("docs").join("BENCHMARKS.md"), &md)?;
    std::fs::write(root.join("docs").join("benchmarks.svg"), svg(r))?;
    println!("{md}");
    Ok(())
}
