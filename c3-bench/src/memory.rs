//! Memory: bytes per L1 entry for a typical ~200-byte value, against moka
//! alone holding the same `Arc` values. Each side is measured in a fresh
//! child process (resident set before and after filling), so neither
//! inherits the other's freed memory.

use std::sync::Arc;

use serde::Serialize;

use crate::Profile;

const ENTRIES: u64 = 100_000;

/// Resident bytes per entry, measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    pub(crate) entries: u64,
    pub(crate) value_json_bytes: usize,
    pub(crate) c3_bytes_per_entry: f64,
    pub(crate) moka_bytes_per_entry: f64,
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Runs in the child: fills one cache, prints bytes per entry.
pub(crate) fn child(kind: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let values: Vec<(String, Profile)> = (0..ENTRIES)
        .map(|i| (format!("user:{i}"), Profile::sample(i)))
        .collect();
    let per_entry = rt.block_on(async {
        match kind {
            "moka" => {
                let before = rss();
                let m: moka::sync::Cache<String, Arc<Profile>> =
                    moka::sync::Cache::new(ENTRIES * 2);
                for (k, v) in &values {
                    m.insert(k.clone(), Arc::new(v.clone()));
                }
                m.run_pending_tasks();
                let used = rss().saturating_sub(before);
                assert_eq!(m.entry_count(), ENTRIES);
                used as f64 / ENTRIES as f64
            }
            _ => {
                let url = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let c3 = c3::C3::builder()
                    .postgres(&url)
                    .schema(crate::SCHEMA)
                    .channel("c3_bench_memory")
                    .l1_max_bytes(1 << 30)
                    .build()
                    .await
                    .expect("node");
                let before = rss();
                for chunk in values.chunks(1000) {
                    let refs: Vec<(&str, Profile)> =
                        chunk.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                    c3.set_many(&refs).await.expect("set_many");
                }
                let used = rss().saturating_sub(before);
                let cached = values
                    .iter()
                    .filter(|(k, _)| c3.is_cached_locally(k))
                    .count();
                assert!(
                    cached as u64 >= ENTRIES * 9 / 10,
                    "only {cached} entries in L1"
                );
                c3.shutdown().await;
                used as f64 / cached as f64
            }
        }
    });
    println!("{per_entry}");
}

fn measure(kind: &str) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args(["--memory-child", kind])
        .output()
        .expect("memory child");
    assert!(
        out.status.success(),
        "memory child {kind} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes per entry")
}

pub(crate) fn run() -> Memory {
    Memory {
        entries: ENTRIES,
        value_json_bytes: serde_json::to_vec(&Profile::sample(0))
            .map(|v| v.len())
            .unwrap_or(0),
        c3_bytes_per_entry: measure("c3"),
        moka_bytes_per_entry: measure("moka"),
    }
}
