#!/usr/bin/env bash
# Vitrine's main job: open a sample document safely and show its pixels.
#
#   tests/demo.sh          # a sample 3-page PDF
#   tests/demo.sh --docx   # a 3-page Word document it makes (LibreOffice in the VM)
#
# First the project's own KVM VMM probes this host, boots a test guest and
# races QEMU on it. Then the guest image is built (cached), the shipped
# example policy explains its decision for a sample 3-page PDF, and
# `vitrine open` asks vitrined (started by D-Bus activation on a private
# bus) to render it in a fresh VM: only its pixels come back, in a viewer
# window where $DISPLAY is set, else as PNG pages.
set -euo pipefail

sample_kind=pdf
case ${1:-} in
  "") ;;
  --docx) sample_kind=docx ;;
  *) printf 'usage: %s [--docx]\n' "$0" >&2; exit 2 ;;
esac

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
if [[ $sample_kind == docx ]]; then
  # A Word document made here by the host's LibreOffice (the image build
  # installed it: the same program runs from the VM's application disk).
  made=$target/demo-docx
  rm -rf "$made"; mkdir -p "$made"
  cat >"$made/letter.fodt" <<'DOC'
<?xml version="1.0" encoding="UTF-8"?>
<office:document xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" office:version="1.2" office:mimetype="application/vnd.oasis.opendocument.text">
<office:automatic-styles><style:style style:name="Next" style:family="paragraph"><style:paragraph-properties fo:break-before="page"/></style:style></office:automatic-styles>
<office:body><office:text>
<text:h text:outline-level="1">Quarterly report</text:h><text:p>Opened safely: LibreOffice ran inside a disposable VM, and only these pixels came back.</text:p>
<text:h text:style-name="Next" text:outline-level="1">Results</text:h><text:p>Page two of three.</text:p>
<text:h text:style-name="Next" text:outline-level="1">Outlook</text:h><text:p>Page three of three.</text:p>
</office:text></office:body></office:document>
DOC
  soffice --headless "-env:UserInstallation=file://$made/profile" --convert-to docx \
    --outdir "$made" "$made/letter.fodt" >/dev/null 2>&1 ||
    die "the host's LibreOffice could not make the sample .docx"
  sample=$made/letter.docx
  [[ -f $sample ]] || die "the host's LibreOffice made no $sample"
fi

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
  say "vitrine open: over D-Bus, vitrined asks the policy, a VM renders the file, and only its pixels come back, in a window (close it to finish)"
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
