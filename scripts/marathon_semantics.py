#!/usr/bin/env python3
"""Semantic checks on Marathon app JSON that the JSON schema cannot express.

Usage: marathon_semantics.py APP.json [APP.json ...]
       marathon_semantics.py --self-test APP.json   (mutates APP.json in memory
                                                    and expects every mutation
                                                    to be rejected)

Rules (see shared/research/marathon.md):
  * health checks: exactly one of port/portIndex (HealthCheckWithPort.Validator),
    at most one Mesos health check (AppValidation.haveAtMostOneMesosHealthCheck),
    the MESOS_HTTP /healthz check on 10248 with timeout > 1 s (the agent's own
    kubelet probe deadline), interval <= 10 s, maxConsecutiveFailures >= 3
    (0 kills at the first failed probe for MESOS_* checks), grace >= delay;
  * constraint ["hostname", "UNIQUE"] present;
  * "args" (wrapper is the root pid), never "cmd";
  * "portDefinitions": [] explicitly (otherwise Marathon allocates a random port);
  * taskKillGracePeriodSeconds set and > env KRW_DRAIN_TIMEOUT;
  * upgradeStrategy rolls one host at a time: maximumOverCapacity == 0 and
    ceil(instances * minimumHealthCapacity) == instances - 1
    (TaskReplaceActor.computeRestartStrategy);
  * unreachableStrategy object: expungeAfter >= inactiveAfter.
Exit 0 when every file passes, 1 otherwise.
"""
import copy
import json
import math
import sys

WRAPPER = "/usr/bin/kubelet-resource-wrapper"


def check(app):
    """Return a list of error strings (empty = ok)."""
    errs = []

    def err(msg):
        errs.append(msg)

    # --- command -----------------------------------------------------------
    if "cmd" in app:
        err("uses 'cmd' (runs under sh -c, so the wrapper is not the task's root pid); use 'args'")
    args = app.get("args")
    if not isinstance(args, list) or not args:
        err("'args' missing or empty")
    else:
        if args[0] != WRAPPER:
            err(f"args[0] is {args[0]!r}, expected {WRAPPER!r}")
        if len(args) < 2 or args[1] != "run":
            err("args[1] must be the 'run' subcommand")

    # --- placement -------------------------------------------------------
    cons = app.get("constraints") or []
    if not any(len(c) >= 2 and c[0] == "hostname" and c[1] == "UNIQUE" for c in cons):
        err("constraint [\"hostname\", \"UNIQUE\"] missing (two kubelets on one host)")
    if app.get("portDefinitions", None) != []:
        err("'portDefinitions' must be [] explicitly (omitted = one random host port)")
    if app.get("ports"):
        err("'ports' must not allocate host ports")

    instances = app.get("instances", 1)
    if not isinstance(instances, int) or instances < 1:
        err(f"instances must be an integer >= 1, got {instances!r}")
        instances = None

    # --- health checks -----------------------------------------------------
    hcs = app.get("healthChecks") or []
    mesos = [h for h in hcs if str(h.get("protocol", "")).startswith("MESOS_")]
    if len(mesos) > 1:
        err(f"{len(mesos)} Mesos health checks; Marathon allows at most one")
    for i, h in enumerate(hcs):
        proto = h.get("protocol", "HTTP")
        if proto != "COMMAND" and (("port" in h) == ("portIndex" in h)):
            err(f"healthChecks[{i}]: exactly one of 'port' and 'portIndex' is required")
    http = [h for h in hcs if h.get("protocol") == "MESOS_HTTP"]
    if len(http) != 1:
        err("exactly one MESOS_HTTP health check is required")
    else:
        h = http[0]
        if h.get("port") != 10248 or h.get("path") != "/healthz":
            err("MESOS_HTTP check must probe port 10248 path /healthz")
        timeout = h.get("timeoutSeconds", 20)
        interval = h.get("intervalSeconds", 60)
        mcf = h.get("maxConsecutiveFailures", 3)
        grace = h.get("gracePeriodSeconds", 300)
        delay = h.get("delaySeconds", 15)
        if not timeout > 1:
            err(f"timeoutSeconds {timeout} must exceed the agent's 1 s internal kubelet probe deadline")
        if timeout == 0:
            err("timeoutSeconds 0 means 'no timeout' to Mesos")
        if interval > 10 or interval <= 0:
            err(f"intervalSeconds {interval} must be in 1..10")
        if timeout >= interval:
            err(f"timeoutSeconds {timeout} must be below intervalSeconds {interval}")
        if mcf < 3:
            err(f"maxConsecutiveFailures {mcf} < 3 (0 kills the task at the first failed probe)")
        if grace < delay:
            err(f"gracePeriodSeconds {grace} < delaySeconds {delay} (grace includes the delay)")

    # --- kill / drain ------------------------------------------------------
    grace = app.get("taskKillGracePeriodSeconds")
    drain = (app.get("env") or {}).get("KRW_DRAIN_TIMEOUT")
    if grace is None:
        err("taskKillGracePeriodSeconds unset (Mesos then uses 3 s)")
    if drain is None:
        err("env KRW_DRAIN_TIMEOUT unset (the wrapper would not know the kill budget)")
    else:
        try:
            drain_i = int(drain)
        except (TypeError, ValueError):
            err(f"env KRW_DRAIN_TIMEOUT {drain!r} is not an integer")
            drain_i = None
        if grace is not None and drain_i is not None and not grace > drain_i:
            err(f"taskKillGracePeriodSeconds {grace} must be > KRW_DRAIN_TIMEOUT {drain_i}")

    # --- upgrade strategy --------------------------------------------------
    us = app.get("upgradeStrategy")
    if not isinstance(us, dict):
        err("upgradeStrategy missing (default 1/1 deadlocks with UNIQUE and no spare host)")
    else:
        moc = us.get("maximumOverCapacity", 1.0)
        mhc = us.get("minimumHealthCapacity", 1.0)
        if moc != 0:
            err(f"maximumOverCapacity {moc} != 0 (needs spare hosts with UNIQUE)")
        if instances is not None:
            min_healthy = math.ceil(instances * mhc)
            if min_healthy != instances - 1:
                err(f"ceil({instances} * {mhc}) = {min_healthy}, expected {instances - 1} "
                    f"(one host at a time); use (N-1.5)/N = {(instances - 1.5) / instances:.4f}")

    # --- unreachable -------------------------------------------------------
    ur = app.get("unreachableStrategy")
    if isinstance(ur, dict):
        ia = ur.get("inactiveAfterSeconds", 0)
        ea = ur.get("expungeAfterSeconds", 0)
        if ea < ia:
            err(f"unreachableStrategy expungeAfterSeconds {ea} < inactiveAfterSeconds {ia}")
    return errs


def mutations(app):
    """Broken variants that must all be rejected (proves the checks bite)."""
    def m(name, fn):
        a = copy.deepcopy(app)
        fn(a)
        return name, a

    def nokia(a):
        a.pop("args")
        a["cmd"] = "/usr/bin/kubelet-resource-wrapper wait"
        a["upgradeStrategy"] = {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}
        a["healthChecks"][0]["maxConsecutiveFailures"] = 0

    yield m("cmd instead of args", lambda a: (a.pop("args"), a.__setitem__("cmd", "x")))
    yield m("no UNIQUE", lambda a: a.__setitem__("constraints", []))
    yield m("portDefinitions omitted", lambda a: a.pop("portDefinitions"))
    yield m("port and portIndex", lambda a: a["healthChecks"][0].__setitem__("portIndex", 0))
    yield m("two Mesos checks", lambda a: a["healthChecks"].append(dict(a["healthChecks"][0])))
    yield m("maxConsecutiveFailures 0", lambda a: a["healthChecks"][0].__setitem__("maxConsecutiveFailures", 0))
    yield m("timeout 1 s", lambda a: a["healthChecks"][0].__setitem__("timeoutSeconds", 1))
    yield m("interval 30 s", lambda a: a["healthChecks"][0].__setitem__("intervalSeconds", 30))
    yield m("kill grace <= drain", lambda a: a.__setitem__("taskKillGracePeriodSeconds", int(a["env"]["KRW_DRAIN_TIMEOUT"])))
    yield m("upgrade 0/0", lambda a: a.__setitem__("upgradeStrategy", {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}))
    yield m("upgrade 1/0", lambda a: a.__setitem__("upgradeStrategy", {"minimumHealthCapacity": 1, "maximumOverCapacity": 0}))
    yield m("rounded-up m (0.67 for N=3)", lambda a: (a.__setitem__("instances", 3), a["upgradeStrategy"].__setitem__("minimumHealthCapacity", 0.67)))
    yield m("over-capacity 1", lambda a: a["upgradeStrategy"].__setitem__("maximumOverCapacity", 1))
    yield m("Nokia 2020 app", nokia)


def main(argv):
    self_test = False
    if argv and argv[0] == "--self-test":
        self_test = True
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 64
    failed = 0
    for path in argv:
        with open(path, encoding="utf-8") as f:
            app = json.load(f)
        if self_test:
            for name, bad in mutations(app):
                errs = check(bad)
                if errs:
                    print(f"ok   {path}: mutation '{name}' rejected: {errs[0]}")
                else:
                    print(f"FAIL {path}: mutation '{name}' was NOT rejected")
                    failed += 1
            continue
        errs = check(app)
        for e in errs:
            print(f"FAIL {path}: {e}")
        if errs:
            failed += 1
        else:
            print(f"ok   {path}: semantic checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
