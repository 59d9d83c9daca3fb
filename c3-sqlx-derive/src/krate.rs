//! Where the generated code finds c3-sqlx: `::c3_sqlx` when the crate being
//! compiled depends on c3-sqlx itself, `::c3::sqlx` when it reaches it only
//! through the facade (`c3-cache`, whose library is named `c3`).
//!
//! A derive cannot ask the compiler which crates are in scope, so it reads the
//! manifest of the crate being compiled (`CARGO_MANIFEST_DIR/Cargo.toml`), as
//! cargo leaves it for every build. Cargo rebuilds a crate when its manifest
//! changes, so the answer cannot go out of date. Only dependency keys are read
//! — a line-level scan, not a TOML parser, because the shapes that matter are
//! few: `name = …`, `name.workspace = true`, `[dependencies.name]`, and a
//! renamed `alias = { package = "c3-cache", … }`. Anything else (no manifest,
//! an unusual layout) falls back to `::c3_sqlx`; `#[c3(crate = "…")]` always
//! overrides the guess.

/// The path of c3-sqlx as seen from the crate being compiled.
pub(crate) fn default_path() -> syn::Path {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| std::path::Path::new(&dir).join("Cargo.toml"))
        .and_then(|path| std::fs::read_to_string(path).ok());
    let path = manifest.as_deref().map_or_else(
        || "::c3_sqlx".to_owned(),
        |m| path_in(m).unwrap_or_else(|| "::c3_sqlx".to_owned()),
    );
    syn::parse_str(&path).expect("a path built from a valid crate name")
}

/// The path that reaches c3-sqlx from a crate with this manifest, if its
/// dependencies say: the direct dependency wins over the facade.
fn path_in(manifest: &str) -> Option<String> {
    let deps = dependencies(manifest);
    let named = |package: &str| {
        deps.iter()
            .find(|(_, p)| p == package)
            .map(|(key, _)| key.replace('-', "_"))
    };
    if let Some(direct) = named("c3-sqlx") {
        return Some(format!("::{direct}"));
    }
    // The facade's library is `c3` unless the dependency is renamed.
    named("c3-cache").map(|key| match key.as_str() {
        "c3_cache" => "::c3::sqlx".to_owned(),
        renamed => format!("::{renamed}::sqlx"),
    })
}

/// `(key, package)` for every dependency in every dependency table.
fn dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // Some(None): inside a dependencies table; Some(Some(key)): inside
    // `[dependencies.key]`; None: elsewhere.
    let mut table: Option<Option<String>> = None;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_matches(|c| c == '[' || c == ']').trim();
            table = dependency_table(header);
            if let Some(Some(key)) = &table {
                found.push((key.clone(), key.clone()));
            }
            continue;
        }
        let Some((lhs, rhs)) = line.split_once('=') else {
            continue;
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        match &table {
            Some(None) => {
                let key = unquote(lhs.split('.').next().unwrap_or(lhs));
                let package = package_in(rhs).unwrap_or_else(|| key.clone());
                found.push((key, package));
            }
            Some(Some(key)) if lhs == "package" => {
                if let Some(entry) = found.iter_mut().rev().find(|(k, _)| k == key) {
                    entry.1 = unquote(rhs);
                }
            }
            _ => {}
        }
    }
    found
}

/// Whether a table header names a dependency table (`dependencies`,
/// `dev-dependencies`, `target.'cfg(…)'.dependencies`, …), and the
/// dependency it is about for `dependencies.name`.
fn dependency_table(header: &str) -> Option<Option<String>> {
    const KINDS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    // The last one or two dotted parts decide; a target's cfg may hold dots
    // only inside quotes, which never end a header.
    let parts: Vec<&str> = header.rsplitn(3, '.').collect();
    match parts.as_slice() {
        [kind, ..] if KINDS.contains(kind) => Some(None),
        [key, kind, ..] if KINDS.contains(kind) => Some(Some(unquote(key))),
        _ => None,
    }
}

/// `package = "…"` inside an inline table, if there is one.
fn package_in(rhs: &str) -> Option<String> {
    let inline = rhs.strip_prefix('{')?;
    inline.split(',').find_map(|field| {
        let (k, v) = field.split_once('=')?;
        (k.trim() == "package").then(|| unquote(v.trim().trim_end_matches('}')))
    })
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned()
}

#[cfg(test)]
mod tests {
    use super::path_in;

    #[test]
    fn a_direct_dependency_is_named_directly() {
        let m = "[package]\nname = \"app\"\n\n[dependencies]\nc3-cache = \"0.1\"\nc3-sqlx = { version = \"0.1\" }\n";
        assert_eq!(path_in(m).as_deref(), Some("::c3_sqlx"));
        let m = "[dependencies]\nc3-sqlx.workspace = true\n";
        assert_eq!(path_in(m).as_deref(), Some("::c3_sqlx"));
    }

    #[test]
    fn the_facade_alone_is_reached_as_c3() {
        for m in [
            "[dependencies]\nc3-cache = \"0.1\" # the facade\nsqlx = \"0.9\"\n",
            "[dependencies]\nc3-cache = { version = \"0.1\", features = [\"otlp\"] }\n",
            "[dependencies]\nc3-cache.workspace = true\n",
            "[dependencies.c3-cache]\nversion = \"0.1\"\n",
            "[target.'cfg(unix)'.dependencies]\nc3-cache = \"0.1\"\n",
        ] {
            assert_eq!(path_in(m).as_deref(), Some("::c3::sqlx"), "{m}");
        }
    }

    #[test]
    fn a_renamed_dependency_is_reached_by_its_new_name() {
        let m = "[dependencies]\ncache = { package = \"c3-cache\", version = \"0.1\" }\n";
        assert_eq!(path_in(m).as_deref(), Some("::cache::sqlx"));
        let m = "[dependencies.repo]\npackage = \"c3-sqlx\"\nversion = \"0.1\"\n";
        assert_eq!(path_in(m).as_deref(), Some("::repo"));
    }

    #[test]
    fn other_tables_and_unrelated_crates_say_nothing() {
        // A feature or a package field named like the crates is not a dependency.
        let m = "[package]\nname = \"c3-cache\"\n[features]\nc3-sqlx = []\n[dependencies]\nsqlx = \"0.9\"\n";
        assert_eq!(path_in(m), None);
    }
}
