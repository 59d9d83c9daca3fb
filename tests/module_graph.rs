//! One home for each idea, kept: no import cycle between c3-core's modules
//! except `C3` (cache.rs) ↔ its builder. A cycle means two modules that
//! cannot be understood one without the other; new code that adds one should
//! move the shared piece to a module both can import.
//!
//! The graph is read from the sources: every `crate::…` and `super::…` path
//! (in `use` lists too) outside unit-test modules, resolved to the longest
//! module it names, per file — and a path through a crate-root re-export
//! (`crate::Error`, re-exported by lib.rs from `error`) to the module the
//! item lives in, so a cycle cannot hide behind the short spelling.

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

/// The paths a module's code names: `crate::a::b`, `super::c`, and the
/// items of `{…}` lists after them.
fn paths(module: &str, text: &str) -> Vec<String> {
    let parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let parent = parent[..parent.len().saturating_sub(1)].join("::");
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for (root, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root) {
            // `$crate::` in macros and `a_super::` are not paths of ours.
            let before = rest[..at].chars().last();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            let full = if base.is_empty() {
                path.to_owned()
            } else {
                format!("{base}::{path}")
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

#[test]
fn no_import_cycle_but_c3_and_its_builder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    modules(&src, &[], &mut sources);
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    let roots = reexports(&sources[""]);
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        let found = (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| names.contains(m));
        // `crate::Error`: through lib.rs to where `Error` lives.
        match (found.as_deref(), parts.first()) {
            (None | Some(""), Some(item)) => roots.get(*item).cloned().or(found),
            _ => found,
        }
    };
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &sources {
        let targets = paths(module, text)
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|t| t != module && !t.is_empty())
            .collect();
        edges.insert(module, targets);
    }
    assert!(
        edges["loader"].contains("cache"),
        "the reader must see the loader's use of C3: {:?}",
        edges["loader"]
    );
    // Modules on a cycle: those that reach themselves.
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
    let on_cycles: BTreeSet<&str> = edges
        .keys()
        .copied()
        .filter(|m| reaches(m).contains(*m))
        .collect();
    let allowed: BTreeSet<&str> = ["builder", "cache"].into();
    assert!(
        on_cycles.is_subset(&allowed),
        "modules on an import cycle: {on_cycles:?}; edges: {:?}",
        on_cycles.iter().map(|m| (m, &edges[m])).collect::<Vec<_>>()
    );
}
