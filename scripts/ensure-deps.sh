#!/usr/bin/env bash
# Checks (and, as root on Debian/Ubuntu, installs) what building raftjob needs:
#   - cargo and rustc (cannot be installed by this script: see https://rustup.rs)
#   - libclang: the RocksDB crate generates its Rust bindings with bindgen at build time
#   - a C++ compiler (g++ or clang++): the RocksDB crate compiles RocksDB itself
#
# Idempotent and fast when everything is present (it never calls apt then).
# Usage: scripts/ensure-deps.sh        (called by `make dev`, `make test`, ...)
set -euo pipefail

PKGS="libclang-dev clang"

say() { printf 'ensure-deps: %s\n' "$*"; }
die() { printf 'ensure-deps: %s\n' "$*" >&2; exit 1; }

# --- Rust toolchain --------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        die "cargo is installed in $HOME/.cargo/bin but that directory is not on PATH; run: . \"\$HOME/.cargo/env\""
    fi
    die "cargo/rustc not found. This script cannot install Rust; install it with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or run: . \"\$HOME/.cargo/env\") and try again."
fi

# --- libclang (bindgen) ----------------------------------------------------------
find_libclang() {
    local f
    # An explicit LIBCLANG_PATH (honoured by bindgen) wins.
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        for f in "$LIBCLANG_PATH"/libclang*.so*; do
            case "$f" in *libclang-cpp*) continue ;; esac
            [ -e "$f" ] && { echo "$f"; return 0; }
        done
    fi
    for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-*.so* \
             /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-*.so*; do
        # libclang-cpp is LLVM's C++ library, not the C API bindgen loads.
        case "$f" in *libclang-cpp*) continue ;; esac
        [ -e "$f" ] && { echo "$f"; return 0; }
    done
    if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then
        f=$( { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } \
             | awk '/libclang(-[0-9.]+)?\.so/ && !/libclang-cpp/ {print $NF; exit}')
        [ -n "$f" ] && { echo "$f"; return 0; }
    fi
    return 1
}

find_cxx() {
    local c
    for c in "${CXX:-}" g++ clang++ c++; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { echo "$c"; return 0; }
    done
    return 1
}

missing=()
libclang=$(find_libclang) || missing+=("libclang")
cxx=$(find_cxx) || missing+=("a C++ compiler")

installed=""
if [ "${#missing[@]}" -gt 0 ]; then
    what=${missing[0]}
    [ "${#missing[@]}" -gt 1 ] && what="$what and ${missing[1]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        die "missing: $what. No apt-get here: install libclang (LLVM/clang development files) and a C++ compiler with your package manager, then try again."
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "missing: $what. Install with:
    sudo apt-get update && sudo apt-get install -y $PKGS
then run this again."
    fi
    say "missing: $what."
    echo "Installing libclang-dev (needed by RocksDB's Rust bindings)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $PKGS </dev/null >/dev/null
    installed=" (installed: $PKGS)"
    libclang=$(find_libclang) || die "libclang still not found after installing $PKGS"
    cxx=$(find_cxx) || die "no C++ compiler found after installing $PKGS"
fi

cargo_v=$(cargo --version 2>/dev/null | awk '{print $2}')
rustc_v=$(rustc --version 2>/dev/null | awk '{print $2}')
say "ok: cargo $cargo_v, rustc $rustc_v, libclang $libclang, C++ compiler $cxx$installed"
