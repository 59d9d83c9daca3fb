//! One home for each idea, kept: no import cycle between the files of
//! c3-core or of c3-tower. A cycle means two files that cannot be understood
//! one without the other; new code that adds one should move the shared
//! piece to a file both can import. And PostgreSQL stays behind c3-core's
//! store and feed: only start-up (and lib.rs's re-export of `tls`) reaches
//! into `postgres/`.
//!
//! The graph is read from the sources, one node per file (a `mod.rs` is its
//! own node, apart from its children): every `crate::…`, `super::…`,
//! `self::…` path and every path through a child module a file declares
//! (`mod flight;` … `flight::Flight`), in `use` lists too, outside unit-test
//! modules, resolved to the longest module it names — and a path through a
//! re-export (`crate::Error`, `super::C3Body`) to the file the item lives
//! in, so a cycle cannot hide behind the short spelling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`loader::flight`) → source text.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            let text = std::fs::read_to_string(&path).expect("read module");
            // Unit tests may reach anywhere; they are not the design.
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .to_owned();
            out.insert(p.join("::"), text);
        }
    }
}

/// The child modules a file declares (`mod a;`, `pub(crate) mod b;`).
fn children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_suffix(';')?;
            let name = rest.rsplit_once("mod ")?.1;
            let vis = rest.rsplit_once("mod ")?.0.trim();
            (vis.is_empty() || vis.starts_with("pub"))
                .then(|| name.trim().to_owned())
                .filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'))
        })
        .collect()
}

/// `code` without its `pub use …;` and `pub(…) use …;` statements.
fn without_reexports(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("pub") {
        let after = &rest[at + 3..];
        let vis_end = if after.starts_with('(') {
            after.find(')').map_or(0, |e| e + 1)
        } else {
            0
        };
        let starts_word = at == 0 || rest[..at].ends_with(|c: char| c.is_whitespace());
        if starts_word && after[vis_end..].starts_with(" use ") {
            out.push_str(&rest[..at]);
            rest = &after[after.find(';').map_or(after.len(), |e| e + 1)..];
        } else {
            out.push_str(&rest[..at + 3]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Joins a base module and a path (`a::b` + `c::d`).
fn join(base: &str, path: &str) -> String {
    if base.is_empty() {
        path.to_owned()
    } else {
        format!("{base}::{path}")
    }
}

/// The paths a module's code names: `crate::a::b`, `super::c`, `self::d`,
/// `child::e` for each child module it declares, and the items of `{…}`
/// lists after them.
fn paths(module: &str, text: &str) -> Vec<String> {
    let parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let parent = parent[..parent.len().saturating_sub(1)].join("::");
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    // A re-export (`pub use body::C3Body;`) is not a use: who names the item
    // through it is resolved to where it lives (see `graph`).
    let code = without_reexports(&code);
    let mut out = Vec::new();
    let mut roots = vec![
        ("crate::".to_owned(), String::new(), false),
        ("super::".to_owned(), parent, false),
        ("self::".to_owned(), module.to_owned(), false),
    ];
    // `flight::Flight` in loader/mod.rs names loader/flight.rs.
    for child in children(text) {
        roots.push((format!("{child}::"), join(module, &child), true));
    }
    for (root, base, keep_root) in &roots {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root) {
            // `$crate::` in macros, `a_super::` and `x::child::` are not
            // paths of ours.
            let before = rest[..at].chars().last();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            let full = match (*keep_root, path.is_empty()) {
                (true, true) => base.clone(),
                (true, false) => format!("{base}::{path}"),
                (false, _) => join(base, path),
            };
            if rest[end..].starts_with('{') {
                let list = &rest[end + 1..rest[end..].find('}').map_or(end, |e| end + e)];
                for item in list.split(',') {
                    let item = item.split_whitespace().next().unwrap_or("");
                    if !item.is_empty() {
                        out.push(format!("{full}::{item}"));
                    }
                }
            }
            out.push(full);
        }
    }
    out
}

/// What lib.rs re-exports: item name → the module it comes from
/// (`pub use error::{Error, ErrorKind};` → `Error` → `error`).
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(at) = stmt.find("pub use ") else {
            continue;
        };
        let path = stmt[at + "pub use ".len()..].trim();
        let (module, items) = match path.find('{') {
            Some(open) => (
                path[..open].trim_end_matches("::"),
                path[open + 1..].trim_end_matches('}').to_owned(),
            ),
            None => match path.rfind("::") {
                Some(sep) => (&path[..sep], path[sep + 2..].to_owned()),
                None => continue,
            },
        };
        for item in items.split(',') {
            // `A as B` is re-exported as `B`.
            let name = item.split_whitespace().last().unwrap_or("");
            if !name.is_empty() {
                out.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    out
}

#[test]
fn reexports_are_read_from_lib_rs() {
    let r = reexports(
        "pub use error::{Error, ErrorKind};\npub use backend::memory::MemoryServer;\nuse x::Y;",
    );
    assert_eq!(r["Error"], "error");
    assert_eq!(r["ErrorKind"], "error");
    assert_eq!(r["MemoryServer"], "backend::memory");
    assert!(!r.contains_key("Y"), "only public re-exports");
}

/// File → the files it imports from, for the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut sources = BTreeMap::new();
    modules(src, &[], &mut sources);
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    // Item → the module it lives in, for every module's `pub use`s
    // (`cache::C3Body` → `cache::body`).
    let mut moved: BTreeMap<String, String> = BTreeMap::new();
    for (module, text) in &sources {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for (item, from) in reexports(text) {
            let from = if let Some(abs) = from.strip_prefix("crate::") {
                abs.to_owned()
            } else if let Some(up) = from.strip_prefix("super::") {
                join(parent, up)
            } else {
                join(module, from.strip_prefix("self::").unwrap_or(&from))
            };
            if names.contains(&from) {
                moved.insert(join(module, &item), from);
            }
        }
    }
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        let n = (0..=parts.len())
            .rev()
            .find(|n| names.contains(&parts[..*n].join("::")))?;
        let found = parts[..n].join("::");
        // `crate::Error`, `super::C3Body`: through the re-export to where
        // the item lives.
        match parts.get(n) {
            Some(item) => Some(moved.get(&join(&found, item)).cloned().unwrap_or(found)),
            None => Some(found),
        }
    };
    sources
        .iter()
        .map(|(module, text)| {
            let targets = paths(module, text)
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|t| t != module && !t.is_empty())
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// The files on an import cycle: those that reach themselves.
fn on_cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges[from].iter().cloned().collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m.clone()) {
                stack.extend(edges.get(m.as_str()).into_iter().flatten().cloned());
            }
        }
        seen
    };
    edges
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .cloned()
        .collect()
}

fn crate_src(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name).join("src")
}

fn assert_no_cycle(name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let edges = graph(&crate_src(name));
    let cycles = on_cycles(&edges);
    assert!(
        cycles.is_empty(),
        "{name}: files on an import cycle: {cycles:?}; their imports: {:?}",
        cycles.iter().map(|m| (m, &edges[m])).collect::<Vec<_>>()
    );
    edges
}

#[test]
fn reexports_are_not_uses() {
    let code = "pub use body::C3Body;\npub(crate) use sql::{a, b};\nuse key::K;\nfn republish() {}";
    assert_eq!(
        without_reexports(code),
        "\n\nuse key::K;\nfn republish() {}"
    );
}

#[test]
fn a_loop_through_a_parent_file_is_seen() {
    let mut sources = BTreeMap::new();
    sources.insert(
        "loader".to_owned(),
        "mod flight;\nuse flight::Flight;\npub struct LoadOptions;".to_owned(),
    );
    sources.insert(
        "loader::flight".to_owned(),
        "use super::LoadOptions;".to_owned(),
    );
    let edges: BTreeMap<String, BTreeSet<String>> = sources
        .iter()
        .map(|(m, t)| {
            let names = ["loader", "loader::flight"];
            let targets = paths(m, t)
                .iter()
                .filter_map(|p| {
                    names
                        .iter()
                        .rev()
                        .find(|n| p == *n || p.starts_with(&format!("{n}::")))
                        .map(|n| (*n).to_owned())
                })
                .filter(|n| n != m)
                .collect();
            (m.clone(), targets)
        })
        .collect();
    assert_eq!(on_cycles(&edges).len(), 2, "{edges:?}");
}

#[test]
fn c3_core_has_no_import_cycle() {
    let edges = assert_no_cycle("c3-core");
    assert!(
        edges["loader"].contains("cache"),
        "the reader must see the loader's use of C3: {:?}",
        edges["loader"]
    );
}

#[test]
fn c3_tower_has_no_import_cycle() {
    let edges = assert_no_cycle("c3-tower");
    assert!(
        edges["cache::service"].contains("cache::lookup"),
        "the reader must see the service's use of lookup: {:?}",
        edges["cache::service"]
    );
}

/// The engine talks to `store::Store` and to the notifications the LISTEN
/// task applies; PostgreSQL is started in one place.
#[test]
fn only_start_up_reaches_into_postgres() {
    let edges = graph(&crate_src("c3-core"));
    let outside: Vec<_> = edges
        .iter()
        .filter(|(m, _)| !m.starts_with("postgres") && !m.is_empty() && *m != "start")
        .filter(|(_, to)| {
            to.iter()
                .any(|t| t == "postgres" || t.starts_with("postgres::"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "files outside postgres/ importing it: {outside:?}"
    );
    assert!(edges["start"].contains("postgres"), "{:?}", edges["start"]);
}
