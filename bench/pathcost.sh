#!/usr/bin/env bash
# The request path's cost against bare fasthttp, in one run on one box:
# server CPU per request (whole process tree, from /proc) and latency, for
# GET /health, GET /ready and sha256 of 64 KiB, on bench/bare (one
# process) and on `hybrid serve --workers 1` (primary + one worker; sha256
# on the pool, the default mode). Rounds alternate bare, hybrid, bare,
# hybrid… so that a drift of the machine shows as spread, not as a ratio.
#
#   bash bench/pathcost.sh        # ROUNDS=2 DURATION=5s WARMUP=1s OUT=bench/results/pathcost
#   HYBRID_BIN=/tmp/hybrid-old bash bench/pathcost.sh   # measure another build of hybrid
#
# Outputs: $OUT/{bare,hybrid}-N.json and $OUT/compare-N.txt (b/a is
# hybrid/bare: CPU ms/req b/a is the ratio the targets are stated in).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/pathcost}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
PORT=${PORT:-3011}
mkdir -p "$OUT"
work=$(mktemp -d)
. bench/servers.sh
trap 'stop_server; rm -rf "$work"' EXIT

CGO_ENABLED=0 go build -o "$work/hybrid" ./cmd/hybrid
CGO_ENABLED=0 go build -o "$work/bare" ./bench/bare
server_bin=${HYBRID_BIN:-$work/hybrid}
head -c 65536 /dev/urandom > "$work/64k.bin"
U="http://127.0.0.1:$PORT"
measure() { # $1 name
	"$work/hybrid" bench --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SERVER_PID" \
		-H "Content-Type: application/octet-stream" --report "$work/out-$1" \
		--target "health=GET $U/health c=64" \
		--target "ready=GET $U/ready c=64" \
		--target "sha256-64k=POST $U/v1/hash/sha256 @$work/64k.bin c=32" | tee "$OUT/$1.txt"
	cp "$work/out-$1/results.json" "$OUT/$1.json"
}
for r in $(seq "$ROUNDS"); do
	echo "== round $r: bare fasthttp (GOMAXPROCS $(nproc))"
	"$work/bare" --addr "127.0.0.1:$PORT" & SERVER_PID=$!
	wait_up "$U/ready"; measure "bare-$r"; stop_server
	echo "== round $r: hybrid serve --workers 1"
	"$server_bin" serve --addr "127.0.0.1:$PORT" --admin-addr off --workers 1 --log-level warn 2> "$work/hybrid.log" & SERVER_PID=$!
	wait_up "$U/ready"; measure "hybrid-$r"; stop_server
	"$work/hybrid" bench compare "$OUT/bare-$r.json" "$OUT/hybrid-$r.json" | tee "$OUT/compare-$r.txt"
done
