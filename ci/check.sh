#!/usr/bin/env bash
# Formatting, lints, the lean library builds, then the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --all-targets --all-features -- -D warnings

# The library as a dependency sees it: no dev-dependencies, each feature on
# its own. A separate target dir keeps these from evicting the test build.
lean=(env CARGO_TARGET_DIR=target/lean RUSTFLAGS="--cfg ldk_splice_lean")
echo "== lean library: cargo check --no-default-features"
"${lean[@]}" cargo check --no-default-features
for feature in bdk node devchain; do
    echo "== lean library: cargo check --no-default-features --features $feature"
    "${lean[@]}" cargo check --no-default-features --features "$feature"
done

echo "== default features pull no async runtime, HTTP stack or C++ consensus library"
if cargo tree -e normal --prefix none | grep -E '^(tokio|axum|hyper|bitcoinconsensus) '; then
    echo "the default build depends on the crates above" >&2
    exit 1
fi

# `--cfg ldk_splice_lean` (set for every lean step, so they share one
# build) drops the crate's dev-dependency on itself (which
# turns node and devchain on for examples and tests), so the unit tests run
# with exactly no features, on an in-memory KVStoreSync.
echo "== unit tests without features: cargo test --no-default-features --lib"
"${lean[@]}" cargo test --no-default-features --lib

echo "== tests (README: cargo test)"
cargo test

# A short seeded run (debug build, already made by the tests); the README
# names the long one.
echo "== fuzz the liquidity protocol: 100 000 inputs, seed 1"
cargo run --example fuzz-liquidity -- --iterations 100000 --seed 1
