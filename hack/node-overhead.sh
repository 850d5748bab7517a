#!/usr/bin/env bash
# The node agent beside node_exporter, in one window: both started together, the agent
# streaming a sample every 15 s to a loopback sink, node_exporter scraped every 15 s (as
# Prometheus would). Prints each one's peak and current RSS and CPU time from /proc.
#
#   hack/node-overhead.sh [seconds=180]
#
# Needs node_exporter on PATH (Debian: apt-get install prometheus-node-exporter).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-180}
EXPORTER=$(command -v node_exporter || command -v prometheus-node-exporter || true)
if [ -z "$EXPORTER" ]; then
  echo "node_exporter not found (apt-get install prometheus-node-exporter)" >&2
  exit 2
fi
cargo build -q --release -p sovereign-node-agent --bin sovereign-node
cargo build -q --release -p sovereign-telemetry --example telemetry-sink

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port)
EXP_PORT=$(free_port)
WORK=$(mktemp -d)
TOKEN=overhead-$$
echo -n "$TOKEN" >"$WORK/token"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

target/release/examples/telemetry-sink "127.0.0.1:$SINK_PORT" "$TOKEN" >"$WORK/sink.log" 2>&1 &
pids+=($!)
sleep 1
target/release/sovereign-node --operator "http://127.0.0.1:$SINK_PORT" --token-file "$WORK/token" \
  --server overhead-node --interval-seconds 15 >"$WORK/node.log" 2>&1 &
NODE=$!
pids+=("$NODE")
"$EXPORTER" --web.listen-address="127.0.0.1:$EXP_PORT" >"$WORK/exporter.log" 2>&1 &
EXP=$!
pids+=("$EXP")

end=$((SECONDS + SECONDS_TO_RUN))
scrapes=0
while [ "$SECONDS" -lt "$end" ]; do
  curl -sf "http://127.0.0.1:$EXP_PORT/metrics" >/dev/null && scrapes=$((scrapes + 1)) || true
  sleep 15
done

report() { # name pid
  local hwm rss ticks hz
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$2/status")
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$2/status")
  ticks=$(awk '{print $14 + $15}' "/proc/$2/stat")
  hz=$(getconf CLK_TCK)
  printf '%-16s peak RSS %6d KiB  RSS %6d KiB  CPU %5d ms over %d s\n' \
    "$1" "$hwm" "$rss" "$((ticks * 1000 / hz))" "$SECONDS_TO_RUN"
}
echo "one window of ${SECONDS_TO_RUN} s; node agent sample and node_exporter scrape every 15 s ($scrapes scrapes)"
report sovereign-node "$NODE"
report node_exporter "$EXP"
grep -c "changed: overhead-node" "$WORK/sink.log" | sed 's/^/samples the sink saw change: /'
