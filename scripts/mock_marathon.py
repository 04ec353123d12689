#!/usr/bin/env python3
"""Minimal stand-in for target/debug/fake-marathon, used by check-deploy.sh
ONLY when the Rust fake is not built or does not start. Same command line and
start-up line:

  mock_marathon.py --listen 127.0.0.1:0 --schema AppDefinition.json --hosts h1,h2,h3
  -> prints "listening on http://127.0.0.1:PORT"

Implements what the Ansible playbooks use: GET /v2/apps/{id}[?embed=...],
PUT /v2/apps/{id}[?partialUpdate=false] (schema-validated, 422 on error,
409 "locked" for the first PUT when --conflict-first-put is given, to exercise
the retry; HTTP Basic auth with --credentials user:pass), and GET /v2/apps/{id}/tasks (one task per host, UNIQUE). Like
Marathon it returns normalised apps (extra fields such as version), so the
playbooks' "only PUT when something differs" logic is tested against that.
"""
import argparse
import base64
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

try:
    import jsonschema
except ImportError:  # validation is optional
    jsonschema = None

STATE = {"apps": {}, "conflicts_left": 0, "validator": None, "hosts": [], "auth": None}
LOCK = threading.Lock()


def normalise(app):
    app = dict(app)
    app.setdefault("disk", 0)
    app.setdefault("gpus", 0)
    app.setdefault("backoffSeconds", 1)
    app.setdefault("backoffFactor", 1.15)
    app.setdefault("maxLaunchDelaySeconds", 300)
    app.setdefault("killSelection", "YOUNGEST_FIRST")
    app.setdefault("requirePorts", False)
    app.setdefault("labels", {})
    app.setdefault("env", {})
    app["version"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return app


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("mock-marathon: " + fmt % args + "\n")

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorised(self):
        if STATE["auth"] is None:
            return True
        if self.headers.get("Authorization", "") == STATE["auth"]:
            return True
        self.reply(401, {"message": "Unauthorized"})
        return False

    def app_id(self):
        path = urlsplit(self.path).path
        if not path.startswith("/v2/apps/"):
            return None, None
        rest = "/" + path[len("/v2/apps/"):].strip("/")
        if rest.endswith("/tasks"):
            return rest[: -len("/tasks")], "tasks"
        return rest, "app"

    def do_GET(self):
        if not self.authorised():
            return
        app_id, kind = self.app_id()
        with LOCK:
            app = STATE["apps"].get(app_id)
        if app is None:
            return self.reply(404, {"message": f"App '{app_id}' does not exist"})
        if kind == "tasks":
            n = min(app.get("instances", 0), len(STATE["hosts"]))
            tasks = [{"id": f"{app_id.strip('/').replace('/', '_')}.{i}", "host": h,
                      "state": "TASK_RUNNING", "appId": app_id}
                     for i, h in enumerate(STATE["hosts"][:n])]
            return self.reply(200, {"tasks": tasks})
        out = dict(app)
        if "app.deployments" in parse_qs(urlsplit(self.path).query).get("embed", []):
            out["deployments"] = []
        return self.reply(200, {"app": out})

    def do_PUT(self):
        if not self.authorised():
            return
        app_id, kind = self.app_id()
        if kind != "app":
            return self.reply(404, {"message": "not found"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except ValueError:
            return self.reply(400, {"message": "Invalid JSON"})
        query = parse_qs(urlsplit(self.path).query)
        partial = query.get("partialUpdate", ["true"])[0] != "false"
        with LOCK:
            if STATE["conflicts_left"] > 0:
                STATE["conflicts_left"] -= 1
                return self.reply(409, {"message": "App is locked by one or more deployments."})
            current = STATE["apps"].get(app_id)
            merged = dict(current or {}) if partial else {}
            for k in ("version",):
                merged.pop(k, None)
            merged.update(body)
            merged["id"] = app_id
            if STATE["validator"] is not None:
                errors = sorted(STATE["validator"].iter_errors(merged), key=lambda e: list(e.path))
                if errors:
                    return self.reply(422, {"message": "Object is not valid", "details": [
                        {"path": "/" + "/".join(map(str, e.path)), "errors": [e.message]} for e in errors]})
            STATE["apps"][app_id] = normalise(merged)
        return self.reply(201 if current is None else 200,
                          {"deploymentId": str(uuid.uuid4()), "version": STATE["apps"][app_id]["version"]})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--schema")
    ap.add_argument("--hosts", default="")
    ap.add_argument("--credentials", help="require HTTP Basic user:pass")
    ap.add_argument("--conflict-first-put", action="store_true")
    a = ap.parse_args()
    STATE["hosts"] = [h for h in a.hosts.split(",") if h]
    STATE["conflicts_left"] = 1 if a.conflict_first_put else 0
    if a.credentials:
        STATE["auth"] = "Basic " + base64.b64encode(a.credentials.encode()).decode()
    if a.schema and jsonschema is not None:
        with open(a.schema, encoding="utf-8") as f:
            STATE["validator"] = jsonschema.Draft4Validator(json.load(f))
    host, port = a.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"listening on http://{host}:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
