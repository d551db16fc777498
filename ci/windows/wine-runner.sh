#!/usr/bin/env bash
# Cargo runner for x86_64-pc-windows-gnu: runs a Windows .exe under Wine.
#
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$PWD/ci/windows/wine-runner.sh \
#     cargo test --target x86_64-pc-windows-gnu
#   ci/windows/wine-runner.sh path/to/prog.exe ARGS # by hand
#
# On first use it creates a dedicated 64-bit Wine prefix and installs into it a
# stand-in bcryptprimitives.dll (built from processprng_stub.c), without which
# Wine 8 cannot start any Rust program (exit 53). Both steps run under a flock,
# so any number of test binaries may start at once; later runs only check two
# stamp files and exec wine.
#
# Other modes (not used by cargo):
#   --setup    create the prefix and install the stub, then exit
#   --wait     wait (at most 120 s) until this prefix's wineserver has exited
#              (end of CI); kills it and exits 1 if something still runs
#   --kill     kill this prefix's wineserver and every process in it
#   --prefix   print the prefix path
#
# Environment:
#   IOCP_WINEPREFIX   prefix to use (default: $HOME/.wine-iocp)
#   IOCP_WINE_TIMEOUT seconds after which the program is killed (default: none)
#   WINEDEBUG         passed on; default -all (try err+all when a run exits 53)
#   WINEDLLOVERRIDES  passed on; default "mscoree,mshtml=;winemenubuilder.exe=d"
#                     (no Mono/Gecko install prompts, no desktop menu files in ~)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
STUB_SRC="$SCRIPT_DIR/processprng_stub.c"
STUB_DEF="$SCRIPT_DIR/processprng_stub.def"
MINGW_CC="${IOCP_MINGW_CC:-x86_64-w64-mingw32-gcc}"

die() {
  printf 'wine-runner: %s\n' "$*" >&2
  exit 127
}

if [ -n "${IOCP_WINEPREFIX:-}" ]; then
  PREFIX="$IOCP_WINEPREFIX"
elif [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ -w "$HOME" ]; then
  PREFIX="$HOME/.wine-iocp"
else
  PREFIX="$SCRIPT_DIR/../../target/wine-prefix"
fi
case "$PREFIX" in
  /*) ;;
  *) PREFIX="$PWD/$PREFIX" ;;
esac
PREFIX="${PREFIX%/}"
if [ -z "$PREFIX" ] || [ "$PREFIX" = "${HOME:-}" ]; then
  die "refusing Wine prefix '$PREFIX'"
fi

export WINEPREFIX="$PREFIX"
export WINEARCH=win64
export WINEDEBUG="${WINEDEBUG:--all}"
DEFAULT_OVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-$DEFAULT_OVERRIDES}"

command -v wine >/dev/null 2>&1 || die "wine not found; run ci/windows/setup.sh"

READY_STAMP="$PREFIX/.iocp-prefix-ready"
STUB_STAMP="$PREFIX/.iocp-stub"
SYSTEM32="$PREFIX/drive_c/windows/system32"
STUB_DLL="$SYSTEM32/bcryptprimitives.dll"

# What the stub stamp must say for the installed stub to be current.
stub_wanted() {
  cat "$STUB_SRC" "$STUB_DEF" | sha256sum | cut -d' ' -f1
}

prefix_is_ready() {
  [ -f "$READY_STAMP" ] || return 1
  [ -f "$STUB_STAMP" ] || return 1
  local have
  have="$(cat "$STUB_STAMP")"
  # "builtin": this Wine ships its own bcryptprimitives.dll; nothing to install.
  [ "$have" = builtin ] || [ "$have" = "$(stub_wanted)" ]
}

create_prefix() {
  # A prefix without the ready stamp is a leftover of an interrupted run.
  if [ -e "$PREFIX" ]; then
    wineserver -k >/dev/null 2>&1 9>&- || true
    rm -rf -- "$PREFIX"
  fi
  mkdir -p -- "$PREFIX"
  # wineboot prints a harmless "failed to open ...syswow64\rundll32.exe" on a
  # 64-bit-only Wine; only its exit code matters.
  local log="$PREFIX/.iocp-wineboot.log"
  # 9>&-: the wineserver started here must not inherit (and keep) the lock.
  if ! WINEDLLOVERRIDES="$DEFAULT_OVERRIDES" timeout 300 wineboot --init >"$log" 2>&1 9>&-; then
    cat "$log" >&2
    die "wineboot --init failed for $PREFIX"
  fi
  # Let the prefix's wineserver write the registry and exit before we go on.
  timeout 120 wineserver -w 9>&- || true
  [ -d "$SYSTEM32" ] || die "wineboot left no $SYSTEM32"
  # A bcryptprimitives.dll put there by wineboot is Wine's own (Wine >= 9).
  if [ -e "$STUB_DLL" ]; then
    echo builtin >"$STUB_STAMP"
  fi
  touch "$READY_STAMP"
}

install_stub() {
  command -v "$MINGW_CC" >/dev/null 2>&1 || die "$MINGW_CC not found; run ci/windows/setup.sh"
  local tmp
  tmp="$(mktemp -d)"
  if ! "$MINGW_CC" -O2 -shared -s -Wall -Wextra -Werror \
    -o "$tmp/bcryptprimitives.dll" "$STUB_SRC" "$STUB_DEF" -ladvapi32; then
    rm -rf -- "$tmp"
    die "could not build the ProcessPrng stub"
  fi
  # Same-filesystem rename: a wine process starting meanwhile sees old or new.
  cp -- "$tmp/bcryptprimitives.dll" "$STUB_DLL.tmp.$$"
  mv -f -- "$STUB_DLL.tmp.$$" "$STUB_DLL"
  rm -rf -- "$tmp"
  stub_wanted >"$STUB_STAMP"
}

prepare() {
  prefix_is_ready && return 0
  mkdir -p -- "$(dirname -- "$PREFIX")"
  exec 9>>"$PREFIX.lock"
  flock -w 600 9 || die "timed out waiting for $PREFIX.lock"
  if ! [ -f "$READY_STAMP" ]; then
    create_prefix
  fi
  if ! prefix_is_ready; then
    install_stub
  fi
  flock -u 9
  exec 9>&-
}

case "${1:-}" in
  "")
    die "usage: wine-runner.sh PROGRAM.exe [ARGS...] | --setup | --wait | --kill | --prefix"
    ;;
  --setup)
    prepare
    printf 'wine-runner: prefix ready: %s (stub: %s)\n' "$PREFIX" "$(cat "$STUB_STAMP")"
    exit 0
    ;;
  --wait)
    [ -d "$PREFIX" ] || exit 0
    # Normally returns ~3 s after the last Windows process exits. If one is
    # still running after 120 s (a leaked server or child), kill it and fail.
    if ! timeout 120 wineserver -w; then
      echo "wine-runner: wineserver still busy after 120 s; killing it" >&2
      wineserver -k >/dev/null 2>&1 || true
      exit 1
    fi
    exit 0
    ;;
  --kill)
    [ -d "$PREFIX" ] || exit 0
    wineserver -k >/dev/null 2>&1 || true
    exit 0
    ;;
  --prefix)
    printf '%s\n' "$PREFIX"
    exit 0
    ;;
esac

prepare

if [ -n "${IOCP_WINE_TIMEOUT:-}" ]; then
  exec timeout --kill-after=10 "$IOCP_WINE_TIMEOUT" wine "$@"
fi
exec wine "$@"
