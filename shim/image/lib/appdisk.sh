# The application disk: a read-only squashfs that the VM gets as virtio-blk
# and the guest mounts at /apps (sourced by build.sh). Programs too big for
# the initramfs, which every VM unpacks into RAM, go here: tesseract,
# LibreOffice and Chromium's headless shell. Each carries its library
# closure under /lib, so it does not depend on the initramfs's libraries.
#
# Layout: /bin/<program> (tesseract; certutil, to make the NSS database
# that makes Chromium trust a task's CA), /lib/<libraries +
# ld-linux-x86-64.so.2>, /share/tessdata/<lang>.traineddata,
# /libreoffice/<Debian's /usr/lib/libreoffice, links resolved>,
# /chromium/<Debian's /usr/lib/chromium: chromium-headless-shell, its .pak
# files, ICU data, V8 snapshots, locales/en-US.pak>, /fonts/<faces> +
# /fonts/fonts.conf (LibreOffice's and Chromium's).
#
# Same inputs, same bytes: files staged with fixed mtimes, root-owned, no
# xattrs, a fixed creation time; mksquashfs sorts directories itself. gzip
# (zlib), which the guest kernel reads without a config change.

APP_PROGRAMS=(/usr/bin/tesseract /usr/bin/certutil)
# Tesseract languages on the disk; each needs Debian's tesseract-ocr-<lang>.
VITRINE_OCR_LANGS=${VITRINE_OCR_LANGS:-eng}

# LibreOffice without a GUI, and the faces that keep Microsoft layouts
# honest: Liberation (Arial, Times New Roman, Courier New metrics),
# Carlito/Caladea (Calibri, Cambria metrics), DejaVu for the rest.
OFFICE_PACKAGES=(libreoffice-core-nogui libreoffice-writer-nogui libreoffice-calc-nogui
  libreoffice-impress-nogui libreoffice-math-nogui)
OFFICE_FONT_PACKAGES=(fonts-liberation2 fonts-crosextra-carlito fonts-crosextra-caladea
  fonts-dejavu-core)
OFFICE_DIR=/usr/lib/libreoffice
# Libraries NSS loads by name at run time, which ldd does not list: its
# software token. Without it every LibreOffice PDF export fails to write,
# certutil opens no database and Chromium reads no trust from one.
NSS_DLOPENED=(libsoftokn3.so libfreebl3.so libfreeblpriv3.so)
# Icon themes LibreOffice has no use for without a GUI (it keeps colibre),
# and Python: its script provider (python3-uno, which apt recommends) would
# be one more macro language, and the disk has no Python to run it.
OFFICE_SKIP='/share/config/images_(colibre_dark|colibre_svg|colibre_dark_svg|helpimg)\.zip$|\.py$|/__pycache__/|/share/Scripts/python/|/program/(libpythonloaderlo|libpyuno|pyuno)\.so$|/program/pythonloader\.unorc$|/program/services/pyuno\.rdb$|/share/\.registry/pyuno\.xcd$'

# Chromium's headless shell (its resources come from chromium-common), run
# with LD_LIBRARY_PATH=/apps/lib: it starts its renderers from
# /proc/self/exe, which must be the browser, not the disk's loader.
BROWSER_PACKAGES=(chromium-headless-shell chromium-common)
BROWSER_DIR=/usr/lib/chromium
# The one locale Chromium's strings come from.
BROWSER_LOCALES=(en-US)
# What a headless run with --disable-gpu never loads (checked: it renders
# and serves CDP without them): the crash reporter, which Chromium starts
# only when crash reporting is on; Vulkan's validation layer and mock ICD,
# debugging aids; the other locales.
BROWSER_SKIP='/chrome_crashpad_handler$|/libVkLayer_khronos_validation\.so(\.TOC)?$|/libVkICD_mock_icd\.so(\.TOC)?$|/locales/'
# certutil, which makes the NSS database ($HOME/.pki/nssdb) that holds a
# task's extra CA certificates for Chromium.
NSS_TOOLS_PACKAGES=(libnss3-tools)

# appdisk_packages: the Debian packages whose files the disk holds, one a line.
appdisk_packages() {
  local lang
  printf '%s\n' tesseract-ocr "${OFFICE_PACKAGES[@]}" "${OFFICE_FONT_PACKAGES[@]}" \
    "${BROWSER_PACKAGES[@]}" "${NSS_TOOLS_PACKAGES[@]}"
  for lang in $VITRINE_OCR_LANGS; do printf 'tesseract-ocr-%s\n' "$lang"; done
}

# traineddata LANG: the host's LANG.traineddata from tesseract-ocr-LANG, or a
# clear error naming the package.
traineddata() {
  local lang=$1 pkg=tesseract-ocr-$1 file
  [[ $lang =~ ^[A-Za-z0-9_]+$ ]] || die "VITRINE_OCR_LANGS: bad language name: $lang"
  if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) != installed ]]; then
    die "VITRINE_OCR_LANGS names $lang, but the Debian package $pkg is not installed (apt-get install $pkg)"
  fi
  file=$(dpkg -L "$pkg" | grep -E "/$lang\.traineddata$" | head -n1)
  [[ -n $file && -f $file ]] || die "$pkg holds no $lang.traineddata"
  printf '%s\n' "$file"
}

# appdisk_languages: sets TRAINEDDATA to `lang=path` pairs; run in this
# shell (not in a command substitution) so that a missing language stops the
# build.
appdisk_languages() {
  local lang file
  TRAINEDDATA=()
  for lang in $VITRINE_OCR_LANGS; do
    traineddata "$lang" >/dev/null
    file=$(traineddata "$lang")
    TRAINEDDATA+=("$lang=$file")
  done
  (( ${#TRAINEDDATA[@]} > 0 )) || die "VITRINE_OCR_LANGS is empty: name at least one language (eng)"
}

# office_elves: LibreOffice's programs and libraries (the ELF files under
# OFFICE_DIR/program), one path a line.
office_elves() {
  local f
  find -L "$OFFICE_DIR/program" -type f | LC_ALL=C sort | grep -Ev "$OFFICE_SKIP" | while read -r f; do
    if [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == 177ELF ]]; then printf '%s\n' "$f"; fi
  done
}

# browser_elves: Chromium's programs and libraries (the ELF files under
# BROWSER_DIR), one path a line.
browser_elves() {
  local f
  find -L "$BROWSER_DIR" -type f | LC_ALL=C sort | grep -Ev "$BROWSER_SKIP" | while read -r f; do
    if [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == 177ELF ]]; then printf '%s\n' "$f"; fi
  done
}

# The fontconfig file LibreOffice and Chromium read in the guest
# (FONTCONFIG_FILE): the disk's faces and the initramfs's, no caches on the
# read-only disk.
OFFICE_FONTS_CONF='<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <dir>/apps/fonts</dir>
  <dir>/usr/share/fonts</dir>
  <cachedir>/tmp/vitrine-fontconfig</cachedir>
</fontconfig>'

# appdisk_entries: `<name on the disk> <host source>` lines, sorted by name.
appdisk_entries() {
  local p lib pair f
  for p in "${APP_PROGRAMS[@]}"; do printf '/bin/%s %s\n' "$(basename "$p")" "$p"; done
  for p in "${OFFICE_PACKAGES[@]}" "${OFFICE_FONT_PACKAGES[@]}" "${BROWSER_PACKAGES[@]}" \
    "${NSS_TOOLS_PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] \
      || die "app disk: the Debian package $p is not installed (apt-get install $p)"
  done
  for f in "${NSS_DLOPENED[@]}"; do
    [[ -f /usr/lib/x86_64-linux-gnu/$f ]] \
      || die "app disk: NSS needs /usr/lib/x86_64-linux-gnu/$f (Debian package libnss3)"
  done
  # LibreOffice's tree as it is installed, Debian's links to /etc and
  # /usr/share resolved: the guest has neither.
  find -L "$OFFICE_DIR" -type f | LC_ALL=C sort | grep -Ev "$OFFICE_SKIP" | while read -r f; do
    printf '/libreoffice%s %s\n' "${f#"$OFFICE_DIR"}" "$f"
  done
  # Chromium's tree as it is installed, and its locales.
  find -L "$BROWSER_DIR" -type f | LC_ALL=C sort | grep -Ev "$BROWSER_SKIP" | while read -r f; do
    printf '/chromium%s %s\n' "${f#"$BROWSER_DIR"}" "$f"
  done
  for f in "${BROWSER_LOCALES[@]}"; do
    [[ -f $BROWSER_DIR/locales/$f.pak ]] || die "app disk: Chromium has no $BROWSER_DIR/locales/$f.pak"
    printf '/chromium/locales/%s.pak %s\n' "$f" "$BROWSER_DIR/locales/$f.pak"
  done
  dpkg -L "${OFFICE_FONT_PACKAGES[@]}" | grep -E '\.(ttf|otf)$' | LC_ALL=C sort -u | while read -r f; do
    printf '/fonts/%s %s\n' "$(basename "$f")" "$f"
  done
  printf '/fonts/fonts.conf %s\n' "$OFFICE_FONTS_CONF_FILE"
  # Every library the programs load from outside their own tree, and the
  # loader, under /lib by file name.
  while read -r lib; do
    printf '/lib/%s %s\n' "$(basename "$lib")" "$lib"
  done < <({
    ldd "${APP_PROGRAMS[@]}"
    office_elves | xargs -d '\n' ldd 2>/dev/null
    browser_elves | xargs -d '\n' ldd 2>/dev/null
    for lib in "${NSS_DLOPENED[@]}"; do
      lib=/usr/lib/x86_64-linux-gnu/$lib
      printf '%s (0x0)\n' "$lib"
      ldd "$lib"
    done
  } | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | grep -Ev "^($OFFICE_DIR|$BROWSER_DIR)/" \
    | sed 's#^/lib/x86_64-linux-gnu/#/usr/lib/x86_64-linux-gnu/#' | LC_ALL=C sort -u)
  for pair in "${TRAINEDDATA[@]}"; do
    printf '/share/tessdata/%s.traineddata %s\n' "${pair%%=*}" "${pair#*=}"
  done
}

# office_relocate DIR: Debian's bootstrap names /usr/lib/libreoffice and
# /etc/libreoffice; on the disk the tree is found from the program's own
# place, as upstream's is, and its configuration inside the tree.
office_relocate() {
  local rc=$1/program/fundamentalrc
  [[ -f $rc ]] || die "app disk: LibreOffice has no $rc"
  sed -i -e 's#file:///usr/lib/libreoffice#${ORIGIN}/..#g' \
    -e 's#file:///etc/libreoffice/registry#${BRAND_BASE_DIR}/share/registry#g' \
    -e 's# dconf:\*##' -e 's#^URE_MORE_JAVA_CLASSPATH_URLS=.*#URE_MORE_JAVA_CLASSPATH_URLS=#' "$rc"
  grep -q 'file:///' "$rc" && die "app disk: $rc still names a host path: $(grep 'file:///' "$rc")"
  return 0
}

# appdisk_key ENTRIES: sha256 over the names, the content of each source,
# mksquashfs's version and this recipe.
appdisk_key() {
  local entries=$1
  {
    sha256sum <"$IMAGE_DIR/lib/appdisk.sh"
    mksquashfs -version 2>/dev/null | head -n1
    paste -d' ' <(cut -d' ' -f1 "$entries") \
      <(cut -d' ' -f2- "$entries" | xargs -d '\n' sha256sum | cut -c1-64)
  } | sha256sum | cut -c1-64
}

# build_appdisk: sets APPS_KEY and APPS_OUT (holding apps.squashfs and the
# packages of its files); builds only when APPS_OUT is absent.
build_appdisk() {
  appdisk_languages
  local entries f
  entries=$(mktemp)
  OFFICE_FONTS_CONF_FILE=$(mktemp)
  printf '%s\n' "$OFFICE_FONTS_CONF" >"$OFFICE_FONTS_CONF_FILE"
  # The same library reached from two programs is one line.
  appdisk_entries | LC_ALL=C sort -u | LC_ALL=C sort -k1,1 >"$entries" || { rm -f "$entries" "$OFFICE_FONTS_CONF_FILE"; exit 1; }
  if [[ $(cut -d' ' -f1 "$entries" | uniq -d) ]]; then
    die "app disk: two files share a name: $(cut -d' ' -f1 "$entries" | uniq -d | tr '\n' ' ')"
  fi
  # The library closure comes from a process substitution, whose failure
  # does not stop the build: check that its last part made it.
  for f in "${NSS_DLOPENED[@]}"; do
    grep -q "^/lib/$f " "$entries" || die "app disk: the library closure lacks /lib/$f"
  done
  APPS_KEY=$(appdisk_key "$entries")
  APPS_OUT=$VITRINE_CACHE/apps-${APPS_KEY:0:16}
  if [[ -f $APPS_OUT/apps.squashfs ]]; then
    say "app disk: cached at $APPS_OUT ($(du -h "$APPS_OUT/apps.squashfs" | cut -f1))"
    rm -f "$entries" "$OFFICE_FONTS_CONF_FILE"
    return 0
  fi
  if [[ $PRINT_ONLY == 1 ]]; then
    rm -f "$entries" "$OFFICE_FONTS_CONF_FILE"
    return 0
  fi

  say "app disk: staging $(wc -l <"$entries") files (languages: $VITRINE_OCR_LANGS)"
  local work=$VITRINE_CACHE/work/apps-${APPS_KEY:0:16}.$$ name src
  rm -rf "$work"; mkdir -p "$work/stage" "$work/out"
  while read -r name src; do
    mkdir -p "$work/stage$(dirname "$name")"
    cp -L "$src" "$work/stage$name"
    case $name in
      /share/* | /fonts/*) chmod 0644 "$work/stage$name" ;;
      *) chmod 0755 "$work/stage$name" ;;
    esac
  done <"$entries"
  office_relocate "$work/stage/libreoffice"
  find "$work/stage" -type d -exec chmod 0755 {} +
  find "$work/stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  mksquashfs "$work/stage" "$work/out/apps.squashfs" -comp gzip -all-root -noappend \
    -no-xattrs -quiet -no-progress >&2 \
    || die "mksquashfs failed"
  cp "$entries" "$work/out/entries.txt"
  appdisk_packages | while read -r pkg; do
    printf '%s %s\n' "$pkg" "$(package_version "$pkg")"
  done >"$work/out/packages.txt"
  rm -f "$entries" "$OFFICE_FONTS_CONF_FILE"
  rm -rf "$APPS_OUT"
  mv "$work/out" "$APPS_OUT"
  rm -rf "$work"
  say "app disk: built $(du -h "$APPS_OUT/apps.squashfs" | cut -f1) apps.squashfs at $APPS_OUT"
}
