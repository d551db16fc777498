#!/usr/bin/env bash
# Install what is needed to cross-compile the workspace for x86_64-pc-windows-gnu
# and run its tests under Wine (see ci/windows/README.md).
#
# Idempotent: every step checks first and is skipped when already done.
# Needs root (or sudo) for apt-get on a fresh Debian 12 machine.
set -euo pipefail

log() { printf 'ci/windows/setup.sh: %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

TARGET=x86_64-pc-windows-gnu
APT_PACKAGES=(wine wine64 gcc-mingw-w64-x86-64-posix)

# --- Debian packages: Wine (64-bit only) and the mingw-w64 cross compiler -----------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]} (about 1 GiB, a few minutes)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed: ${missing[*]}"
else
  log "Debian packages already installed: ${APT_PACKAGES[*]}"
fi

# The posix-threads flavour of mingw-w64 is the one Rust's windows-gnu target expects.
if command -v update-alternatives >/dev/null 2>&1; then
  for tool in gcc g++; do
    alt="x86_64-w64-mingw32-$tool"
    if [ -e "/usr/bin/$alt-posix" ] && update-alternatives --query "$alt" >/dev/null 2>&1; then
      $SUDO update-alternatives --set "$alt" "/usr/bin/$alt-posix" >/dev/null 2>&1 || true
    fi
  done
fi

for tool in wine wineserver x86_64-w64-mingw32-gcc; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/lib/wine/$tool" ]; then
    log "ERROR: $tool not found after install" >&2
    exit 1
  fi
done

# --- Rust target ---------------------------------------------------------------------------
if rustup target list --installed | grep -qx "$TARGET"; then
  log "rust target already installed: $TARGET"
else
  log "adding rust target $TARGET"
  rustup target add "$TARGET" >/dev/null 2>&1
  log "added rust target $TARGET"
fi

log "wine: $(wine --version 2>/dev/null || /usr/lib/wine/wine64 --version)"
log "mingw: $(x86_64-w64-mingw32-gcc --version | head -n1)"
log "done; run tests with: cargo test --target $TARGET"
