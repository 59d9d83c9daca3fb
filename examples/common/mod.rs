//! Helpers shared by the examples: flags, the database URL, and printing it
//! without its password. (A folder without `main.rs`, so Cargo does not take
//! it for an example of its own.)

#![allow(dead_code)]

/// The local default used when `DATABASE_URL` is not set.
pub(crate) const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `DATABASE_URL`, else the local default; `true` when it was set explicitly.
pub(crate) fn database_url() -> (String, bool) {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, true),
        _ => (DEFAULT_DATABASE_URL.to_owned(), false),
    }
}

/// The value of `--name VALUE` or `--name=VALUE`; `default` when absent.
///
/// # Errors
///
/// A flag given without a value, or a flag this program does not know.
pub(crate) fn flag(
    args: &[String],
    name: &str,
    known: &[&str],
    default: Option<&str>,
) -> Result<Option<String>, String> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (a.as_str(), None),
        };
        if !known.contains(&key) {
            return Err(format!(
                "unknown argument {a:?} (known: {})",
                known.join(", ")
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| format!("{key} needs a value"))?
            }
        };
        if key == name {
            found = Some(value);
        }
        i += 1;
    }
    Ok(found.or_else(|| default.map(str::to_owned)))
}

/// `url` with any password replaced, for printing.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
