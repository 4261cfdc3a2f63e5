#!/usr/bin/env bash
# Run compose on the sitebridge suite with the right file and project name,
# using 'docker compose' or docker-compose, whichever is installed:
#
#   compose/compose.sh up -d           compose/compose.sh stop cloud1.example.com
#   compose/compose.sh ps              compose/compose.sh logs -f onprem1.example.org
#   compose/compose.sh wait [SECONDS]  wait until all four client ports echo (default 60)
#
# See compose/lib.sh for the environment it honours.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${1:-} == wait ]]; then
	command -v nc >/dev/null || sb_die "nc (netcat-openbsd) is needed"
	limit=${2:-60}
	sb_wait_ready "$limit" || exit 1
	for s in "${SB_SERVICES[@]}"; do
		printf '  nc %s %-5s # client -> %-8s -> tunnel -> %s\n' "$SB_HOST" "${SB_PORT[$s]}" "${SB_SHORT[$s]}" "${SB_TARGET[$s]}"
	done
	echo "sitebridge suite is up (project $SB_PROJECT): all four ports echo"
	exit 0
fi
sb_detect_compose
exec "${SB_COMPOSE_CMD[@]}" -p "$SB_PROJECT" -f "$SB_COMPOSE_FILE" "$@"
