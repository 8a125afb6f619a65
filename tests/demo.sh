#!/usr/bin/env bash
# Vitrine's main job, as far as it exists today: the project's own KVM VMM
# probes this host, then boots a test guest and reports its speed and size
# beside QEMU on the same guest.
#
#   tests/demo.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf '[demo] %s\n' "$*" >&2; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../shim/image/lib/apt.sh
source "$REPO/shim/image/lib/apt.sh"

ensure_packages binutils qemu-system-x86
command -v cargo >/dev/null ||
  die "cargo is not installed: install a Rust toolchain >= 1.85 (rustup) and run again"

say "building vitrine-vmm (release)"
cargo build --quiet --release --locked -p vitrine-microvm --bin vitrine-vmm
vmm=${CARGO_TARGET_DIR:-$REPO/target}/release/vitrine-vmm

say "vitrine-vmm probe: what this host's KVM can run"
"$vmm" probe

say "vitrine-vmm run --test-guest hello (guest output follows)"
"$vmm" run --test-guest hello --mem-mib 64 --stats

say "the same guest under QEMU -M microvm -accel kvm, and under ours, 20 runs each:"
VITRINE_BENCH_RUNS=20 cargo bench --quiet --locked -p vitrine-microvm --bench boot
