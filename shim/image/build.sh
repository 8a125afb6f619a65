#!/usr/bin/env bash
# Build the Vitrine guest image: a minimal kernel (vmlinux, PVH entry), an
# initramfs with busybox, the static vitrine-shim as /init and the renderers,
# and the read-only app disk (apps.squashfs: tesseract, LibreOffice, Chromium).
#
#   shim/image/build.sh                   build (or find in the cache) the image
#   shim/image/build.sh --print-dir       print the image directory if built; exit 3 if not
#   shim/image/build.sh --kernel-only     build only the kernel; print its directory
#   shim/image/build.sh --variant NAME    kernel variant (default: guest)
#
# Environment:
#   VITRINE_CACHE      cache root (default ~/.cache/vitrine)
#   VITRINE_SHIM_BIN   use this file as /init instead of building vitrine-shim
#   VITRINE_CACHE_KEEP how many images, initramfs, app disks and kernels (per variant) to keep (default 4)
#   VITRINE_OCR_LANGS  tesseract languages on the app disk (default "eng"; each
#                      needs the Debian package tesseract-ocr-<lang>)
#   CARGO_TARGET_DIR   where cargo puts the shim build (default <repo>/target)
#
# Outputs are keyed by the sha256 of their inputs; a build whose key exists is
# not redone. Progress goes to stderr; the last line on stdout is the image
# directory, holding vmlinux, initrd.gz, apps.squashfs, cmdline and manifest.json.
set -euo pipefail

IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGE_DIR/../.." && pwd)
VITRINE_CACHE=${VITRINE_CACHE:-$HOME/.cache/vitrine}
# Fixed timestamps for every built file: the image depends on its inputs only.
export SOURCE_DATE_EPOCH=0
export LC_ALL=C

# shellcheck source=lib/progress.sh
source "$IMAGE_DIR/lib/progress.sh"
# shellcheck source=lib/apt.sh
source "$IMAGE_DIR/lib/apt.sh"
# shellcheck source=lib/kernel.sh
source "$IMAGE_DIR/lib/kernel.sh"
# shellcheck source=lib/initramfs.sh
source "$IMAGE_DIR/lib/initramfs.sh"
# shellcheck source=lib/appdisk.sh
source "$IMAGE_DIR/lib/appdisk.sh"
# shellcheck source=lib/manifest.sh
source "$IMAGE_DIR/lib/manifest.sh"
# shellcheck source=lib/cache.sh
source "$IMAGE_DIR/lib/cache.sh"

VARIANT=guest
PRINT_ONLY=0
KERNEL_ONLY=0
while (( $# > 0 )); do
  case $1 in
    --print-dir) PRINT_ONLY=1 ;;
    --kernel-only) KERNEL_ONLY=1 ;;
    --variant) shift; VARIANT=${1:?--variant needs a name} ;;
    --variant=*) VARIANT=${1#--variant=} ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ $VARIANT =~ ^[a-z0-9-]+$ ]] || die "variant must be [a-z0-9-]+, got: $VARIANT"
[[ $VARIANT == guest || -d $IMAGE_DIR/kernel/patches/$VARIANT ]] \
  || die "unknown variant $VARIANT: no $IMAGE_DIR/kernel/patches/$VARIANT"

started=$SECONDS
if [[ $PRINT_ONLY == 0 ]]; then
  ensure_packages "${IMAGE_BUILD_PACKAGES[@]}" "${IMAGE_TEST_PACKAGES[@]}"
fi

build_kernel "$VARIANT"
if [[ $KERNEL_ONLY == 1 ]]; then
  [[ -f $KERNEL_OUT/vmlinux ]] || { say "kernel ($VARIANT) not built yet: run $0 --kernel-only"; exit 3; }
  if [[ $PRINT_ONLY == 0 ]]; then
    mark_used "$KERNEL_OUT"
    prune_cache "kernel-$VARIANT-"
  fi
  printf '%s\n' "$KERNEL_OUT"
  exit 0
fi

build_initramfs
build_appdisk
image_out=$VITRINE_CACHE/image-$VARIANT-$(printf '%s %s %s\n' "$KERNEL_KEY" "$INITRD_KEY" "$APPS_KEY" | sha256sum | cut -c1-16)
if [[ -f $image_out/manifest.json ]]; then
  say "image: cached at $image_out ($((SECONDS - started)) s)"
elif [[ $PRINT_ONLY == 1 ]]; then
  say "image not built for the current inputs: run $0"
  exit 3
else
  assemble_image "$image_out"
  say "image: built at $image_out ($((SECONDS - started)) s)"
fi
if [[ $PRINT_ONLY == 0 ]]; then
  mark_used "$KERNEL_OUT" "$INITRD_OUT" "$APPS_OUT" "$image_out"
  prune_cache "kernel-$VARIANT-"
  prune_cache initrd-
  prune_cache apps-
  prune_cache "image-$VARIANT-"
fi
say "image: initrd.gz $(stat -c %s "$image_out/initrd.gz") bytes, apps.squashfs $(stat -c %s "$image_out/apps.squashfs") bytes"
printf '%s\n' "$image_out"
