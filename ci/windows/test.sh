#!/usr/bin/env bash
# The Windows part of CI, end to end (see ci/windows/README.md):
#
#   1. install Wine, mingw-w64 and the Rust target (setup.sh), prepare the Wine prefix;
#   2. clippy for x86_64-pc-windows-gnu, warnings denied;
#   3. the driver's, the server's and the wire's tests, cross-compiled and run under Wine
#      (the server's integration suite runs on the IOCP backend there);
#   4. iocp-server.exe (echo) under Wine, driven over loopback by iocp-load built for Linux,
#      which checks every byte, then stopped with Ctrl+C (a graceful shutdown, exit status 0);
#   5. wait for the wineserver to exit.
#
# Every step is bounded in time. Run from anywhere: bash ci/windows/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never

TARGET=x86_64-pc-windows-gnu
RUNNER=ci/windows/wine-runner.sh
# The linker and the Wine runner for this target (not in .cargo/config.toml: a native Windows GNU
# toolchain must run its programs directly).
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/$RUNNER"
# A Wine prefix of this checkout (made once, ~10 s), so that other Wine users of the machine (a
# `wineserver -k` on the shared default prefix) cannot stop these tests.
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export IOCP_WINEPREFIX="${IOCP_WINEPREFIX:-$TARGET_DIR/wine-prefix}"
PACKAGES=(-p iocp-driver -p iocp-server -p iocp-wire)

step() { printf '\n=== windows: %s\n' "$*"; }

SERVER_PID=""
LOG=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [ -z "$LOG" ] || rm -f -- "$LOG"
}
trap cleanup EXIT

step "toolchain: Wine, mingw-w64, rust target $TARGET"
timeout 900 bash ci/windows/setup.sh
timeout 600 "$RUNNER" --setup

step "cargo clippy --target $TARGET --all-targets -- -D warnings"
timeout 1800 cargo clippy --target "$TARGET" "${PACKAGES[@]}" --all-targets -- -D warnings

step "cargo test --target $TARGET (under Wine)"
# Each test program is killed after 10 minutes, the whole step after 30.
IOCP_WINE_TIMEOUT=600 timeout 1800 cargo test --target "$TARGET" "${PACKAGES[@]}"

step "iocp-server.exe under Wine, driven by iocp-load on Linux"
timeout 1800 cargo build --target "$TARGET" -p iocp-server-app --bin iocp-server
timeout 1800 cargo build -p iocp-load
LOG="$(mktemp)"
IOCP_WINE_TIMEOUT=300 NO_COLOR=1 "$RUNNER" "$TARGET_DIR/$TARGET/debug/iocp-server.exe" \
  echo --addr 127.0.0.1:0 --workers 2 --backend iocp >"$LOG" 2>&1 </dev/null &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 300); do
  ADDR="$(grep -o 'listening on [0-9.]*:[0-9]*' "$LOG" | head -n1 | cut -d' ' -f3 || true)"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  cat "$LOG" >&2
  echo "windows: iocp-server.exe did not start" >&2
  exit 1
fi
grep -m1 'listening on' "$LOG"
# Many small messages, then large ones (partial sends, several WSABUFs per send), every byte
# checked by iocp-load; it exits 1 on a wrong, lost or reordered byte or a closed connection.
timeout 120 "$TARGET_DIR/debug/iocp-load" echo --addr "$ADDR" --connections 200 --size 64 \
  --pipeline 8 --duration 2s
timeout 120 "$TARGET_DIR/debug/iocp-load" echo --addr "$ADDR" --connections 20 --size 200000 \
  --pipeline 2 --duration 2s
# Ctrl+C (Wine turns SIGINT into CTRL_C_EVENT): a graceful shutdown and a clean exit.
kill -INT "$SERVER_PID"
STATUS=0
for _ in $(seq 1 300); do
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
  cat "$LOG" >&2
  echo "windows: iocp-server.exe did not stop within 30 s of Ctrl+C" >&2
  exit 1
fi
wait "$SERVER_PID" || STATUS=$?
SERVER_PID=""
if [ "$STATUS" -ne 0 ] || ! grep -q "console event" "$LOG" || ! grep -q "stopped:" "$LOG"; then
  cat "$LOG" >&2
  echo "windows: Ctrl+C did not shut iocp-server.exe down gracefully (exit status $STATUS)" >&2
  exit 1
fi
grep -m1 "console event" "$LOG"

step "waiting for the wineserver to exit"
"$RUNNER" --wait

step "done"
