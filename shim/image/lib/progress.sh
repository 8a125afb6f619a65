# Progress lines and long-running steps for build.sh (sourced, not run).

# say MSG: one progress line on stderr, so stdout stays free for the output path.
say() { printf '[image] %s\n' "$*" >&2; }

die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

# run_logged LABEL LOG CMD...: run CMD with its output in LOG, printing a
# progress line every $VITRINE_PROGRESS_EVERY seconds (count of compiled
# objects and elapsed time), and the log's tail if it fails.
run_logged() {
  local label=$1 log=$2; shift 2
  local every=${VITRINE_PROGRESS_EVERY:-15}
  local start=$SECONDS
  "$@" >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    local waited=0
    while (( waited < every )) && kill -0 "$pid" 2>/dev/null; do
      sleep 1; waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      local objs
      objs=$(grep -c '^  CC ' "$log" || true)
      say "$label: still running, ${objs} objects compiled, $((SECONDS - start)) s (log: $log)"
    fi
  done
  if ! wait "$pid"; then
    tail -n 30 "$log" >&2
    die "$label failed after $((SECONDS - start)) s; full log: $log"
  fi
  say "$label: done in $((SECONDS - start)) s"
}
