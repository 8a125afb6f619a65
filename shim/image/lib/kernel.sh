# Guest kernel: Debian's linux-source-6.1, tinyconfig + kernel/vitrine.config,
# plus the patches of one variant (sourced by build.sh).
#
# Variants: `guest` (the product kernel, no patches). Another variant is a
# directory kernel/patches/<variant>/ of `*.patch` files (-p1, applied in name
# order); the config fragment is shared.

KERNEL_SOURCE_PACKAGE=linux-source-6.1
KERNEL_SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz

# kernel_patches VARIANT: the variant's patch files, sorted, one a line.
kernel_patches() {
  local dir=$IMAGE_DIR/kernel/patches/$1
  [[ -d $dir ]] || return 0
  find "$dir" -maxdepth 1 -name '*.patch' -type f | LC_ALL=C sort
}

# kernel_key VARIANT: sha256 over everything that decides the vmlinux.
kernel_key() {
  local variant=$1 patch
  {
    printf 'variant %s\n' "$variant"
    printf 'source %s\n' "$(package_version "$KERNEL_SOURCE_PACKAGE")"
    printf 'gcc %s\n' "$(package_version gcc-12 2>/dev/null || gcc -dumpfullversion)"
    sha256sum <"$IMAGE_DIR/kernel/vitrine.config"
    sha256sum <"$IMAGE_DIR/lib/kernel.sh"
    while read -r patch; do
      [[ -n $patch ]] || continue
      printf 'patch %s ' "$(basename "$patch")"; sha256sum <"$patch"
    done < <(kernel_patches "$variant")
  } | sha256sum | cut -c1-64
}

# kernel_check_config FRAGMENT CONFIG: fail naming every option of FRAGMENT
# that olddefconfig did not keep (a missing dependency drops options silently).
kernel_check_config() {
  local fragment=$1 config=$2 line name bad=()
  while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      grep -qxF "$line" "$config" || bad+=("${BASH_REMATCH[1]} (wanted ${BASH_REMATCH[2]}, got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$config" || echo absent))")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      name=${BASH_REMATCH[1]}
      if grep -qE "^${name}=" "$config"; then bad+=("$name (wanted off, got: $(grep -E "^${name}=" "$config"))"); fi
    fi
  done <"$fragment"
  if (( ${#bad[@]} > 0 )); then
    printf '[image] kernel config: option not as requested: %s\n' "${bad[@]}" >&2
    die "kernel config check failed (${#bad[@]} options); see $config"
  fi
}

# kernel_check_pvh VMLINUX: QEMU microvm and the project's VMM enter through
# the PVH note (Xen ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY).
kernel_check_pvh() {
  readelf -n "$1" | grep -A3 -E '^ *Xen' | grep -qE '0x00000012|PHYS32_ENTRY' \
    || die "kernel: $1 has no PVH entry note (CONFIG_PVH)"
}

# build_kernel VARIANT: sets KERNEL_OUT to the cache directory holding
# vmlinux, config and build.log; builds only when that directory is absent.
build_kernel() {
  local variant=$1 key lock_fd
  key=$(kernel_key "$variant")
  KERNEL_KEY=$key
  KERNEL_OUT=$VITRINE_CACHE/kernel-$variant-${key:0:16}
  if [[ -f $KERNEL_OUT/vmlinux ]]; then
    say "kernel ($variant): cached at $KERNEL_OUT"
    return 0
  fi
  [[ $PRINT_ONLY == 1 ]] && return 0

  # One build per key at a time; a failed build's tree is kept for reading
  # its log and replaced by the next attempt.
  local work=$VITRINE_CACHE/work/kernel-$variant-${key:0:16}
  mkdir -p "$VITRINE_CACHE/work"
  exec {lock_fd}>"$work.lock"
  flock "$lock_fd"
  if [[ -f $KERNEL_OUT/vmlinux ]]; then
    say "kernel ($variant): built meanwhile by another run, at $KERNEL_OUT"
    exec {lock_fd}>&-
    return 0
  fi
  rm -rf "$work"; mkdir -p "$work/out"
  local log=$work/out/build.log src=$work/linux-source-6.1
  say "kernel ($variant): unpacking $KERNEL_SOURCE_TARBALL"
  tar -C "$work" -xf "$KERNEL_SOURCE_TARBALL"
  [[ -d $src ]] || die "kernel: $KERNEL_SOURCE_TARBALL did not unpack to $src"
  local patch
  while read -r patch; do
    [[ -n $patch ]] || continue
    say "kernel ($variant): applying $(basename "$patch")"
    patch -d "$src" -p1 --forward --quiet <"$patch" >>"$log" 2>&1 || die "kernel: patch $patch failed; see $log"
  done < <(kernel_patches "$variant")

  say "kernel ($variant): configuring (tinyconfig + kernel/vitrine.config)"
  # Fixed build identity, so two builds of the same inputs give the same vmlinux.
  export KBUILD_BUILD_TIMESTAMP="@${SOURCE_DATE_EPOCH}" KBUILD_BUILD_USER=vitrine KBUILD_BUILD_HOST=vitrine
  make -C "$src" tinyconfig >>"$log" 2>&1 || die "kernel: tinyconfig failed; see $log"
  cat "$IMAGE_DIR/kernel/vitrine.config" >>"$src/.config"
  make -C "$src" olddefconfig >>"$log" 2>&1 || die "kernel: olddefconfig failed; see $log"
  kernel_check_config "$IMAGE_DIR/kernel/vitrine.config" "$src/.config"

  say "kernel ($variant): compiling vmlinux with $(nproc) jobs (a few minutes; log: $log)"
  run_logged "kernel ($variant)" "$log" make -C "$src" -j"$(nproc)" vmlinux
  kernel_check_pvh "$src/vmlinux"

  cp "$src/vmlinux" "$work/out/vmlinux"
  cp "$src/.config" "$work/out/config"
  mkdir -p "$VITRINE_CACHE"
  rm -rf "$KERNEL_OUT"
  mv "$work/out" "$KERNEL_OUT"
  rm -rf "$work" "$work.lock"
  exec {lock_fd}>&-
  say "kernel ($variant): built $(du -h "$KERNEL_OUT/vmlinux" | cut -f1) vmlinux at $KERNEL_OUT"
}
