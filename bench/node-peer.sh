#!/usr/bin/env bash
# Side by side: the Node.js reference peer (cluster + Piscina +
# child_process, ../shared/peers/node-hybrid) against hybrid, both measured
# by `hybrid bench --target` with the same requests, connections and
# durations, each server started here and stopped by its pid. The peer's
# process tree (primary, cluster workers, forked isolate children) and
# hybrid's are both metered with --server-pid.
#
#   bash bench/node-peer.sh            # WORKERS=2 DURATION=10s WARMUP=2s OUT=bench/results/node-peer
#
# The cases and connection counts are the peer's own bench.sh's: health
# (64), sha256 of 64 KiB inline/pool/isolate (32), scrypt N=2^14 r=8 p=1
# (16). Outputs: $OUT/node.json, $OUT/hybrid.json, $OUT/compare.txt (b/a is
# hybrid/node) and each side's report.html.
set -euo pipefail
cd "$(dirname "$0")/.."

PEER=${PEER:-../shared/peers/node-hybrid}
OUT=${OUT:-bench/results/node-peer}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
NODE_PORT=${NODE_PORT:-3000}
HYBRID_PORT=${HYBRID_PORT:-3001}

command -v node >/dev/null || { echo "node-peer: node is not installed" >&2; exit 1; }
[ -f "$PEER/server.js" ] || { echo "node-peer: no peer at $PEER" >&2; exit 1; }
mkdir -p "$OUT"
work=$(mktemp -d)
. bench/servers.sh
trap 'stop_server; rm -rf "$work"' EXIT

# The peer's folder is read-only here: run a copy with its locked deps.
cp -r "$PEER" "$work/peer"
rm -rf "$work/peer/node_modules"
(cd "$work/peer" && npm ci --no-audit --no-fund --silent >/dev/null)

CGO_ENABLED=0 go build -o "$work/hybrid" ./cmd/hybrid
printf '0123456789abcdef%.0s' $(seq 4096) > "$work/64k.bin"        # the peer's wrk body
printf 'correct horse battery staple' > "$work/pw.txt"
# The peer hashes with scrypt N=2^14, r=8, p=1; hybrid refuses to make a new
# hash that weak (N·r·p < 655,360, docs/api.md), but verifies a stored one
# at any strength: the same one scrypt run, so its cell verifies this hash,
# made here by Node's own scrypt.
node -e '
const c = require("crypto"), salt = c.randomBytes(16);
const key = c.scryptSync("correct horse battery staple", salt, 32, {N: 16384, r: 8, p: 1});
const b = x => x.toString("base64").replace(/=+$/, "");
process.stdout.write(JSON.stringify({password: "correct horse battery staple",
  hash: "$scrypt$ln=14,r=8,p=1$" + b(salt) + "$" + b(key)}));' > "$work/pw.json"

bench() { # $1 side, $2 pid, then --target…
	local side=$1 pid=$2
	shift 2
	"$work/hybrid" bench --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" \
		-H "Content-Type: application/octet-stream" --report "$work/out-$side" "$@" | tee "$OUT/$side.txt"
	cp "$work/out-$side/results.json" "$OUT/$side.json"
	cp "$work/out-$side/report.html" "$OUT/$side.html"
}

echo "== node $(node -v): WORKERS=$WORKERS, defaults otherwise (2 Piscina threads and queue 256 per worker)"
N="http://127.0.0.1:$NODE_PORT"
(cd "$work/peer" && exec env WORKERS="$WORKERS" PORT="$NODE_PORT" HOST=127.0.0.1 node server.js) > "$work/node.log" 2>&1 &
SERVER_PID=$!
wait_up "$N/health"
bench node "$SERVER_PID" \
	--target "health=GET $N/health c=64" \
	--target "sha256-64k-inline=POST $N/v1/hash?algo=sha256&mode=inline @$work/64k.bin c=32" \
	--target "sha256-64k-pool=POST $N/v1/hash?algo=sha256&mode=pool @$work/64k.bin c=32" \
	--target "sha256-64k-isolate=POST $N/v1/hash?algo=sha256&mode=isolate @$work/64k.bin c=32" \
	--target "scrypt-n16384=POST $N/v1/password?cost=14 @$work/pw.txt c=16"
stop_server

# hybrid at its defaults but one: modes chosen per request. Its admission is
# the default (by predicted wait, --queue-wait 10s), as users get it.
echo "== hybrid: --workers $WORKERS --allow-mode-override"
H="http://127.0.0.1:$HYBRID_PORT"
"$work/hybrid" serve --addr "127.0.0.1:$HYBRID_PORT" --admin-addr off --workers "$WORKERS" \
	--allow-mode-override --log-level warn 2> "$work/hybrid.log" &
SERVER_PID=$!
wait_up "$H/health"
bench hybrid "$SERVER_PID" \
	--target "health=GET $H/health c=64" \
	--target "sha256-64k-inline=POST $H/v1/hash/sha256?mode=inline @$work/64k.bin c=32" \
	--target "sha256-64k-pool=POST $H/v1/hash/sha256?mode=pool @$work/64k.bin c=32" \
	--target "sha256-64k-isolate=POST $H/v1/hash/sha256?mode=isolate @$work/64k.bin c=32" \
	--target "scrypt-n16384=POST $H/v1/password/verify?mode=pool @$work/pw.json c=16"
stop_server

echo "== hybrid (b) against node (a)"
"$work/hybrid" bench compare "$OUT/node.json" "$OUT/hybrid.json" | tee "$OUT/compare.txt"
