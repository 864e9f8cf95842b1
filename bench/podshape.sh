#!/usr/bin/env bash
# One worker per pod, or prefork inside a pod? Both shapes behind the same
# haproxy on this box, in one run (issue 14):
#
#   A: 2 instances × 1 worker  (two pods of one CPU each)
#   B: 1 instance  × 2 workers (one pod of two CPUs)
#
# For each: throughput and latency through haproxy (hybrid bench
# --target, kept-alive connections) for sha256 of 64 KiB on the pool and
# GET /health; the memory of every hybrid process (RSS, summed); the blast
# radius of a crash (kill -9 of one instance's primary, as a pod's OOM kill
# or a node's loss would, under load: failed requests); and what a rolling
# update costs (reload of every instance under load, one after the other:
# failed requests and seconds).
#
#   bash bench/podshape.sh        # DURATION=8s OUT=bench/results/podshape
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/podshape}
DURATION=${DURATION:-8s}
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; pkill -9 -f "$work/hybrid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export PATH="$PATH:/usr/sbin"

CGO_ENABLED=0 go build -o "$work/hybrid" ./cmd/hybrid
head -c 65536 /dev/urandom > "$work/64k.bin"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_instance() { # $1 workers → prints "port adminport pid"
	local port admin
	port=$(free_port); admin=$(free_port)
	"$work/hybrid" serve --addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" --workers "$1" \
		--log-format json --cache-size 0 2>>"$work/log" &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 100); do
		curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
		sleep 0.1
	done
	echo "$port $admin $pid"
}

start_lb() { # ports… → prints the haproxy port
	local lb; lb=$(free_port)
	{
		echo "global"; echo "  maxconn 4000"
		echo "defaults"; echo "  mode http"; echo "  timeout connect 2s"; echo "  timeout client 30s"; echo "  timeout server 30s"
		echo "  option http-keep-alive"; echo "  retries 1"; echo "  option redispatch"
		echo "frontend fe"; echo "  bind 127.0.0.1:$lb"; echo "  default_backend be"
		echo "backend be"; echo "  balance roundrobin"; echo "  http-reuse always"
		echo "  option httpchk GET /ready"
		local i=0
		for p in "$@"; do echo "  server s$i 127.0.0.1:$p check inter 500ms fall 1 rise 2"; i=$((i+1)); done
	} > "$work/haproxy.cfg"
	haproxy -f "$work/haproxy.cfg" -db >>"$work/haproxy.log" 2>&1 &
	pids+=("$!")
	for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$lb/health" >/dev/null 2>&1 && break; sleep 0.1; done
	echo "$lb"
}

rss_kib() { # sum of RSS of every hybrid process of this run
	local s=0
	for p in $(pgrep -f "$work/hybrid serve"); do s=$((s + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
	echo "$s"
}

busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

# load URL SECONDS → "ok failed" from a kept-alive closed loop of 16 curls... a
# Go client is fairer: hybrid bench.
measure() { # $1 shape name, $2 lb port
	local U="http://127.0.0.1:$2"
	local b0; b0=$(busy)
	"$work/hybrid" bench --duration "$DURATION" --warmup 1s -H "Content-Type: application/octet-stream" \
		--target "health=GET $U/health c=32" \
		--target "sha256-64k=POST $U/v1/hash/sha256 @$work/64k.bin c=16" > "$OUT/$1-bench.txt"
	local b1; b1=$(busy)
	echo "$1: rss_kib=$(rss_kib) machine_busy_ticks=$((b1-b0))" >> "$OUT/summary.txt"
	cat "$OUT/$1-bench.txt"
}

# Failures of a kept-alive load while $2 runs; $1 names the case.
under_load() { # $1 case, $2 lb port, $3 command
	local U="http://127.0.0.1:$2"
	"$work/hybrid" bench --duration 6s --warmup 0s -H "Content-Type: application/octet-stream" \
		--target "sha256-64k=POST $U/v1/hash/sha256 @$work/64k.bin c=16" > "$OUT/$1.txt" &
	local bp=$!
	sleep 2
	local t0; t0=$(date +%s.%N)
	eval "$3"
	local t1; t1=$(date +%s.%N)
	wait "$bp" || true
	echo "$1: action took $(echo "$t1 - $t0" | bc) s" >> "$OUT/summary.txt"
	grep -iE "errors|failed|sha256" "$OUT/$1.txt" >> "$OUT/summary.txt" || true
}

: > "$OUT/summary.txt"
echo "== $(date -u +%FT%TZ) $(nproc) CPUs, $(git rev-parse --short HEAD)" >> "$OUT/summary.txt"

# A: 2 × 1
read -r pa aa ida < <(start_instance 1)
read -r pb ab idb < <(start_instance 1)
lb=$(start_lb "$pa" "$pb")
measure "A-2x1" "$lb"
under_load "A-2x1-rolling-update" "$lb" "'$work/hybrid' reload --admin-addr 127.0.0.1:$aa >/dev/null; sleep 1; '$work/hybrid' reload --admin-addr 127.0.0.1:$ab >/dev/null; sleep 1"
under_load "A-2x1-crash" "$lb" "pkill -9 -P $ida; kill -9 $ida"
cleanup; work=$(mktemp -d); pids=()
CGO_ENABLED=0 go build -o "$work/hybrid" ./cmd/hybrid
head -c 65536 /dev/urandom > "$work/64k.bin"

# B: 1 × 2
read -r pc ac idc < <(start_instance 2)
lb=$(start_lb "$pc")
measure "B-1x2" "$lb"
under_load "B-1x2-rolling-update" "$lb" "'$work/hybrid' reload --admin-addr 127.0.0.1:$ac >/dev/null; sleep 2"
under_load "B-1x2-crash" "$lb" "pkill -9 -P $idc; kill -9 $idc"
cat "$OUT/summary.txt"
