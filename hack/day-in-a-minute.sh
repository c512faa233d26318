#!/usr/bin/env bash
# A scripted "day in a minute" against `zeroscale dev`: one Function, 24 "hours" of
# 2.5 s each, quiet nights (it scales to zero), a morning ramp, a midday peak; every
# tenth request hits a path that fails with 500, some requests take 200 ms. Prints the
# traffic it sent next to `zeroscale usage`'s table for the same Function.
#
# Usage: hack/day-in-a-minute.sh [path to the zeroscale binary]
# Needs python3 and curl. Runs everything in a temporary folder, on loopback.
set -euo pipefail

zeroscale=${1:-${ZEROSCALE:-target/debug/zeroscale}}
zeroscale=$(realpath "$zeroscale")
work=$(mktemp -d)
export ZEROSCALE_DEV_STATE="$work/state.json"
dev_pid=
cleanup() {
  if [[ -n $dev_pid ]]; then
    kill "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/flaky.py" <<'PY'
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.2)
        status = 500 if self.path.startswith("/fail") else 200
        self.send_response(status)
        self.send_header("Content-Length", "3")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
PY
cat >"$work/flaky.yaml" <<'YAML'
apiVersion: zeroscale.dev/v1alpha1
kind: Function
metadata:
  name: flaky
  annotations:
    zeroscale.dev/local-command: "python3 -u flaky.py"
spec:
  image: zeroscale/flaky:dev
  resources: {requests: {cpu: 250m, memory: 128Mi}}
  scaling: {initialReplicas: 0, scaleToZeroGracePeriod: 6s}
YAML

# Prices near Lambda's x86 list prices, for the COST column.
"$zeroscale" dev "$work" --listen 127.0.0.1:0 --autoscaler-tick 200ms --prices 0.20,0.0000166667,0.0000017 >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 100); do
  address=$(sed -n 's|.*listening on http://\([0-9.:]*\).*|\1|p' "$work/dev.log" | head -1)
  [[ -n $address && -f $ZEROSCALE_DEV_STATE ]] && break
  sleep 0.1
done
[[ -n ${address:-} ]] || { echo "zeroscale dev did not start:" >&2; cat "$work/dev.log" >&2; exit 1; }

# Requests per "hour" (2.5 s), midnight to midnight.
rates=(0 0 0 0 0 0 2 6 12 20 24 28 30 28 24 20 16 12 8 4 2 0 0 0)
sent=0 ok=0 failed=0 other=0 slow=0
started=$(date +%s.%N)
for hour in "${!rates[@]}"; do
  hour_ends=$(python3 -c "print($started + 2.5 * ($hour + 1))")
  for ((n = 0; n < rates[hour]; n++)); do
    sent=$((sent + 1))
    path=/
    if ((sent % 10 == 0)); then path=/fail; elif ((sent % 7 == 0)); then path=/slow; slow=$((slow + 1)); fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: flaky.default' "http://$address$path")
    case $code in 200) ok=$((ok + 1)) ;; 500) failed=$((failed + 1)) ;; *) other=$((other + 1)) ;; esac
  done
  now=$(date +%s.%N)
  python3 -c "import time; time.sleep(max(0.0, $hour_ends - $now))"
done
sleep 3 # the night ends at zero; one more autoscaler tick reads the last counters

echo "Traffic sent over $(python3 -c "print(round($(date +%s.%N) - $started))") s:"
printf '  requests %d: answered 200: %d, 500 (from /fail): %d, other: %d; /slow (200 ms): %d\n' \
  "$sent" "$ok" "$failed" "$other" "$slow"
printf '  per hour: %s\n' "${rates[*]}"
echo
echo "zeroscale usage flaky:"
"$zeroscale" usage flaky
echo
grep -E 'flaky: [0-9]+ -> [0-9]+' "$work/dev.log" | sed 's/^/  dev: /' || true
