# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this
# Shared by compose/compose.sh and compose/drill.sh (sourced, not run).
#
# Environment (all optional):
#   COMPOSE                   the compose command, e.g. "docker-compose"; default:
#                             'docker compose' if that works, else docker-compose
#   SITEBRIDGE_PROJECT        compose project name (default sitebridge)
#   SITEBRIDGE_IMAGE          image to run (default sitebridge:local)
#   SITEBRIDGE_BIND           host address of the published ports (default 127.0.0.1)
#   SITEBRIDGE_PORT_CLOUD1 .. SITEBRIDGE_PORT_ONPREM2   host ports (5551 5552 6661 6662)

SB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SB_COMPOSE_FILE=$SB_DIR/docker-compose.yml
SB_PROJECT=${SITEBRIDGE_PROJECT:-sitebridge}
SB_BIND=${SITEBRIDGE_BIND:-127.0.0.1}
# The published address to probe: an unspecified bind address means loopback works.
case $SB_BIND in 0.0.0.0 | '' | '::') SB_HOST=127.0.0.1 ;; *) SB_HOST=$SB_BIND ;; esac

# The four instances: service name, short name, host port, what the port reaches.
SB_SERVICES=(cloud1.example.com cloud2.example.com onprem1.example.org onprem2.example.org)
declare -A SB_SHORT=(
	[cloud1.example.com]=cloud1 [cloud2.example.com]=cloud2
	[onprem1.example.org]=onprem1 [onprem2.example.org]=onprem2
)
declare -A SB_PORT=(
	[cloud1.example.com]=${SITEBRIDGE_PORT_CLOUD1:-5551}
	[cloud2.example.com]=${SITEBRIDGE_PORT_CLOUD2:-5552}
	[onprem1.example.org]=${SITEBRIDGE_PORT_ONPREM1:-6661}
	[onprem2.example.org]=${SITEBRIDGE_PORT_ONPREM2:-6662}
)
declare -A SB_TARGET=(
	[cloud1.example.com]=server-a [cloud2.example.com]=server-a
	[onprem1.example.org]=server-b [onprem2.example.org]=server-b
)

sb_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
sb_die() {
	sb_log "ERROR: $*"
	exit 1
}

# sb_detect_compose sets SB_COMPOSE_CMD to the compose command to use.
sb_detect_compose() {
	if [[ -n ${COMPOSE:-} ]]; then
		read -ra SB_COMPOSE_CMD <<<"$COMPOSE"
	elif docker compose version >/dev/null 2>&1; then
		SB_COMPOSE_CMD=(docker compose)
	elif command -v docker-compose >/dev/null 2>&1; then
		SB_COMPOSE_CMD=(docker-compose)
	else
		sb_die "neither 'docker compose' nor 'docker-compose' is installed"
	fi
}

# sb_compose runs compose on this suite's file and project.
sb_compose() {
	[[ -n ${SB_COMPOSE_CMD+x} ]] || sb_detect_compose
	SITEBRIDGE_BIND=$SB_BIND "${SB_COMPOSE_CMD[@]}" -p "$SB_PROJECT" -f "$SB_COMPOSE_FILE" "$@"
}

# sb_now_ms prints a monotonic-enough wall clock in milliseconds.
sb_now_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	echo $((t / 1000))
}

# sb_fmt_ms MS prints MS as seconds with two decimals.
sb_fmt_ms() { printf '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }

# sb_probe PORT [TIMEOUT]: one line through real 'nc -N'; true if it comes
# back unchanged. Bounded by TIMEOUT seconds (default 8: longer than the
# gateway's 5 s open-timeout, within which a held client must be served).
# Sets SB_PROBE_MS to the time it took.
sb_probe() {
	local port=$1 limit=${2:-8} token out t0
	token="sitebridge-probe-$port-$RANDOM$RANDOM"
	t0=$(sb_now_ms)
	out=$(printf '%s\n' "$token" | timeout "$limit" nc -N -w "$limit" "$SB_HOST" "$port" 2>/dev/null) || true
	SB_PROBE_MS=$(($(sb_now_ms) - t0))
	[[ $out == "$token" ]]
}

# sb_wait_echo PORT LIMIT_SECONDS: probe until one echoes, at most
# LIMIT_SECONDS. Sets SB_WAIT_MS to the time until it did.
sb_wait_echo() {
	local port=$1 limit=$2 t0 left
	t0=$(sb_now_ms)
	while :; do
		left=$((limit * 1000 - ($(sb_now_ms) - t0)))
		((left > 0)) || return 1
		if sb_probe "$port" $(((left + 999) / 1000 < 8 ? (left + 999) / 1000 : 8)); then
			SB_WAIT_MS=$(($(sb_now_ms) - t0))
			return 0
		fi
		sleep 0.1
	done
}

# sb_wait_ready LIMIT_SECONDS: every instance's client port echoes.
sb_wait_ready() {
	local limit=$1 s
	for s in "${SB_SERVICES[@]}"; do
		sb_wait_echo "${SB_PORT[$s]}" "$limit" ||
			{ sb_log "${SB_SHORT[$s]} (port ${SB_PORT[$s]}) did not echo within ${limit}s"; return 1; }
	done
}
