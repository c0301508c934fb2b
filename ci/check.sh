#!/usr/bin/env bash
# Formatting, lints, then the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --all-targets --all-features -- -D warnings

echo "== tests (README: cargo test)"
cargo test
