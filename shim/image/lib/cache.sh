# Cache housekeeping (sourced by build.sh). Every build leaves a keyed
# directory; without pruning, each shim change would keep another initramfs.

# How many directories of each kind stay: the newest by last use.
VITRINE_CACHE_KEEP=${VITRINE_CACHE_KEEP:-4}

# mark_used DIR...: records a use (the directory's mtime) for pruning.
mark_used() { touch -c "$@"; }

# prune_cache PREFIX: removes all but the $VITRINE_CACHE_KEEP most recently
# used $VITRINE_CACHE/PREFIX* directories.
prune_cache() {
  local prefix=$1 dir
  while read -r dir; do
    [[ -n $dir ]] || continue
    say "cache: removing least recently used ${dir%/}"
    rm -rf "$dir"
  done < <(ls -1dt "$VITRINE_CACHE/$prefix"*/ 2>/dev/null | tail -n +"$((VITRINE_CACHE_KEEP + 1))")
}
