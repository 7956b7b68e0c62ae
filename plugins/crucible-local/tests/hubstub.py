"""A stand-in for the Hugging Face Hub's commit API, on 127.0.0.1, for push_to_hub tests.

Real HTTP, real ``huggingface_hub`` client (pointed here with ``HF_ENDPOINT``):
the stub answers the three calls an ``HfApi.create_repo`` +
``upload_folder`` of small files makes, the way the hub documents them:

- ``POST /api/repos/create`` -> ``{"url": ...}``;
- ``POST /api/validate-yaml`` (a README.md with a metadata block) -> no errors
  (the content is kept in ``cards``);
- ``POST /api/models/{repo}/preupload/{revision}`` -> every file ``regular``
  (so contents travel inline, base64, in the commit; no LFS/Xet storage here);
- ``POST /api/models/{repo}/commit/{revision}`` (NDJSON: a ``header`` line,
  then one ``file`` line per file) -> ``{"commitUrl", "commitOid"}``.

Anything else is answered 404 and listed in ``unexpected``, so a test sees a
client that needs more than this stub knows; except ``GET /api/agent-harnesses``,
a best-effort registry huggingface_hub 2.x fetches for its user agent (it
tolerates a 404), which is only counted in ``ignored``.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from typing import Any

__all__ = ["HubStub"]


class HubStub:
    """``with HubStub() as hub:`` ``hub.url`` is the endpoint; ``hub.commits`` what arrived."""

    def __init__(self) -> None:
        self.repos: list[str] = []
        #: (repo, revision, {path: bytes}, commit message) per commit.
        self.commits: list[tuple[str, str, dict[str, bytes], str]] = []
        self.unexpected: list[str] = []
        self.ignored: list[str] = []
        self.cards: list[str] = []
        self.tokens: list[str] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                stub.tokens.append(self.headers.get("Authorization", ""))
                path = self.path.split("?", 1)[0]
                if path == "/api/repos/create":
                    body = json.loads(raw)
                    name = body["name"]
                    repo = f"{body['organization']}/{name}" if body.get("organization") else name
                    stub.repos.append(repo)
                    self._reply(200, {"url": f"{stub.url}/{repo}"})
                    return
                if path == "/api/validate-yaml":
                    stub.cards.append(json.loads(raw)["content"])
                    self._reply(200, {"errors": [], "warnings": []})
                    return
                parts = path.split("/")
                # /api/models/<org>/<name>/<preupload|commit>/<revision>
                if len(parts) == 7 and parts[:3] == ["", "api", "models"]:
                    repo, action, revision = f"{parts[3]}/{parts[4]}", parts[5], parts[6]
                    if action == "preupload":
                        files = json.loads(raw)["files"]
                        self._reply(
                            200,
                            {
                                "files": [
                                    {
                                        "path": f["path"],
                                        "uploadMode": "regular",
                                        "shouldIgnore": False,
                                    }
                                    for f in files
                                ]
                            },
                        )
                        return
                    if action == "commit":
                        files: dict[str, bytes] = {}
                        message = ""
                        for line in raw.decode().splitlines():
                            if not line.strip():
                                continue
                            item = json.loads(line)
                            if item["key"] == "header":
                                message = item["value"].get("summary", "")
                            elif item["key"] == "file":
                                value = item["value"]
                                assert value.get("encoding") == "base64", value
                                files[value["path"]] = base64.b64decode(value["content"])
                            else:
                                stub.unexpected.append(f"commit line {item['key']}")
                        oid = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
                        stub.commits.append((repo, revision, files, message))
                        self._reply(
                            200, {"commitUrl": f"{stub.url}/{repo}/commit/{oid}", "commitOid": oid}
                        )
                        return
                stub.unexpected.append(f"POST {self.path}")
                self._reply(404, {"error": "not in the stub"})

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/api/agent-harnesses":
                    stub.ignored.append(self.path)
                else:
                    stub.unexpected.append(f"GET {self.path}")
                self._reply(404, {"error": "not in the stub"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
