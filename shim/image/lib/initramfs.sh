# Guest initramfs: busybox-static, the static vitrine-shim as /init, poppler's
# pdftoppm and pdfinfo with their libraries, DejaVu fonts and fontconfig
# (sourced by build.sh).
#
# The archive is built by the kernel's own gen_init_cpio from a sorted list:
# fixed mtimes (-t, and staged copies touched to SOURCE_DATE_EPOCH), uid 0,
# and device nodes without needing root. Same inputs, same bytes.

SHIM_TARGET=x86_64-unknown-linux-gnu
RENDERERS=(/usr/bin/pdftoppm /usr/bin/pdfinfo)
# The DejaVu faces the guest uses: poppler substitutes them for non-embedded
# fonts through fontconfig, and the shim draws terminal and text pages with them.
FONT_FILES=(
  DejaVuSans.ttf DejaVuSans-Bold.ttf DejaVuSans-Oblique.ttf DejaVuSans-BoldOblique.ttf
  DejaVuSerif.ttf DejaVuSerif-Bold.ttf DejaVuSerif-Italic.ttf DejaVuSerif-BoldItalic.ttf
  DejaVuSansMono.ttf DejaVuSansMono-Bold.ttf DejaVuSansMono-Oblique.ttf DejaVuSansMono-BoldOblique.ttf
)
FONT_DIR=/usr/share/fonts/truetype/dejavu
# Packages whose files go into the initramfs, for the manifest.
INITRAMFS_PACKAGES=(busybox-static poppler-utils fonts-dejavu-core fontconfig-config libc6)

# shim_binary: sets SHIM_BIN to the static vitrine-shim (built here unless
# VITRINE_SHIM_BIN names a file, or --print-dir only looks).
shim_binary() {
  if [[ -n ${VITRINE_SHIM_BIN:-} ]]; then
    [[ -f $VITRINE_SHIM_BIN ]] || die "VITRINE_SHIM_BIN=$VITRINE_SHIM_BIN is not a file"
    SHIM_BIN=$(realpath "$VITRINE_SHIM_BIN")
    export SHIM_BIN
    return 0
  fi
  local target_dir
  target_dir=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) \
    || die "cargo metadata failed in $REPO_DIR"
  SHIM_BIN=$target_dir/$SHIM_TARGET/release/vitrine-shim
  export SHIM_BIN
  if [[ $PRINT_ONLY == 1 ]]; then
    return 0
  fi
  say "shim: cargo build --release -p vitrine-shim --target $SHIM_TARGET (static)"
  (cd "$REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p vitrine-shim --bin vitrine-shim --target "$SHIM_TARGET") \
    || die "building vitrine-shim failed"
  if readelf -lW "$SHIM_BIN" | grep -q 'Requesting program interpreter'; then
    die "$SHIM_BIN is dynamically linked; /init must be static"
  fi
}

# gen_init_cpio_tool: sets GEN_INIT_CPIO, compiled once per linux-source version.
gen_init_cpio_tool() {
  local version
  version=$(package_version "$KERNEL_SOURCE_PACKAGE")
  GEN_INIT_CPIO=$VITRINE_CACHE/tools/gen_init_cpio-$version
  [[ -x $GEN_INIT_CPIO ]] && return 0
  [[ $PRINT_ONLY == 1 ]] && return 0
  say "initramfs: compiling gen_init_cpio from $KERNEL_SOURCE_TARBALL"
  local tmp
  tmp=$(mktemp -d)
  tar -C "$tmp" -xf "$KERNEL_SOURCE_TARBALL" linux-source-6.1/usr/gen_init_cpio.c
  mkdir -p "$VITRINE_CACHE/tools"
  cc -O2 -o "$GEN_INIT_CPIO.tmp" "$tmp/linux-source-6.1/usr/gen_init_cpio.c"
  mv "$GEN_INIT_CPIO.tmp" "$GEN_INIT_CPIO"
  rm -rf "$tmp"
}

# renderer_libraries: the shared libraries and the loader that the renderers
# load, as `path` lines (paths as the loader finds them).
renderer_libraries() {
  ldd "${RENDERERS[@]}" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | LC_ALL=C sort -u
}

# initramfs_entries: the archive content as lines
#   file <name> <host source> <mode>
#   slink <name> <target>
#   dir <name> <mode>
#   nod <name> <mode> <c|b> <major> <minor>
#   text <name> <mode> <content, \n-escaped>
# sorted by name; parents before children.
initramfs_entries() {
  local d
  for d in / /bin /sbin /usr /usr/bin /usr/sbin /lib /lib64 /lib/x86_64-linux-gnu /etc \
    /etc/fonts /etc/fonts/conf.d /usr/share /usr/share/fonts /usr/share/fonts/truetype \
    "$FONT_DIR" /proc /sys /run /root /var /var/cache /var/cache/fontconfig; do
    printf 'dir %s 0755\n' "$d"
  done
  printf 'dir /dev 0755\n'
  printf 'nod /dev/console 0600 c 5 1\n'
  printf 'nod /dev/null 0666 c 1 3\n'
  printf 'dir /tmp 1777\n'
  printf 'file /init %s 0755\n' "$SHIM_BIN"
  printf 'file /bin/busybox /bin/busybox 0755\n'
  local applet
  while read -r applet; do
    [[ $applet == bin/busybox || -z $applet ]] && continue
    printf 'slink /%s /bin/busybox\n' "$applet"
  done < <(/bin/busybox --list-full)
  local r lib
  for r in "${RENDERERS[@]}"; do printf 'file %s %s 0755\n' "$r" "$r"; done
  while read -r lib; do
    printf 'file %s %s 0755\n' "$lib" "$lib"
  done < <(renderer_libraries)
  local f
  for f in "${FONT_FILES[@]}"; do printf 'file %s/%s %s/%s 0644\n' "$FONT_DIR" "$f" "$FONT_DIR" "$f"; done
  printf 'file /etc/fonts/fonts.conf /etc/fonts/fonts.conf 0644\n'
  # Only the configuration of the packages the image takes fonts from: a
  # host's other font packages must not change the image.
  while read -r f; do
    [[ -e $f ]] && printf 'file %s %s 0644\n' "$f" "$f"
  done < <(dpkg -L fontconfig-config fonts-dejavu-core | grep -E '^/etc/fonts/conf\.d/.+\.conf$' | LC_ALL=C sort -u)
  printf 'text /etc/passwd 0644 root:x:0:0:root:/root:/bin/sh\\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\\n\n'
  printf 'text /etc/group 0644 root:x:0:\\nnogroup:x:65534:\\n\n'
  printf 'text /etc/hostname 0644 vitrine\\n\n'
} 

# initramfs_key ENTRIES: sha256 over the entry list, with each file's host
# path replaced by the hash of its content (where the shim was built does not
# matter, what it is does), the tool and this recipe.
initramfs_key() {
  local entries=$1
  {
    sha256sum <"$IMAGE_DIR/lib/initramfs.sh"
    printf 'tool %s\n' "$(package_version "$KERNEL_SOURCE_PACKAGE")"
    awk '$1 != "file"' "$entries"
    paste -d' ' <(awk '$1 == "file" { print $1, $2, $4 }' "$entries") \
      <(awk '$1 == "file" { print $3 }' "$entries" | xargs -d '\n' sha256sum | cut -c1-64)
  } | sha256sum | cut -c1-64
}

# build_initramfs: sets INITRD_KEY and INITRD_OUT (holding initrd.gz, the
# entry list and the file packages); builds only when INITRD_OUT is absent.
build_initramfs() {
  shim_binary
  if [[ ! -f $SHIM_BIN ]]; then
    say "shim binary $SHIM_BIN is not built: run $0"
    exit 3
  fi
  local entries
  entries=$(mktemp)
  # shellcheck disable=SC2064
  trap "rm -f '$entries'" EXIT
  initramfs_entries | LC_ALL=C sort -k2,2 -s >"$entries"
  INITRD_KEY=$(initramfs_key "$entries")
  INITRD_OUT=$VITRINE_CACHE/initrd-${INITRD_KEY:0:16}
  if [[ -f $INITRD_OUT/initrd.gz ]]; then
    say "initramfs: cached at $INITRD_OUT"
    return 0
  fi
  [[ $PRINT_ONLY == 1 ]] && return 0
  gen_init_cpio_tool

  say "initramfs: staging $(grep -c '^file ' "$entries") files"
  local work=$VITRINE_CACHE/work/initrd-${INITRD_KEY:0:16}.$$
  rm -rf "$work"; mkdir -p "$work/stage" "$work/out"
  local list=$work/cpio_list kind name a b c d e n=0
  : >"$list"
  while read -r kind name a b c d e; do
    case $kind in
      dir) printf 'dir %s %s 0 0\n' "$name" "$a" >>"$list" ;;
      nod) printf 'nod %s %s 0 0 %s %s %s\n' "$name" "$a" "$b" "$c" "$d" >>"$list" ;;
      slink) printf 'slink %s %s 0777 0 0\n' "$name" "$a" >>"$list" ;;
      file|text)
        # Staged copies get a fixed mtime; gen_init_cpio takes files' mtimes as they are.
        n=$((n + 1))
        if [[ $kind == file ]]; then cp -L "$a" "$work/stage/$n"; else printf '%b' "$b" >"$work/stage/$n"; fi
        touch -d "@$SOURCE_DATE_EPOCH" "$work/stage/$n"
        printf 'file %s %s %s 0 0\n' "$name" "$work/stage/$n" "$([[ $kind == file ]] && echo "$b" || echo "$a")" >>"$list" ;;
      *) die "initramfs: bad entry kind $kind" ;;
    esac
  done <"$entries"

  say "initramfs: packing newc cpio + gzip"
  "$GEN_INIT_CPIO" -t "$SOURCE_DATE_EPOCH" "$list" | gzip -n -9 >"$work/out/initrd.gz"
  cp "$entries" "$work/out/entries.txt"
  initramfs_file_packages "$entries" >"$work/out/packages.txt"
  rm -rf "$INITRD_OUT"
  mv "$work/out" "$INITRD_OUT"
  rm -rf "$work"
  say "initramfs: built $(du -h "$INITRD_OUT/initrd.gz" | cut -f1) initrd.gz at $INITRD_OUT"
}

# initramfs_file_packages ENTRIES: `package version` of every Debian package
# that a file of the archive comes from, sorted.
initramfs_file_packages() {
  # Debian 12 merged /lib into /usr/lib, but packages name either path: ask for both.
  awk '$1 == "file" && $3 != ENVIRON["SHIM_BIN"] { print $3; if ($3 ~ /^\/lib/) print "/usr" $3 }' "$1" \
    | { xargs -d '\n' dpkg -S 2>/dev/null || true; } | cut -d: -f1 | tr ',' '\n' | tr -d ' ' | LC_ALL=C sort -u \
    | while read -r pkg; do
        [[ -n $pkg ]] && printf '%s %s\n' "$pkg" "$(package_version "$pkg")"
      done
}
