"""A fake Kaggle API for tests: an HTTP proxy on 127.0.0.1 that answers the kaggle 2.x client's calls.

The kaggle client sends every call as a POST of JSON to ``{endpoint}/api/v1/{Service}/{Method}``; with
``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the endpoint is ``http://localhost``, and with ``HTTP_PROXY`` pointing here
(``NO_PROXY`` empty) this server receives every request, in absolute form, as a proxy does. ``HTTPS_PROXY`` points
here too and every CONNECT is refused, so nothing can leave the machine even if a URL were https.

The server stops by itself: after ``max_requests`` requests or ``timeout`` seconds, whichever comes first.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

USER = "medkit-tester"
KEY = "k3y-abcdef0123456789"
TOKEN = "tok-0123456789abcdef"


@dataclass
class Call:
    """One request the fake server received."""

    method: str
    host: str
    path: str
    body: Any
    auth: str


@dataclass
class FakeKaggle:
    """Scenario knobs and what was received.

    Attributes:
        competitions: Slugs that exist.
        upload_status: HTTP status of the PUT of an uploaded file (200 = accepted).
        submission_ref: The ref CreateSubmission returns (0 = Kaggle did not register it).
        score_status: Status GetSubmission / ListSubmissions report for a new submission.
        files: Files of every competition's data download (name -> bytes).
        existing_datasets: ``owner/slug`` of datasets that already exist.
        max_requests: Requests served before the server stops.
        timeout: Seconds before the server stops.
    """

    competitions: set[str] = field(default_factory=lambda: {"rsna-intracranial-hemorrhage-detection"})
    upload_status: int = 200
    submission_ref: int = 4242
    score_status: str = "COMPLETE"
    files: dict[str, bytes] = field(default_factory=lambda: {"sample_submission.csv": b"ID,Label\n"})
    existing_datasets: set[str] = field(default_factory=set)
    max_requests: int = 60
    timeout: float = 20.0
    calls: list[Call] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    refused_connects: int = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeKaggle:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.timeout, self.stop)
        self._timer.daemon = True
        self._timer.start()
        self._stopped = False
        return self

    def stop(self) -> None:
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        self._timer.cancel()

        def close() -> None:
            self._server.shutdown()
            self._server.server_close()

        threading.Thread(target=close, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, key: str = KEY) -> None:
        """Point the kaggle client at this server, with fake legacy credentials and a private config folder."""
        for var in (
            "KAGGLE_API_TOKEN",
            "KAGGLE_KERNEL_RUN_TYPE",
            "VERBOSE",
            "VERBOSE_OUTPUT",
            "ALL_PROXY",
            "all_proxy",
        ):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the client keeps upload state in the temp folder
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
        (tmp_path / "kaggle-config").mkdir(exist_ok=True)
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        monkeypatch.setenv("KAGGLE_USERNAME", USER)
        monkeypatch.setenv("KAGGLE_KEY", key)
        for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(var, self.url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(var, "")

    # ------------------------------------------------------------------ what the API answers
    def authorised(self, header: str) -> bool:
        basic = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
        return header in (basic, f"Bearer {TOKEN}")

    def answer(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        """``(status, JSON body or (redirect URL,))`` for one API call."""
        comp = body.get("competitionName")
        if comp is not None and comp not in self.competitions:
            return 404, {"code": 404, "message": f"Competition {comp} not found"}
        if method == "StartSubmissionUpload":
            token = f"blob-{len(self.uploads) + 1}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method == "StartBlobUpload":
            token = f"blob-{len(self.uploads) + 1}-{body.get('name')}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method == "CreateSubmission":
            if body.get("blobFileTokens") not in self.uploads:
                return 400, {"code": 400, "message": "unknown upload token"}
            sub = {
                "ref": self.submission_ref,
                "status": self.score_status,
                "publicScore": "0.0612" if self.score_status == "COMPLETE" else "",
                "description": body.get("submissionDescription", ""),
                "fileName": "submission.csv",
                "date": "2026-01-02T03:04:05Z",
            }
            if self.submission_ref:
                self.submissions.insert(0, sub)
            return 200, {"message": "Successfully submitted", "ref": self.submission_ref}
        if method == "ListSubmissions":
            return 200, {"submissions": self.submissions}
        if method == "DownloadDataFiles":
            return 302, (f"http://localhost/files/{comp}.zip",)
        if method == "DownloadDataFile":
            name = body.get("fileName", "")
            return (302, (f"http://localhost/files/{name}",)) if name in self.files else (404, {"code": 404})
        if method == "IntrospectToken":
            return 200, {"active": body.get("token") == TOKEN, "username": USER}
        return self._datasets_and_kernels(method, body)

    def _datasets_and_kernels(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        if method == "GetDatasetStatus":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref in self.existing_datasets:
                return 200, {"status": "READY"}
            return 404, {"code": 404, "message": "dataset not found"}
        if method in ("CreateDataset", "CreateDatasetVersion"):
            ref = f"{body.get('ownerSlug')}/{body.get('slug') or body.get('datasetSlug')}"
            return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}
        if method == "SaveKernel":
            return 200, {
                "ref": body.get("slug"),
                "url": f"https://www.kaggle.com/code/{body.get('slug')}",
                "versionNumber": 1,
            }
        return 404, {"code": 404, "message": f"no such method {method}"}

    def file_body(self, path: str) -> bytes | None:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".zip") and name[: -len(".zip")] in self.competitions:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for fname, data in self.files.items():
                    zf.writestr(fname, data)
            return buf.getvalue()
        return self.files.get(name)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle
    timeout = 5  # seconds a connection may stay silent

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _target(self) -> tuple[str, str]:
        parts = urlsplit(self.path)
        return parts.hostname or self.headers.get("Host", ""), parts.path or self.path

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _count(self, method: str, body: Any) -> bool:
        host, path = self._target()
        self.fake.calls.append(Call(method, host, path, body, self.headers.get("Authorization", "")))
        if len(self.fake.calls) > self.fake.max_requests:
            self._send(503, {"code": 503, "message": "fake Kaggle: too many requests"})
            self.fake.stop()
            return False
        return True

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_CONNECT(self) -> None:  # noqa: N802  (https through the proxy: never)
        self.fake.refused_connects += 1
        self._count("CONNECT", None)
        self._send(403, {"code": 403, "message": "fake Kaggle refuses CONNECT"})

    def do_POST(self) -> None:  # noqa: N802
        raw = self._body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if not self._count("POST", body):
            return
        host, path = self._target()
        if host != "localhost" or not path.startswith("/api/v1/"):
            self._send(404, {"code": 404, "message": f"unexpected {host}{path}"})
            return
        if not self.fake.authorised(self.headers.get("Authorization", "")) and not path.endswith("IntrospectToken"):
            self._send(401, {"code": 401, "message": "Unauthenticated"})
            return
        status, payload = self.fake.answer(path.rsplit("/", 1)[-1], body)
        if status == 302:
            self.send_response(302)
            self.send_header("Location", payload[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(status, payload)

    def do_PUT(self) -> None:  # noqa: N802
        data = self._body()
        if not self._count("PUT", len(data)):
            return
        _, path = self._target()
        if self.fake.upload_status == 200 and path.startswith("/upload/"):
            self.fake.uploads[path[len("/upload/") :]] = data
        self._send(self.fake.upload_status, {})

    def do_GET(self) -> None:  # noqa: N802
        if not self._count("GET", None):
            return
        _, path = self._target()
        data = self.fake.file_body(path) if path.startswith("/files/") else None
        if data is None:
            self._send(404, {"code": 404, "message": "no such file"})
        else:
            self._send(200, data, "application/octet-stream")


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (rather than hang) when the block runs longer than ``seconds``."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"the fake Kaggle test ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, key: str = KEY, **knobs: Any) -> Iterator[FakeKaggle]:
    """A started fake Kaggle with the client's environment pointed at it; stopped (and checked) afterwards."""
    fake = FakeKaggle(**knobs).start()
    fake.environ(monkeypatch, tmp_path, key=key)
    try:
        with deadline(int(fake.timeout) + 10):
            yield fake
    finally:
        fake.stop()
    assert all(c.host in ("localhost", "127.0.0.1") for c in fake.calls), [c.host for c in fake.calls]
    assert fake.refused_connects == 0
