#!/usr/bin/env bash
# Packages every published crate in dependency order, as `cargo publish`
# would (each package is built from its .crate file against the others),
# and checks the docs build without warnings. Extra arguments go to
# `cargo package`, e.g. `scripts/package.sh --no-verify`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package --workspace --exclude c3-bench --exclude c3-getting-started "$@"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps
