#!/usr/bin/env bash
# Vitrine's main job: open a sample document safely and show its pixels.
#
#   tests/demo.sh
#
# First the project's own KVM VMM probes this host, boots a test guest and
# races QEMU on it. Then the guest image is built (cached), the shipped
# example policy explains its decision for a sample 3-page PDF, and
# `vitrine open` renders the PDF in a fresh VM (QEMU backend): only PNG
# pages come back. With $DISPLAY set and an image viewer installed, the
# first page is shown.
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
target=${CARGO_TARGET_DIR:-$REPO/target}

say "building vitrine-vmm (release)"
cargo build --quiet --release --locked -p vitrine-microvm --bin vitrine-vmm
vmm=$target/release/vitrine-vmm

say "vitrine-vmm probe: what this host's KVM can run"
"$vmm" probe

say "vitrine-vmm run --test-guest hello (guest output follows)"
"$vmm" run --test-guest hello --mem-mib 64 --stats

say "the same guest under QEMU -M microvm -accel kvm, and under ours, 20 runs each:"
VITRINE_BENCH_RUNS=20 cargo bench --quiet --locked -p vitrine-microvm --bench boot

say "guest image (shim/image/build.sh: the first run builds a kernel, later runs find it cached)"
VITRINE_IMAGE_DIR=$("$REPO/shim/image/build.sh" | tail -n 1)
export VITRINE_IMAGE_DIR
say "guest image: $VITRINE_IMAGE_DIR"

say "building vitrine and vitrine-policy (release)"
cargo build --quiet --release --locked -p vitrine-daemon --bin vitrine
cargo build --quiet --release --locked -p vitrine-policy --bin vitrine-policy
policy=$REPO/policy/examples/policy.d
sample=$REPO/shim/fixtures/three-pages.pdf
pages=$target/demo-pages

say "vitrine-policy explain: what the example policy decides for $(basename "$sample"), and why"
"$target/release/vitrine-policy" --dir "$policy" explain --action open-file --file "$sample"

say "vitrine open: the policy decides, a fresh VM renders the PDF, only PNG pages come back"
mkdir -p "$pages"
rm -f "$pages"/page-*.png
"$target/release/vitrine" open --policy-dir "$policy" --png "$pages" "$sample"

first=$pages/page-1.png
[[ -f $first ]] || die "vitrine open wrote no $first"
say "the pages of $(basename "$sample"), as pixels: $pages/page-*.png"
if [[ -z ${DISPLAY:-} ]]; then
  say "no \$DISPLAY: open $first with any image viewer"
  exit 0
fi
for viewer in eog feh ristretto gpicview display xdg-open; do
  if command -v "$viewer" >/dev/null; then
    say "showing page 1 with $viewer"
    "$viewer" "$first" >/dev/null 2>&1 &
    disown
    exit 0
  fi
done
say "no image viewer found (eog, feh, ristretto, gpicview, display, xdg-open): open $first yourself"
