# Debian packages the image build needs (sourced by build.sh).

# Packages whose files or tools end up in, or build, the image.
IMAGE_BUILD_PACKAGES=(
  linux-source-6.1 bc flex bison libelf-dev libssl-dev make gcc libc6-dev
  xz-utils patch busybox-static poppler-utils fontconfig-config fonts-dejavu-core
  gzip binutils squashfs-tools tesseract-ocr tesseract-ocr-eng
  libreoffice-core-nogui libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui
  libreoffice-math-nogui
  fonts-liberation2 fonts-crosextra-carlito fonts-crosextra-caladea
  chromium-headless-shell libnss3-tools
)
# What boots and checks the image: the QEMU backend and the end-to-end tests
# (which also read rendered text back with the host's tesseract).
IMAGE_TEST_PACKAGES=(qemu-system-x86)

# ensure_packages PKG...: install what dpkg says is missing; `apt-get update`
# only when something must be installed.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) != installed ]]; then
      missing+=("$pkg")
    fi
  done
  (( ${#missing[@]} == 0 )) && return 0
  say "apt: installing ${missing[*]}"
  local sudo=()
  (( EUID == 0 )) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# package_version PKG: the installed version, as dpkg records it.
package_version() { dpkg-query -W -f='${Version}' "$1"; }
