#!/bin/sh
# `swarm-join [swarm-peer join flags]`: wait for the coordinator's coordinator.json (a volume shared
# with it, see compose.yaml), then `exec swarm-peer join --initial-peers <its addresses> ...`.
# SWARM_ADVERTISE_HOST, when set, is passed as --advertise-host (the address other machines dial).
set -eu
file="${SWARM_COORDINATOR_JSON:-/var/lib/swarm/coordinator.json}"
waited=0
until [ -s "$file" ]; do
    [ "$waited" -eq 30 ] && echo "swarm-join: still waiting for $file (is the coordinator up?)" >&2
    sleep 1
    waited=$((waited + 1))
done
peers=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["initial_peers"]))' "$file")
if [ -n "${SWARM_ADVERTISE_HOST:-}" ]; then
    set -- --advertise-host "$SWARM_ADVERTISE_HOST" "$@"
fi
# shellcheck disable=SC2086 # one word per multiaddr
exec swarm-peer join --initial-peers $peers "$@"
