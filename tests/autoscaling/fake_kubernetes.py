"""A stand-in for the Kubernetes API server (none can run here): it answers the Deployment scale
subresource the way the real one does and records every request, so the official client's real HTTP
calls can be checked. Only the scale subresource of apps/v1 is served."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SCALE_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")


class FakeKubernetes:
    def __init__(self, refuse_with: int | None = None):
        self.requests: list[dict] = []
        self.replicas: dict[tuple[str, str], int] = {}
        self.refuse_with = refuse_with
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_PATCH(self):
                url = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                query = parse_qs(url.query)
                fake.requests.append({"method": "PATCH", "path": url.path, "query": query, "body": body,
                                      "content_type": self.headers.get("Content-Type")})
                match = SCALE_PATH.match(url.path)
                if fake.refuse_with or not match:
                    status = fake.refuse_with or 404
                    return self._json(status, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                               "message": "deployments.apps \"x\" is forbidden", "code": status})
                namespace, name = match.groups()
                replicas = body["spec"]["replicas"]
                if "All" not in query.get("dryRun", []):  # a dry run changes nothing
                    fake.replicas[(namespace, name)] = replicas
                self._json(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                 "metadata": {"name": name, "namespace": namespace},
                                 "spec": {"replicas": replicas}, "status": {"replicas": replicas}})

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path) -> str:
        path.write_text(json.dumps({  # YAML is a superset of JSON
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tollgate", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tollgate"}}],
        }))
        return str(path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
