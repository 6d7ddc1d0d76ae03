#!/usr/bin/env bash
# Ingest benchmark: durable acknowledgements per second versus a bare
# /healthz in the same run (these machines are noisy: the ratio is the
# figure), with wrk at 16 and 64 connections.
#
# Every webhook is signed, has a unique delivery id (X-Request-UUID set per
# request by a wrk script) and the same body; it is answered 202 only after
# the queue has flushed its record to disk. The event key is one hookvault
# records and ignores (`repo:commit_status_created`), so the worker does not
# compete for the CPU: what is measured is receiving, checking, recording
# and flushing.
#
# Usage: bash host/benches/ingest.sh [SECONDS]   (default 10 per run)
# HOOKVAULT_BENCH_LOG_TO=FILE keeps the service's log (RUST_LOG applies).
# Installs wrk (Debian's) when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookvault-target}"

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk
  fi
fi

cargo build --release --locked -q -p hookvault
bin="$CARGO_TARGET_DIR/release/hookvault"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

secret="bench-secret"
cat >"$work/hookvault.toml" <<EOF
[server]
listen = "127.0.0.1:0"
max_body_bytes = 262144
max_connections = 256

[store]
path = "$work/data"

[reconcile]
enabled = false

[[sources]]
name = "cloud"
kind = "cloud"
secrets = ["$secret"]
git_url = "http://127.0.0.1:9/{repo}.git"
EOF

body="examples/payloads/cloud-repo-push.json"
signature="sha256=$(python3 -c 'import hashlib,hmac,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "$secret" "$body")"

"$bin" serve --config "$work/hookvault.toml" >"$work/stdout" 2>"${HOOKVAULT_BENCH_LOG_TO:-$work/log}" &
pid=$!
for _ in $(seq 1 200); do
  if grep -q listening "$work/stdout" 2>/dev/null; then break; fi
  sleep 0.05
done
addr="$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$work/stdout" | head -1)"
[ -n "$addr" ] || { echo "the service did not start:"; cat "$work/log"; exit 1; }

cat >"$work/webhook.lua" <<EOF
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  -- Each run's ids are its own (the run's name is wrk's first argument):
  -- a second run with the first one's ids would measure duplicates.
  run = args[1]
  counter = 0
  local f = assert(io.open("$body", "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Event-Key"] = "repo:commit_status_created"
  wrk.headers["X-Hub-Signature"] = "$signature"
end
function request()
  counter = counter + 1
  wrk.headers["X-Request-UUID"] = string.format("bench-%s-%d-%d", run, tid, counter)
  return wrk.format()
end
function done(summary, latency, requests)
  io.write(string.format("non-2xx answers: %d\n", summary.errors.status))
end
EOF

# One run: requests/s, p50 and p99 in ms.
run() {
  local connections="$1" url="$2" script="${3:-}"
  local args=(-t2 -c"$connections" -d"${seconds}s" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  wrk "${args[@]}" "$url" -- "c$connections" >"$work/wrk.out"
  if grep -q "non-2xx answers: [1-9]" "$work/wrk.out"; then
    echo "some webhooks were not answered 2xx:" >&2
    cat "$work/wrk.out" >&2
    exit 1
  fi
  if grep -q "Non-2xx" "$work/wrk.out"; then
    echo "non-2xx answers:" >&2
    cat "$work/wrk.out" >&2
    exit 1
  fi
  awk '
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v
    }
    END { printf "%.0f %.2f %.2f\n", rps, ms(p50), ms(p99) }
  ' "$work/wrk.out"
}

echo "ingest, ${seconds} s per run, wrk -t2 (durable 202 vs /healthz in the same run)"
for c in 16 64; do
  read -r h_rps h_p50 h_p99 < <(run "$c" "http://$addr/healthz")
  read -r w_rps w_p50 w_p99 < <(run "$c" "http://$addr/webhooks/bitbucket/cloud" "$work/webhook.lua")
  ratio="$(awk -v a="$w_rps" -v b="$h_rps" 'BEGIN { printf "%.2f", a / b }')"
  echo "  $c connections: webhooks $w_rps/s (p50 $w_p50 ms, p99 $w_p99 ms) vs /healthz $h_rps/s (p50 $h_p50 ms, p99 $h_p99 ms): ${ratio}x"
done
