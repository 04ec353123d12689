#!/bin/bash
# Assertions under a real PID 1 systemd. scripts/check-deploy.sh copies this file into the
# node rootfs (role applied, the fake kubelet installed as /usr/bin/kubelet), runs it from a
# oneshot unit at the end of the boot of `systemd-nspawn -b`, and reads back
# /var/lib/krw-check/results: one "ok NAME" or "FAIL NAME: why" line per check. The script
# powers the container off when it is done, whatever happened.
#
# Environment (set by the unit): KRW_CHECK_LEASE_CPUS / KRW_CHECK_LEASE_MEM (the lease `run`
# gets; MiB), KRW_CHECK_RUN_DRAIN (run's drain timeout, seconds).
set -u
OUT=/var/lib/krw-check
RES=$OUT/results
UNIT=kubelet-resource-wrapper-standby.service
RUN=krw-run.service
STATUS=/var/lib/kubelet/fake-kubelet/status.json
AGENT=/usr/bin/kubelet-resource-wrapper
CPUS=${KRW_CHECK_LEASE_CPUS:-1}
MEM=${KRW_CHECK_LEASE_MEM:-1024}
RUN_DRAIN=${KRW_CHECK_RUN_DRAIN:-5}
mkdir -p "$OUT"
: >"$RES"
rm -f "$OUT/sampling" "$OUT/max" "$OUT/samples"

ok() { echo "ok $1" >>"$RES"; }
fail() { echo "FAIL $1: ${2:-}" | tr '\n' ' ' >>"$RES"; echo >>"$RES"; }
# check NAME CMD...: one result line; the command's last output lines explain a failure
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(tail -n 3 <<<"$out")"; fi
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds (rc 0) or time runs out
wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS >= end)) && { "$@"; return 1; }
    sleep 0.2
  done
}
main_pid() { systemctl show -p MainPID --value "$1"; }
# pids of live kubelets (zombies, already dead but not yet reaped, are not counted)
kubelets() { ps -C kubelet -o pid=,stat= | awk '$2 !~ /^Z/ {print $1}'; }
# serving UNIT CPU_MILLICORES MEMORY_BYTES: exactly one kubelet runs, it is the child of UNIT's
# main process, and the status it wrote (pid matches) shows that allocatable.
serving() {
  local pids ppid want
  pids=$(kubelets)
  [[ $(wc -w <<<"$pids") == 1 ]] || { echo "kubelets: [$pids]"; return 1; }
  ppid=$(ps -o ppid= -p "$pids" | tr -d ' ')
  want=$(main_pid "$1")
  [[ "$ppid" == "$want" && "$want" != 0 ]] || { echo "kubelet $pids has parent $ppid, $1 has $want"; return 1; }
  python3 - "$STATUS" "$pids" "$2" "$3" <<'PY'
import json, sys
path, pid, cpu, mem = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    d = json.load(open(path))
except (OSError, ValueError) as e:
    sys.exit(f"{path}: {e}")
a = d.get("allocatable", {})
if d.get("pid") != pid or a.get("cpu_millicores") != cpu or a.get("memory_bytes") != mem:
    sys.exit(f"status pid={d.get('pid')} allocatable={a}, want pid={pid} cpu={cpu} memory={mem}")
PY
}
# pod STATE: the static pod "web" (100m CPU, 64Mi) in the current kubelet's status:
#   running  = admitted, phase Running, its process alive (pid saved in $OUT/pod.pid)
#   rejected = phase Failed, reason OutOfpods (standby runs kubelet with --max-pods=0: the pod count is checked first), and no process of it left
pod() {
  python3 - "$STATUS" "$1" "$OUT/pod.pid" "$(kubelets | head -n 1)" <<'PY'
import json, os, sys
path, want, pidfile, kubelet = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
d = json.load(open(path))
if str(d.get("pid")) != kubelet:
    sys.exit(f"status is from pid {d.get('pid')}, kubelet is {kubelet}")
p = next((p for p in d.get("pods", []) if p.get("name") == "web"), None)
if p is None:
    sys.exit("pod web not in status")
def alive(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip() == "sleep"
    except OSError:
        return False
if want == "running":
    ok = p.get("admitted") and p.get("phase") == "Running" and p.get("pid") and alive(p["pid"])
    if ok:
        open(pidfile, "w").write(str(p["pid"]))
else:
    ok = p.get("phase") == "Failed" and p.get("reason") == "OutOfpods" and not (p.get("pid") and alive(p["pid"]))
if not ok:
    sys.exit(f"pod web: {p}")
PY
}
# the pod process that ran under `run` is gone
pod_process_gone() {
  local pid
  pid=$(cat "$OUT/pod.pid" 2>/dev/null) || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != sleep ]]
}
pod_rejected_and_gone() { pod rejected && pod_process_gone; }
healthz_ok() {
  python3 -c 'import urllib.request as u; r = u.urlopen("http://127.0.0.1:10248/healthz", timeout=2); assert r.status == 200' 2>&1
}
# sampler: counts live kubelets every 50 ms while $OUT/sampling exists
sampler() {
  local max=0 n count=0
  while [[ -e $OUT/sampling ]]; do
    n=$(kubelets | wc -l)
    count=$((count + 1))
    ((n > max)) && max=$n
    echo "$max $count" >"$OUT/max"
    sleep 0.05
  done
}
start_run() {
  systemctl reset-failed "$RUN" >/dev/null 2>&1
  systemd-run --unit="$RUN" -p KillMode=mixed -p TimeoutStopSec=$((RUN_DRAIN + 20)) \
    -E KRW_CPUS="$CPUS" -E KRW_MEM="$MEM" -E KRW_DRAIN_TIMEOUT="$RUN_DRAIN" "$AGENT" run
}
finish() {
  rm -f "$OUT/sampling"
  journalctl -b --no-pager -o short-precise >"$OUT/journal.txt" 2>&1
  echo "done" >>"$OUT/finished"
  systemctl --no-block poweroff
}
trap finish EXIT

LEASE_MEM_BYTES=$((MEM * 1024 * 1024))
LEASE_CPU_M=$(python3 -c "print(round(float('$CPUS') * 1000))")

# a static pod that requests resources: admitted only while the node has allocatable
mkdir -p /etc/kubernetes/manifests
cat >/etc/kubernetes/manifests/web.json <<'EOF'
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
 "spec": {"terminationGracePeriodSeconds": 5, "containers": [{"name": "web", "command": ["sleep", "infinity"],
  "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}
EOF

# 1. boot: standby enabled, running, kubelet with zero allocatable
check "PID 1 is systemd ($(cat /proc/1/comm))" test "$(cat /proc/1/comm)" = systemd
check "standby unit is enabled" test "$(systemctl is-enabled "$UNIT")" = enabled
check "standby unit is active after boot" wait_for 60 systemctl is-active -q "$UNIT"
check "standby's kubelet runs with zero allocatable (cpu 0, memory 0)" wait_for 60 serving "$UNIT" 0 0
check "standby's kubelet runs without the agent-owned reservation in config.yaml" \
  bash -c "! grep -Eq '^(systemReserved|kubeReserved|evictionHard|enforceNodeAllocatable|reservedSystemCPUs|reservedMemory|healthzPort|healthzBindAddress|systemReservedCgroup|kubeReservedCgroup):' /var/lib/kubelet/config.yaml"

check "under standby a pod requesting 100m CPU is rejected (OutOfpods: zero pods), no process" wait_for 30 pod rejected

touch "$OUT/sampling"
sampler &
SAMPLER=$!

# 2. run takes over, no overlap
check "systemd-run starts 'run' (lease cpus=$CPUS mem=${MEM}MiB)" start_run
check "run takes the host over: one kubelet, child of run, allocatable = lease" \
  wait_for 60 serving "$RUN" "$LEASE_CPU_M" "$LEASE_MEM_BYTES"
check "standby stays active (waiting) while run holds the host" systemctl is-active -q "$UNIT"
check "run's /healthz answers 200" wait_for 60 healthz_ok
check "under run the pod is admitted and its process runs" wait_for 30 pod running

# 3. SIGKILL of run: standby takes the host back
check "SIGKILL to run's main process" kill -KILL "$(main_pid "$RUN")"
check "after run's SIGKILL standby takes the host back (zero allocatable)" wait_for 30 serving "$UNIT" 0 0
check "after run's SIGKILL standby's kubelet rejects the pod and stops its process" \
  wait_for 30 pod_rejected_and_gone

# 4. restart of standby: never two kubelets, back with zero allocatable
old=$(main_pid "$UNIT")
check "systemctl restart standby" systemctl restart "$UNIT"
check "after restart a new standby runs kubelet with zero allocatable" \
  bash -c "[[ \$(systemctl show -p MainPID --value $UNIT) != $old ]]"
check "after restart standby's kubelet has zero allocatable" wait_for 60 serving "$UNIT" 0 0

# 5. run again, then a graceful stop of run: it drains and hands back
check "systemd-run starts 'run' again" start_run
check "run takes over again" wait_for 60 serving "$RUN" "$LEASE_CPU_M" "$LEASE_MEM_BYTES"
check "under run the pod runs again" wait_for 30 pod running
t0=$SECONDS
check "systemctl stop run (SIGTERM: drain window ${RUN_DRAIN}s)" timeout $((RUN_DRAIN + 30)) systemctl stop "$RUN"
dt=$((SECONDS - t0))
check "run drained and exited 0 in ${dt}s (drain ${RUN_DRAIN}s + stop)" \
  bash -c "journalctl -u $RUN -o cat | grep -q 'task kill finished' && journalctl -u $RUN -o cat | grep -q 'Deactivated successfully' && (( $dt <= $RUN_DRAIN + 20 ))"
check "run's drain left no pod process on the host" pod_process_gone
check "after run stops standby takes the host back" wait_for 30 serving "$UNIT" 0 0

rm -f "$OUT/sampling"
wait "$SAMPLER"
read -r max samples <"$OUT/max"
check "never two kubelets ($samples samples every 50 ms, max $max)" test "${max:-9}" -le 1 -a "${samples:-0}" -gt 20

# 6. systemctl stop standby: exits cleanly within TimeoutStopSec, kubelet gone
limit=$(systemctl show -p TimeoutStopUSec --value "$UNIT")
limit_s=$(python3 -c "import re,sys; s='$limit'; m=re.fullmatch(r'(?:(\d+)min ?)?(?:(\d+)s)?', s); sys.exit(1) if not m else print(int(m.group(1) or 0)*60+int(m.group(2) or 0))")
t0=$SECONDS
systemctl stop "$UNIT"
dt=$((SECONDS - t0))
check "systemctl stop standby returns in ${dt}s < TimeoutStopSec ($limit)" test "$dt" -lt "${limit_s:-0}"
check "standby exited by itself with status 0 (Result=$(systemctl show -p Result --value "$UNIT"))" \
  bash -c "[[ \$(systemctl show -p Result --value $UNIT) == success && \$(systemctl show -p ExecMainStatus --value $UNIT) == 0 ]]"
check "no kubelet left after stop" bash -c "[[ -z \"\$(ps -C kubelet -o pid=,stat= | awk '\$2 !~ /^Z/')\" ]]"

# 7. journal: the agent's events, one line (one journal entry) each
check "journal: one line per event, each lifecycle event present" python3 - "$UNIT" "$RUN" <<'PY'
import json, subprocess, sys
units = sys.argv[1:]
args = ["journalctl", "-b", "-o", "json", "--no-pager"] + [a for u in units for a in ("-u", u)]
entries = [json.loads(l) for l in subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()]
agent = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "kubelet-resource-wrapper"]
msgs = [e.get("MESSAGE") for e in agent]
bad = [m for m in msgs if not isinstance(m, str) or "\n" in m]
if bad:
    sys.exit(f"multi-line or binary journal entries: {bad[:3]}")
need = ["standby holds the host: kubelet runs with zero allocatable", "asking standby to yield the host",
        "yielded the host to run", "agent started", "task kill finished", "standby stopped; kubelet stopped"]
missing = [n for n in need if not any(n in m for m in msgs)]
if missing:
    sys.exit(f"missing events {missing} among {len(msgs)} entries")
# one event per entry: no entry holds two of the agent's timestamped lines
twice = [m for m in msgs if m.count(" INFO ") + m.count(" WARN ") + m.count(" ERROR ") > 1]
if twice:
    sys.exit(f"entries with two events: {twice[:2]}")
print(f"{len(msgs)} entries")
PY
