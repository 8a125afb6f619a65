#!/usr/bin/env bash
# Runs every Vitrine test on this machine, installing what they need first.
#
#   tests/run.sh            packages, guest image (cached), fmt, clippy,
#                           fuzzing (5.5 min), cargo test
#
# Debian 12 as root (or with sudo). The guest image is cached under
# ~/.cache/vitrine keyed by its inputs, so only the first run builds a kernel.
# The last line printed is cargo test's own summary.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf '[test] %s\n' "$*" >&2; }
die() { printf '[test] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../shim/image/lib/apt.sh
source "$REPO/shim/image/lib/apt.sh"

started=$SECONDS

# A full disk shows up late and obscurely (as a linker error), so say up
# front when space is short, and say it again if anything fails.
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/vitrine
NEEDED_GIB=8
free_gib() { df -P -B1G "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
mkdir -p "$CACHE_ROOT"
for dir in "${CARGO_TARGET_DIR:-$REPO/target}" "$CACHE_ROOT"; do
  mkdir -p "$dir"
  free=$(free_gib "$dir")
  if [ "${free:-0}" -lt "$NEEDED_GIB" ]; then
    say "warning: only ${free:-?} GiB free for $dir; a first run needs about $NEEDED_GIB GiB" \
      "(build outputs and the kernel build). Free some space if the build fails."
  fi
done
on_failure() {
  local rc=$? dir free
  for dir in "${CARGO_TARGET_DIR:-$REPO/target}" "$CACHE_ROOT"; do
    free=$(free_gib "$dir")
    [ "${free:-0}" -ge 1 ] || say "failed (exit $rc) with ${free:-?} GiB free for $dir: the disk is full"
  done
}
trap on_failure ERR
say "Debian packages"
# binutils assembles the KVM test guests; squashfs-tools makes the root disk
# of the kernel-mode driver test; the image's lists cover the guest build,
# QEMU and the OCR used by the end-to-end tests.
# The daemon's tests need a private D-Bus (dbus-daemon, busctl, gdbus), an X
# server to screenshot (Xvfb, xwd, xdotool, and the X libraries the viewer
# loads at run time), the desktop-file tools, g++ for libFuzzer, and dunst (a
# real notification daemon, for the exec guard's "Sandboxed" notice). The
# safe-copy PDF is checked with qpdf and poppler (image build list) and
# compared with img2pdf.
DESKTOP_TEST_PACKAGES=(
  dbus systemd libglib2.0-bin xvfb xdotool x11-apps libxkbcommon-x11-0
  libx11-xcb1 libxcursor1 libxrandr2 libxi6 desktop-file-utils xdg-utils
  python3 g++ dunst qpdf img2pdf
)
ensure_packages binutils squashfs-tools "${IMAGE_BUILD_PACKAGES[@]}" "${IMAGE_TEST_PACKAGES[@]}" \
  "${DESKTOP_TEST_PACKAGES[@]}"
command -v cargo >/dev/null ||
  die "cargo is not installed: install a Rust toolchain >= 1.85 (rustup) and run again"

say "guest image (shim/image/build.sh)"
VITRINE_IMAGE_DIR=$("$REPO/shim/image/build.sh" | tail -n 1)
export VITRINE_IMAGE_DIR
say "guest image: $VITRINE_IMAGE_DIR"

say "test kernel for the kernel-mode driver test (variant nested-kvm, cached)"
kernel_dir=$("$REPO/shim/image/build.sh" --kernel-only --variant nested-kvm | tail -n 1)
export VITRINE_TEST_KERNEL=$kernel_dir/vmlinux
say "test kernel: $VITRINE_TEST_KERNEL"

say "what this host's KVM can run (tests skip, loudly, what it cannot)"
cargo run --quiet --locked -p vitrine-microvm --bin vitrine-vmm -- probe >&2 ||
  say "probe could not run; KVM-tier tests will say why they skip"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "fuzzing every parser (tests/fuzz.sh; the build is cached in ~/.cache/vitrine)"
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vitrine/fuzz-target} \
  "$REPO/tests/fuzz.sh"
say "cargo test (setup took $((SECONDS - started)) s)"
cargo test --workspace --locked
