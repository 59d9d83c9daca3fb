//! README.md's code cannot drift: every ```rust block appears, line for
//! line (indentation aside), in `examples/readme.rs`, which CI compiles; and
//! the dependency lines it gives name the versions this workspace builds
//! with.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The README's fenced blocks tagged `lang` (exactly), as trimmed lines.
fn blocks(readme: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(Vec::new()),
            (Some(_), Some(_)) => out.push(current.take().unwrap()),
            (Some(b), None) => b.push(line.trim().to_owned()),
            _ => {}
        }
    }
    out
}

#[test]
fn every_rust_block_of_the_readme_is_compiled_by_the_readme_example() {
    let readme = read("README.md");
    let example: Vec<String> = read("examples/readme.rs")
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let rust = blocks(&readme, "rust");
    assert!(rust.len() >= 5, "found only {} rust blocks", rust.len());
    assert!(
        !readme.contains("```rust,"),
        "a README block tagged rust,… would escape this check: tag it rust"
    );
    for block in rust {
        let found = example
            .windows(block.len())
            .any(|w| w.iter().zip(&block).all(|(a, b)| a == b));
        assert!(
            found,
            "this README block is not in examples/readme.rs (copy it there, verbatim):\n{}",
            block.join("\n")
        );
    }
}

/// `name = "x.y"` or `name = { version = "x.y", … }` in a TOML line.
fn version_of(line: &str) -> Option<(String, String)> {
    let (name, rest) = line.split_once('=')?;
    let rest = rest.trim();
    let quoted = if rest.starts_with('{') {
        rest.split("version").nth(1)?.split('"').nth(1)?
    } else {
        rest.split('"').nth(1)?
    };
    Some((name.trim().to_owned(), quoted.to_owned()))
}

#[test]
fn the_readmes_dependency_lines_match_the_workspace() {
    let readme = read("README.md");
    let manifest = read("Cargo.toml");
    let toml = blocks(&readme, "toml");
    let deps = toml
        .iter()
        .find(|b| b.iter().any(|l| l == "[dependencies]"))
        .expect("a ```toml block with [dependencies] in README.md");
    let ours = read("c3-core/Cargo.toml");
    let our_version = ours
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_owned())
        .or_else(|| {
            manifest
                .lines()
                .skip_while(|l| *l != "[workspace.package]")
                .find_map(|l| l.strip_prefix("version = \""))
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .expect("the workspace version");
    for line in deps
        .iter()
        .filter(|l| l.contains('=') && !l.starts_with('#'))
    {
        let (name, wanted) = version_of(line).unwrap_or_else(|| panic!("unreadable: {line}"));
        let built = if name == "c3-cache" || name == "c3-sqlx" {
            our_version.clone()
        } else {
            manifest
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}="))
                })
                .find_map(|l| version_of(l).map(|(_, v)| v))
                .unwrap_or_else(|| panic!("{name} is not a workspace dependency"))
        };
        assert!(
            built.starts_with(&wanted)
                || wanted.split('.').zip(built.split('.')).all(|(a, b)| a == b),
            "README says {name} = {wanted}, the workspace builds with {built}"
        );
    }
}

/// The downstream crate `examples/getting-started` depends on exactly what the
/// README lists (its `c3-cache` line adds only the `path` to this checkout), so
/// the service built from the README is built from its dependency lines too.
#[test]
fn the_getting_started_crate_uses_the_readmes_dependency_lines() {
    let readme = read("README.md");
    let toml = blocks(&readme, "toml");
    let listed: Vec<String> = toml
        .iter()
        .find(|b| b.iter().any(|l| l == "[dependencies]"))
        .expect("a ```toml block with [dependencies] in README.md")
        .iter()
        .filter(|l| l.contains('='))
        .map(|l| {
            l.replace(
                "c3-cache = \"0.1\"",
                "c3-cache = { version = \"0.1\", path = \"../..\" }",
            )
        })
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .collect();
    let manifest = read("examples/getting-started/Cargo.toml");
    let used: Vec<String> = manifest
        .lines()
        .skip_while(|l| *l != "[dependencies]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| l.contains('='))
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .collect();
    assert_eq!(
        used, listed,
        "examples/getting-started/Cargo.toml vs README.md"
    );
}
