#!/usr/bin/env bash
# Vitrine's main job: open a sample document safely and show its pixels.
#
#   tests/demo.sh
#
# First the project's own KVM VMM probes this host, boots a test guest and
# races QEMU on it. Then the guest image is built (cached), the shipped
# example policy explains its decision for a sample 3-page PDF, and
# `vitrine open` asks vitrined (started by D-Bus activation on a private
# bus) to render it in a fresh VM: only its pixels come back, in a viewer
# window where $DISPLAY is set, else as PNG pages.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf '[demo] %s\n' "$*" >&2; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../shim/image/lib/apt.sh
source "$REPO/shim/image/lib/apt.sh"

# dbus: the private session bus the demo starts vitrined on; the X
# libraries are what the viewer window loads at run time.
ensure_packages binutils qemu-system-x86 dbus libxkbcommon-x11-0 libx11-xcb1 libxcursor1 libxrandr2 libxi6
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

say "building vitrined, vitrine, vitrine-viewer and vitrine-policy (release)"
cargo build --quiet --release --locked -p vitrine-daemon --bin vitrined --bin vitrine --bin vitrine-viewer
cargo build --quiet --release --locked -p vitrine-policy --bin vitrine-policy
policy=$REPO/policy/examples/policy.d
sample=$REPO/shim/fixtures/three-pages.pdf
pages=$target/demo-pages

say "vitrine-policy explain: what the example policy decides for $(basename "$sample"), and why"
"$target/release/vitrine-policy" --dir "$policy" explain --action open-file --file "$sample"

# A private session bus for the demo, on which `vitrine` starts vitrined by
# D-Bus activation, as a desktop session would.
bus_dir=$(mktemp -d)
trap 'rm -rf "$bus_dir"' EXIT
mkdir -p "$bus_dir/share/dbus-1/services"
cat >"$bus_dir/share/dbus-1/services/org.vitrine.Sandbox1.service" <<EOF
[D-BUS Service]
Name=org.vitrine.Sandbox1
Exec=$target/release/vitrined --policy-dir $policy --no-watch-downloads
EOF
on_private_bus() { XDG_DATA_DIRS=$bus_dir/share:/usr/share dbus-run-session -- "$@"; }

if [[ -n ${DISPLAY:-} ]]; then
  say "vitrine open: over D-Bus, vitrined asks the policy, a fresh VM renders the PDF, and only its pixels come back, in a window (close it to finish)"
  on_private_bus "$target/release/vitrine" open --wait "$sample"
  exit 0
fi
say "vitrine open --png: no \$DISPLAY, so the pixels come back as PNG pages (vitrined over D-Bus, a fresh VM per file)"
mkdir -p "$pages"
rm -f "$pages"/page-*.png
on_private_bus "$target/release/vitrine" open --png "$pages" "$sample"

first=$pages/page-1.png
[[ -f $first ]] || die "vitrine open wrote no $first"
say "the pages of $(basename "$sample"), as pixels: $(ls "$pages"/page-*.png | tr '\n' ' ')"
