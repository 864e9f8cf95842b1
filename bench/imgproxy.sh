#!/usr/bin/env bash
# Side by side: imgproxy (libvips through cgo) against hybrid on one
# thumbnail, the comparison of issue 15. Each server is started here on
# 127.0.0.1, measured by `hybrid bench --target` with the same request
# shape (4 connections, DURATION after WARMUP), its process tree metered
# with --server-pid, and stopped by its pid.
#
#   bash bench/imgproxy.sh      # DURATION=10s WARMUP=2s OUT=bench/results/imgproxy
#
# imgproxy is rebuilt from source in a temporary folder against Debian's
# libvips-dev (8.14 on bookworm; imgproxy's vips.c has its own paths for
# vips < 8.15), with cgo, the way its Dockerfile builds it
# (`go build -ldflags "-s -w" ./cli`), every optional integration (cloud
# storage, error reporters, metrics) compiled in as upstream ships it: they
# cost nothing unless configured. The Go modules come from the module proxy
# (go.sum pins them).
#
#   IMGPROXY_REPO   a git repository (or bare git dir) holding imgproxy
#                   (default: the workplace's snapshot of imgproxy/imgproxy)
#   IMGPROXY_REF    the commit built (default: eef3b312, 4.0.12 + 65 on
#                   master, the one first measured for issue 15)
#   IMGPROXY_BUILD  a build folder to keep and reuse: src/ is the checkout,
#                   bin/imgproxy the binary, bin/ref the commit it was built
#                   from; a second run with the same folder and ref builds
#                   nothing (default: a fresh folder under the temp folder,
#                   removed at exit)
#   HEAVY_LOCK      a lock file: the builds and the measurements each run
#                   under `flock` on it, so they never overlap other heavy
#                   runs on a shared box (default: no lock)
#
# Packages: libvips-dev, pkg-config and a C compiler for the build, cjpeg
# (libjpeg-turbo-progs) for the input, python3 for the source server and the
# tables, curl. Missing ones are installed with apt-get when run as root.
#
# The input: a 4000x3000 photo-like image (sampleimages.Photo's gradients)
# with sensor-like grain (uniform +-18 per channel, fixed seed), written as
# a PPM by a small Go program here and encoded by cjpeg -quality 90 (4:2:0,
# baseline, as a camera writes it): 3.69 MB, like the issue's 3.6 MB input.
# bench's own photo generator is quality 85 and Go's encoder; this one is
# libjpeg's at 90, as the issue states.
#
# Why the JPEGs differ in size at the same quality: imgproxy saves with
# libjpeg's optimize_coding (Huffman tables fitted to the image), Go's
# encoder uses the standard tables.
#
# The request, both sides: a 400 px wide JPEG at quality 80 (and the same
# as WebP, sizes and CPU only: imgproxy's is lossy at q80, hybrid's is
# lossless today whatever the quality).
#   hybrid:   POST /v1/image/resize?width=400&format=jpeg&quality=80, body =
#             the image; --cache-size 0 (its result cache would answer
#             every repeat of the same request from memory; imgproxy has no
#             result cache), every other setting at its default.
#   imgproxy: GET /insecure/rs:fit:400:0/q:80/plain/SOURCE@jpg, every
#             setting at its default (4 workers on 2 cores, metadata
#             stripped), unsigned URLs (no key).
# imgproxy only fetches its sources; two sources are measured:
#   http:   a python3 http.server on 127.0.0.1 serves the file, so imgproxy
#           takes the 3.6 MB in over a loopback socket as hybrid takes its
#           request body: the same ingest on both sides, and the sender's
#           CPU outside the metered tree on both sides (bench's client for
#           hybrid, the python server for imgproxy; the latter shows as
#           other_cpu_s). The ratios are against this row: the fairest.
#   local:  local:// with IMGPROXY_LOCAL_FILESYSTEM_ROOT, a read from the
#           page cache: imgproxy's cheapest path, a lower bound.
#
# Outputs in $OUT: one results.json/report.html/txt per server, sizes.txt,
# and table.md (req/s, server-tree CPU ms per thumbnail, whole-machine CPU
# ms per thumbnail, p99, peak RSS, output bytes, ratios hybrid/imgproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/imgproxy}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-4}
IMGPROXY_REPO=${IMGPROXY_REPO:-/work/.mirror/imgproxy+imgproxy/repo}
IMGPROXY_REF=${IMGPROXY_REF:-eef3b31299727e05cb7d35c02cfbb009666dafa6}
IMGPROXY_PORT=${IMGPROXY_PORT:-18081}
SOURCE_PORT=${SOURCE_PORT:-18082}
HYBRID_PORT=${HYBRID_PORT:-18083}
HEAVY_LOCK=${HEAVY_LOCK:-}

work=$(mktemp -d)
BUILD=${IMGPROXY_BUILD:-$work/imgproxy}
SOURCE_PID=""
. bench/servers.sh
cleanup() {
	stop_server
	if [ -n "$SOURCE_PID" ]; then kill "$SOURCE_PID" 2>/dev/null || true; wait "$SOURCE_PID" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

# heavy CMD…: run CMD under the lock, if any (the builds). The measurements
# hold it from lock_heavy to unlock_heavy on descriptor 9; the servers
# started in between close 9, so that none can hold the lock past its stop.
heavy() {
	if [ -n "$HEAVY_LOCK" ]; then flock -o "$HEAVY_LOCK" "$@"; else "$@"; fi
}
lock_heavy() { if [ -n "$HEAVY_LOCK" ]; then exec 9>>"$HEAVY_LOCK"; flock 9; fi; }
unlock_heavy() { if [ -n "$HEAVY_LOCK" ]; then flock -u 9; exec 9>&-; fi; }

# Packages.
need=()
pkg-config --exists vips 2>/dev/null || need+=(libvips-dev pkg-config)
command -v cc >/dev/null || need+=(gcc)
command -v cjpeg >/dev/null || need+=(libjpeg-turbo-progs)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y "${need[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
	else
		echo "imgproxy.sh: install ${need[*]} first" >&2
		exit 1
	fi
fi
echo "== libvips $(pkg-config --modversion vips), $(go version | cut -d' ' -f3)"

# imgproxy, built once per folder and ref.
if [ -x "$BUILD/bin/imgproxy" ] && [ "$(cat "$BUILD/bin/ref" 2>/dev/null)" = "$IMGPROXY_REF" ]; then
	echo "== imgproxy: reusing $BUILD/bin/imgproxy ($IMGPROXY_REF)"
else
	echo "== imgproxy: building $IMGPROXY_REF from $IMGPROXY_REPO in $BUILD"
	mkdir -p "$BUILD/bin"
	[ -d "$BUILD/src/.git" ] || git clone -q --no-checkout "$IMGPROXY_REPO" "$BUILD/src"
	git -C "$BUILD/src" -c advice.detachedHead=false checkout -q -f "$IMGPROXY_REF"
	(cd "$BUILD/src" && go mod download)
	(cd "$BUILD/src" && CGO_ENABLED=1 heavy go build -ldflags "-s -w" -o "$BUILD/bin/imgproxy" ./cli)
	echo "$IMGPROXY_REF" > "$BUILD/bin/ref"
fi
IMGPROXY=$BUILD/bin/imgproxy
echo "   imgproxy $("$IMGPROXY" version)"

echo "== hybrid: static build"
CGO_ENABLED=0 heavy go build -o "$work/hybrid" ./cmd/hybrid

echo "== input"
mkdir -p "$work/src" "$OUT"
cat > "$work/gen.go" <<'EOF'
// A 4000x3000 PPM: sampleimages.Photo's gradients plus uniform grain.
package main

import (
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
)

func main() {
	const w, h, amp = 4000, 3000, 18
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	fmt.Fprintf(out, "P6\n%d %d\n255\n", w, h)
	r := rand.New(rand.NewPCG(4, 4))
	for y := range h {
		for x := range w {
			c := [3]int{
				int(128 + 127*math.Sin(float64(x)/float64(w)*9)),
				int(128 + 127*math.Cos(float64(y)/float64(h)*7)),
				(x*x + y*y) * 255 / (w*w + h*h),
			}
			for _, v := range c {
				v += r.IntN(2*amp+1) - amp
				out.WriteByte(byte(min(max(v, 0), 255)))
			}
		}
	}
	out.Flush()
}
EOF
(cd "$work" && heavy go build -o gen gen.go)
heavy sh -c '"$1/gen" | cjpeg -quality 90 > "$1/src/in.jpg"' sh "$work"
IN=$work/src/in.jpg
echo "   $(stat -c %s "$IN") bytes, $(file -b "$IN" | grep -o '[0-9]*x[0-9]*, components [0-9]' || true)"

# bench SIDE PID --target…: measure, keep the report.
bench() {
	local side=$1 pid=$2
	shift 2
	"$work/hybrid" bench --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" \
		-H "Content-Type: image/jpeg" --report "$work/out-$side" "$@" | tee "$OUT/$side.txt"
	cp "$work/out-$side/results.json" "$OUT/$side.json"
	cp "$work/out-$side/report.html" "$OUT/$side.html"
}

# size NAME URL [curl args…]: one request's answer, kept, its size noted.
: > "$OUT/sizes.txt"
size() {
	local name=$1 url=$2
	shift 2
	curl -fsS -o "$work/$name.out" "$@" "$url"
	echo "$name $(stat -c %s "$work/$name.out") $(file -b "$work/$name.out")" | tee -a "$OUT/sizes.txt"
}

lock_heavy
echo "== imgproxy $("$IMGPROXY" version): defaults (IMGPROXY_WORKERS = 2 x GOMAXPROCS), no key"
I="http://127.0.0.1:$IMGPROXY_PORT"
python3 -m http.server "$SOURCE_PORT" --bind 127.0.0.1 --directory "$work/src" > "$work/source.log" 2>&1 9>&- &
SOURCE_PID=$!
env IMGPROXY_BIND="127.0.0.1:$IMGPROXY_PORT" IMGPROXY_LOCAL_FILESYSTEM_ROOT="$work/src" \
	IMGPROXY_ALLOW_LOOPBACK_SOURCE_ADDRESSES=true IMGPROXY_LOG_LEVEL=warn \
	"$IMGPROXY" > "$work/imgproxy.log" 2>&1 9>&- &
SERVER_PID=$!
wait_up "$I/health"
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$SOURCE_PORT/in.jpg" 2>/dev/null && break; sleep 0.1; done
HTTPSRC="plain/http://127.0.0.1:$SOURCE_PORT/in.jpg"
LOCALSRC="plain/local:///in.jpg"
size imgproxy-http-jpeg "$I/insecure/rs:fit:400:0/q:80/$HTTPSRC@jpg"
size imgproxy-http-webp "$I/insecure/rs:fit:400:0/q:80/$HTTPSRC@webp"
size imgproxy-local-jpeg "$I/insecure/rs:fit:400:0/q:80/$LOCALSRC@jpg"
size imgproxy-local-webp "$I/insecure/rs:fit:400:0/q:80/$LOCALSRC@webp"
bench imgproxy "$SERVER_PID" \
	--target "imgproxy-http-jpeg=GET $I/insecure/rs:fit:400:0/q:80/$HTTPSRC@jpg c=$CONNS" \
	--target "imgproxy-http-webp=GET $I/insecure/rs:fit:400:0/q:80/$HTTPSRC@webp c=$CONNS" \
	--target "imgproxy-local-jpeg=GET $I/insecure/rs:fit:400:0/q:80/$LOCALSRC@jpg c=$CONNS" \
	--target "imgproxy-local-webp=GET $I/insecure/rs:fit:400:0/q:80/$LOCALSRC@webp c=$CONNS"
stop_server
kill "$SOURCE_PID" 2>/dev/null || true
wait "$SOURCE_PID" 2>/dev/null || true
SOURCE_PID=""

H="http://127.0.0.1:$HYBRID_PORT"
for mode in pool isolate; do
	args=(--cache-size 0)
	[ "$mode" = pool ] && args+=(--mode image=pool)
	echo "== hybrid $mode: serve --admin-addr off ${args[*]}, defaults otherwise"
	"$work/hybrid" serve --addr "127.0.0.1:$HYBRID_PORT" --admin-addr off --log-level warn "${args[@]}" \
		2> "$work/hybrid-$mode.log" 9>&- &
	SERVER_PID=$!
	wait_up "$H/health"
	size "hybrid-$mode-jpeg" "$H/v1/image/resize?width=400&format=jpeg&quality=80" -H "Content-Type: image/jpeg" --data-binary "@$IN"
	size "hybrid-$mode-webp" "$H/v1/image/resize?width=400&format=webp&quality=80" -H "Content-Type: image/jpeg" --data-binary "@$IN"
	bench "hybrid-$mode" "$SERVER_PID" \
		--target "hybrid-$mode-jpeg=POST $H/v1/image/resize?width=400&format=jpeg&quality=80 @$IN c=$CONNS" \
		--target "hybrid-$mode-webp=POST $H/v1/image/resize?width=400&format=webp&quality=80 @$IN c=$CONNS"
	stop_server
done
unlock_heavy

echo "== table (ratios: hybrid / imgproxy with the http source)"
python3 - "$OUT" > "$OUT/table.md" <<'EOF'
import json, sys
out = sys.argv[1]
cells, sizes = {}, {}
for side in ("imgproxy", "hybrid-pool", "hybrid-isolate"):
    for c in json.load(open(f"{out}/{side}.json"))["cells"]:
        cells[c["name"]] = c
for line in open(f"{out}/sizes.txt"):
    name, n = line.split()[:2]
    sizes[name] = int(n)

def fig(name):
    r = cells[name]["result"]
    s = r["server"]
    return dict(rps=r["ok_per_s"], cpu=s["cpu_ms_per_req"], mcpu=1000 * r["machine_cpu_s"] / max(r["ok"], 1),
                p99=r["latency_ms"]["p99"], rss=s["peak_rss_bytes"] / 2**20, bytes=sizes[name],
                other=s["other_cpu_s"], err=r["requests"] - r["ok"])

rows = [("imgproxy, http source", "imgproxy-http"), ("imgproxy, local:// source", "imgproxy-local"),
        ("hybrid, pool", "hybrid-pool"), ("hybrid, isolate (default)", "hybrid-isolate")]
for fmt in ("jpeg", "webp"):
    print(f"\n### {fmt.upper()} 400 px wide, q80, {cells[rows[0][1] + '-' + fmt]['concurrency']} connections\n")
    print("| server | req/s | CPU ms/thumb (server tree) | CPU ms/thumb (whole machine) | p99 ms | peak RSS MiB | output bytes | non-2xx | other CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = fig(rows[0][1] + "-" + fmt)
    for label, key in rows:
        f = fig(key + "-" + fmt)
        print(f"| {label} | {f['rps']:.1f} | {f['cpu']:.1f} | {f['mcpu']:.1f} | {f['p99']:.0f} | {f['rss']:.0f} | {f['bytes']} | {f['err']} | {f['other']:.1f} |")
    for label, key in rows[2:]:
        f = fig(key + "-" + fmt)
        print(f"| *{label} / imgproxy http* | {f['rps']/base['rps']:.2f}x | {f['cpu']/base['cpu']:.2f}x | {f['mcpu']/base['mcpu']:.2f}x | "
              f"{f['p99']/base['p99']:.2f}x | {f['rss']/base['rss']:.2f}x | {f['bytes']/base['bytes']:.2f}x | | |")
EOF
cat "$OUT/table.md"
