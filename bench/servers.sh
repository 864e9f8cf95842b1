# Shell helpers of the bench scripts (node-peer.sh, pathcost.sh), sourced,
# not run: start a server in the background, set SERVER_PID, then
# wait_up URL, and stop_server (TERM, then KILL after 10 s) by its pid.
SERVER_PID=""

stop_server() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -TERM "$SERVER_PID"
		for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	SERVER_PID=""
}

wait_up() { # $1 a URL that answers 2xx once the server is up: up to 15 s
	for _ in $(seq 150); do
		if kill -0 "$SERVER_PID" 2>/dev/null && curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "$(basename "$0"): server at $1 did not come up" >&2
	exit 1
}
