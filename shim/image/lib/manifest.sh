# The image directory: vmlinux, initrd.gz, apps.squashfs, cmdline and manifest.json with
# the hashes and package versions that made them (sourced by build.sh).

# Kernel command line the image is booted with; the backends read it from
# <image>/cmdline. QEMU microvm appends the virtio-mmio device list itself.
IMAGE_CMDLINE="console=ttyS0 panic=-1 reboot=t quiet"

# json_str S: S as a JSON string (the values here are paths, versions, hashes).
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# assemble_image DIR: links the kernel and initramfs into DIR with a manifest.
assemble_image() {
  local out=$1 tmp=$1.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"
  ln "$KERNEL_OUT/vmlinux" "$tmp/vmlinux" 2>/dev/null || cp "$KERNEL_OUT/vmlinux" "$tmp/vmlinux"
  ln "$INITRD_OUT/initrd.gz" "$tmp/initrd.gz" 2>/dev/null || cp "$INITRD_OUT/initrd.gz" "$tmp/initrd.gz"
  ln "$APPS_OUT/apps.squashfs" "$tmp/apps.squashfs" 2>/dev/null || cp "$APPS_OUT/apps.squashfs" "$tmp/apps.squashfs"
  cp "$KERNEL_OUT/config" "$tmp/kernel.config"
  printf '%s\n' "$IMAGE_CMDLINE" >"$tmp/cmdline"
  write_manifest "$tmp" >"$tmp/manifest.json"
  rm -rf "$out"
  mv "$tmp" "$out"
}

# write_manifest DIR: manifest.json of the image in DIR, on stdout.
write_manifest() {
  local dir=$1 pkg version first=1
  printf '{\n'
  printf '  "variant": %s,\n' "$(json_str "$VARIANT")"
  printf '  "cmdline": %s,\n' "$(json_str "$IMAGE_CMDLINE")"
  printf '  "kernel": {\n'
  printf '    "key": %s,\n' "$(json_str "$KERNEL_KEY")"
  printf '    "source_package": %s,\n' "$(json_str "$KERNEL_SOURCE_PACKAGE")"
  printf '    "source_version": %s,\n' "$(json_str "$(package_version "$KERNEL_SOURCE_PACKAGE")")"
  printf '    "config_fragment_sha256": %s,\n' "$(json_str "$(sha256sum <"$IMAGE_DIR/kernel/vitrine.config" | cut -c1-64)")"
  printf '    "config_sha256": %s,\n' "$(json_str "$(sha256sum <"$dir/kernel.config" | cut -c1-64)")"
  printf '    "vmlinux_sha256": %s,\n' "$(json_str "$(sha256sum <"$dir/vmlinux" | cut -c1-64)")"
  printf '    "vmlinux_bytes": %s\n' "$(stat -c %s "$dir/vmlinux")"
  printf '  },\n'
  printf '  "initrd": {\n'
  printf '    "key": %s,\n' "$(json_str "$INITRD_KEY")"
  printf '    "sha256": %s,\n' "$(json_str "$(sha256sum <"$dir/initrd.gz" | cut -c1-64)")"
  printf '    "bytes": %s,\n' "$(stat -c %s "$dir/initrd.gz")"
  printf '    "files": %s,\n' "$(grep -c '^file ' "$INITRD_OUT/entries.txt")"
  printf '    "init_sha256": %s\n' "$(json_str "$(sha256sum <"$SHIM_BIN" | cut -c1-64)")"
  printf '  },\n'
  printf '  "apps": {\n'
  printf '    "key": %s,\n' "$(json_str "$APPS_KEY")"
  printf '    "sha256": %s,\n' "$(json_str "$(sha256sum <"$dir/apps.squashfs" | cut -c1-64)")"
  printf '    "bytes": %s,\n' "$(stat -c %s "$dir/apps.squashfs")"
  printf '    "files": %s,\n' "$(wc -l <"$APPS_OUT/entries.txt")"
  printf '    "ocr_languages": %s,\n' "$(json_str "$VITRINE_OCR_LANGS")"
  printf '    "packages": {\n'
  while read -r pkg version; do
    (( first )) || printf ',\n'
    first=0
    printf '      %s: %s' "$(json_str "$pkg")" "$(json_str "$version")"
  done <"$APPS_OUT/packages.txt"
  first=1
  printf '\n    }\n'
  printf '  },\n'
  printf '  "packages": {\n'
  while read -r pkg version; do
    (( first )) || printf ',\n'
    first=0
    printf '    %s: %s' "$(json_str "$pkg")" "$(json_str "$version")"
  done < <({
    for pkg in "$KERNEL_SOURCE_PACKAGE" gcc-12 "${INITRAMFS_PACKAGES[@]}"; do
      printf '%s %s\n' "$pkg" "$(package_version "$pkg" 2>/dev/null || echo unknown)"
    done
    cat "$INITRD_OUT/packages.txt"
  } | LC_ALL=C sort -u)
  printf '\n  }\n}\n'
}
