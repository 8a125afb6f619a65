#!/usr/bin/env bash
# Builds every fuzz target in tests/fuzz with libFuzzer, SanitizerCoverage
# and AddressSanitizer on the stable toolchain (no cargo-fuzz, no nightly),
# runs each for a bounded time, prints a table, and fails on any crash.
# A first build takes 10 to 20 minutes on two cores; later ones seconds.
#
#   tests/fuzz.sh                  all targets, 55 s each (6 targets: 5.5 min)
#   tests/fuzz.sh policy_parse     one target
#
# Environment:
#   FUZZ_SECONDS_PER_TARGET  seconds per target (default 55)
#   FUZZ_CACHE_DIR           where new coverage-increasing inputs and crash
#                            files go (default ~/.cache/vitrine/fuzz); the
#                            seed corpora in tests/fuzz/corpus are only read
#   FUZZ_TARGET_DIR          cargo target dir (default target-fuzz, ignored by git)
#   FUZZ_ASAN=0              leave out AddressSanitizer (default 1: on, through
#                            RUSTC_BOOTSTRAP=1 -Zsanitizer=address, which works
#                            with stable rustc's shipped ASan runtime)
#   FUZZ_SAVE_CRASHES=1      copy crash files into tests/fuzz/regressions/<target>/,
#                            where `cargo test -p vitrine-tests --test
#                            fuzz_regressions` replays them
#   FUZZ_BUILD_ONLY=1        build, do not run
#
# Exit status: 0 when no target crashed, 1 on a crash (its file is printed),
# 2 when the build fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ=$ROOT/tests/fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS_PER_TARGET:-55}
CACHE=${FUZZ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vitrine/fuzz}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/target-fuzz}
ALL_TARGETS=(protocol_decode policy_parse snapshot_load viewer_decode vsock_packet blk_request)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# SanitizerCoverage as cargo-fuzz sets it up: edge counters, the PC table and
# compare tracing that libFuzzer's value profile and CMP hints need. With an
# explicit --target these flags reach only the target's code, not build
# scripts or proc macros.
RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks --cfg fuzzing"
if [ "${FUZZ_ASAN:-1}" = 1 ]; then
    # -Zsanitizer is unstable; RUSTC_BOOTSTRAP lets stable rustc accept it.
    export RUSTC_BOOTSTRAP=1
    RUSTFLAGS="$RUSTFLAGS -Zsanitizer=address"
fi
export RUSTFLAGS

# A new toolchain, lock file, profile or flag set rebuilds every crate beside
# the old builds, which would then stay forever: start such a build afresh.
build_key=$({ rustc -vV; cat "$FUZZ/Cargo.lock" "$FUZZ/Cargo.toml"; echo "$RUSTFLAGS"; } | sha256sum | cut -c1-16)
if [ -d "$CARGO_TARGET_DIR" ] && [ "$(cat "$CARGO_TARGET_DIR/vitrine-build-key" 2>/dev/null)" != "$build_key" ]; then
    echo "fuzz: toolchain, lock file or flags changed: clearing $CARGO_TARGET_DIR"
    rm -rf "$CARGO_TARGET_DIR"
fi
mkdir -p "$CARGO_TARGET_DIR" && echo "$build_key" >"$CARGO_TARGET_DIR/vitrine-build-key"

build_start=$(date +%s)
echo "fuzz: building ${#TARGETS[@]} target(s) (target dir $CARGO_TARGET_DIR)"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
if ! cargo build --manifest-path "$FUZZ/Cargo.toml" --release --target "$TRIPLE" "${bins[@]}"; then
    echo "fuzz: BUILD FAILED" >&2
    exit 2
fi
echo "fuzz: build took $(($(date +%s) - build_start)) s"

# Cargo never deletes the old build of a crate whose source changed, so in a
# cache kept across commits every commit would leave behind another ASan
# build of our crates and of each target binary. Keep only the newest build
# of those; third-party crates change only with Cargo.lock and are kept.
prune_stale_builds() {
    local deps=$CARGO_TARGET_DIR/$TRIPLE/release/deps stem newest hash f freed=0
    [ -d "$deps" ] || return 0
    local stems=("${ALL_TARGETS[@]}")
    while IFS= read -r stem; do stems+=("$stem"); done < <(
        find "$deps" -maxdepth 1 -name 'vitrine_*-*.d' -printf '%f\n' | sed -E 's/-[0-9a-f]{16}\.d$//' | sort -u)
    for stem in "${stems[@]}"; do
        newest=$(ls -t "$deps/$stem"-* "$deps/lib$stem"-* 2>/dev/null | head -n 1) || true
        [ -n "$newest" ] || continue
        hash=$(basename "$newest" | sed -nE 's/.*-([0-9a-f]{16})(\..*)?$/\1/p')
        [ -n "$hash" ] || continue
        for f in "$deps/$stem"-* "$deps/lib$stem"-*; do
            [ -e "$f" ] || continue
            case $(basename "$f") in *"-$hash" | *"-$hash".*) continue ;; esac
            freed=$((freed + $(stat -c %s "$f")))
            rm -f "$f"
        done
    done
    [ "$freed" -eq 0 ] || echo "fuzz: removed $((freed / 1048576)) MiB of stale builds of our own crates"
}
prune_stale_builds
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

status=0
crashes_found=()
rows=()
for t in "${TARGETS[@]}"; do
    bin=$CARGO_TARGET_DIR/$TRIPLE/release/$t
    seeds=$FUZZ/corpus/$t
    regressions=$FUZZ/regressions/$t
    corpus=$CACHE/corpus/$t
    # One artifact directory per run: whatever lands in it is new.
    artifacts=$CACHE/artifacts/$t/$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$corpus" "$artifacts"
    inputs=("$corpus" "$seeds")
    [ -d "$regressions" ] && inputs+=("$regressions")
    log=$CACHE/$t.log
    echo "fuzz: $t for ${SECONDS_PER_TARGET} s"
    # New inputs go to the first corpus directory only: the cache. The
    # seeds and saved crashes are read, never written.
    set +e
    "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${inputs[@]}" >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # Keep the cache small: only inputs that add coverage over the seeds.
    # The seeds go into the merge directory first, so that what the merge
    # adds is what they lack, and are taken out again afterwards.
    merged=$CACHE/corpus.merge/$t
    rm -rf "$merged" && mkdir -p "$merged/in"
    cp "$seeds"/* "$merged/in/"
    if "$bin" -merge=1 -timeout=30 -rss_limit_mb=2560 "$merged/in" "$corpus" >"$log.merge" 2>&1; then
        for f in "$seeds"/*; do rm -f "$merged/in/$(basename "$f")"; done
        rm -rf "$corpus" && mv "$merged/in" "$corpus"
    fi
    rm -rf "$merged"
    size=$(($(find "$seeds" -type f | wc -l) + $(find "$corpus" -type f | wc -l)))
    crashes=$(find "$artifacts" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        echo "fuzz: $t exited with $rc and left no crash file; see $log" >&2
        crashes=1
    fi
    rows+=("$(printf '%-16s %10s %8s %8s %8s' "$t" "${runs:-?}" "${rate:-?}" "$size" "$crashes")")
    if [ "$crashes" -gt 0 ]; then
        status=1
        grep -m1 -A12 -E "panicked|ERROR: (libFuzzer|AddressSanitizer)" "$log" >&2 || true
        while IFS= read -r f; do
            crashes_found+=("$t $f")
            if [ "${FUZZ_SAVE_CRASHES:-0}" = 1 ]; then
                mkdir -p "$regressions" && cp "$f" "$regressions/"
            fi
        done < <(find "$artifacts" -type f)
    fi
done

echo
printf '%-16s %10s %8s %8s %8s\n' target runs exec/s corpus crashes
for r in "${rows[@]}"; do echo "$r"; done
if [ "$status" -ne 0 ]; then
    echo
    echo "fuzz: CRASHES (replay one with: <target dir>/$TRIPLE/release/<target> FILE):" >&2
    for c in "${crashes_found[@]}"; do echo "  $c" >&2; done
    echo "fuzz: copy each into tests/fuzz/regressions/<target>/ (or rerun with FUZZ_SAVE_CRASHES=1) so cargo test replays it" >&2
fi
exit "$status"
