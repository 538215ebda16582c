#!/usr/bin/env bash
# Builds the Debian package: a stripped release binary, its manual page and completions, then
# `cargo deb`. Prints the .deb's path. Needs cargo-deb (`cargo install cargo-deb --locked`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release --locked -p headroom --bin headroom >&2
out="$TARGET/release/package"
mkdir -p "$out"
bin="$TARGET/release/headroom"
"$bin" man >"$out/headroom.1"
"$bin" completions bash >"$out/headroom.bash"
"$bin" completions zsh >"$out/_headroom"
"$bin" completions fish >"$out/headroom.fish"
cargo deb -p headroom --no-build --locked 2>&1 | tail -1
