#!/usr/bin/env bash
# Fleet rehearsal: N emulated hosts on loopback (each with its own host root, lock file, ports,
# kubelet state dir and `standby`), one fake kube-apiserver, the fake Marathon really deploying
# through the Mesos task emulator, driven by `kubelet-resource-wrapper marathon deploy | scale`.
#   scripts/rehearse-fleet.sh --hosts N [--scenario all|scale-up|roll|api-outage|sigkill|scale-down]
#                             [--time-scale 0.1] [--timeout S] [--keep] [--apiserver-arg ARG]...
# Prints one line of figures per scenario, then exactly
#   fleet: hosts=N min_schedulable=X pdb_violations=P lost_pods=L orphan_pods=O double_kubelets=D roll_s=T
# Exit 0 when every invariant held, 1 when one did not, 2 on a start-up error or the timeout.
# Builds the workspace (debug) first unless FLEET_NO_BUILD=1. Every process it starts is ended.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if [[ ${FLEET_NO_BUILD:-0} != 1 ]]; then
  cargo build --workspace --quiet
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
exec "$TARGET/debug/fleet-rehearsal" --repo "$REPO" "$@"
