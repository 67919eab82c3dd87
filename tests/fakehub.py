"""A fake Hugging Face Hub for tests.

A stdlib HTTP server on 127.0.0.1 that the real ``huggingface_hub`` client, and through it transformers' and
peft's ``push_to_hub`` / ``from_pretrained``, can talk to. Scope: model repos, branch ``main``, files held in
memory and always committed inline (preupload answers ``uploadMode: "regular"``, so no LFS / Xet). Every
commit is kept, so older revisions stay downloadable by commit sha.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` once, at import. Point a
client that is already imported at the hub with :meth:`FakeHub.patch_client`, or run code in a fresh
interpreter with :func:`run_with_hub`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

Reply = tuple[int, bytes, dict[str, str]]


def git_blob_sha(content: bytes) -> str:
    """The git blob id of ``content``: the Hub's oid and ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _new_sha(repo_id: str) -> str:
    return hashlib.sha1(f"{repo_id}:{time.time_ns()}".encode()).hexdigest()


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}


@dataclass(frozen=True)
class Commit:
    """One commit on ``main``: its sha, message and the full file tree after it."""

    sha: str
    message: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class Request:
    """One request the hub received: method, unquoted path, parsed query string."""

    method: str
    path: str
    query: dict[str, list[str]]


class HubError(Exception):
    """An error reply: HTTP status plus the ``X-Error-Code`` that the client maps to an exception class."""

    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, dict(headers or {})

    def reply(self, **body: str) -> Reply:
        headers = {"X-Error-Message": str(self), **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _json({"error": str(self), **body}, self.status, headers)


class FakeHub:
    """In-memory fake Hub on a free loopback port. Use as a context manager: ``with FakeHub() as hub: ...``.

    A repo created without a namespace goes under ``user`` (like the real Hub does with the token's user).
    """

    def __init__(self, user: str = "me") -> None:
        self.user = user
        self.requests: list[Request] = []
        self._repos: dict[str, list[Commit]] = {}
        self._lock = threading.Lock()
        repo, rev = r"(?P<repo>[^/]+/[^/]+)", r"(?P<rev>[^/]+)"
        routes: list[tuple[str, str, Callable[..., Reply]]] = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", lambda body, query: _json({})),
            (
                "GET",
                r"/api/agent-harnesses",
                lambda body, query: _json({"standardEnvVars": [], "harnesses": {}}),
            ),
            ("GET", rf"/api/models/{repo}(?:/revision/{rev})?", self._model_info),
            ("GET", rf"/api/models/{repo}/tree/{rev}(?:/(?P<path>.+))?", self._tree),
            ("POST", rf"/api/models/{repo}/preupload/{rev}", self._preupload),
            ("POST", rf"/api/models/{repo}/commit/{rev}", self._commit),
            ("GET", rf"/{repo}/resolve/{rev}/(?P<path>.+)", self._resolve),
            ("HEAD", rf"/{repo}/resolve/{rev}/(?P<path>.+)", self._resolve),
        ]
        self._routes = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        # serve_forever(poll_interval=0.05): shutdown() waits at most one poll interval
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- inspection -------------------------------------------------------------------------------------

    def repos(self) -> list[str]:
        """Ids of all created repos."""
        with self._lock:
            return sorted(self._repos)

    def commits(self, repo_id: str) -> list[Commit]:
        """All commits of ``repo_id``, oldest first; the first one is the empty commit made by create_repo."""
        with self._lock:
            return list(self._repos[repo_id])

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Path -> content of every file at the head of ``main`` of ``repo_id``."""
        return dict(self.commits(repo_id)[-1].files)

    def paths(self, method: str | None = None) -> list[str]:
        """Paths of the logged requests, optionally only those with HTTP ``method``."""
        with self._lock:
            return [r.path for r in self.requests if method in (None, r.method)]

    # --- client set-up ----------------------------------------------------------------------------------

    def env(self, hf_home: str | os.PathLike[str]) -> dict[str, str]:
        """Env vars that point a client imported *afterwards* at this hub, caching under ``hf_home``.

        ``HF_TOKEN`` is a dummy so that no real token from ``~/.cache/huggingface`` is ever sent.
        """
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_TOKEN": "hf_fake",
        }

    @contextmanager
    def patch_client(self, hf_home: str | os.PathLike[str]) -> Iterator[None]:
        """Redirect the already imported ``huggingface_hub`` and ``transformers`` of this process to the hub.

        Sets :meth:`env` in ``os.environ``, overrides the import-time constants derived from it and drops the
        ``HfApi`` instances that captured the old endpoint; all is restored on exit. ``HfApi`` objects created
        before entering keep the old endpoint: create them inside.
        """
        from huggingface_hub import constants, hf_api
        from transformers.utils import hub as transformers_hub

        env = self.env(hf_home)
        with ExitStack() as stack:
            stack.enter_context(mock.patch.dict(os.environ, env))
            stack.enter_context(
                mock.patch.multiple(
                    constants,
                    ENDPOINT=self.endpoint,
                    HUGGINGFACE_CO_URL_TEMPLATE=self.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                    HF_HUB_OFFLINE=False,
                    HF_HUB_CACHE=env["HF_HUB_CACHE"],
                    AGENT_HARNESSES_PATH=str(Path(hf_home) / ".agent_harnesses.json"),
                )
            )
            # the HfApi behind huggingface_hub.create_repo, .file_exists, ... and transformers' lazy singleton
            stack.enter_context(mock.patch.object(hf_api.api, "endpoint", self.endpoint))
            stack.enter_context(mock.patch.object(transformers_hub, "_hf_api", None))
            yield

    # --- request handling (server threads, called with the lock held) -----------------------------------

    def _handle(self, method: str, raw_path: str, body: bytes) -> Reply:
        url = urlsplit(raw_path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.requests.append(Request(method, path, query))
        for route_method, pattern, handler in self._routes:
            if route_method == method and (match := pattern.fullmatch(path)):
                try:
                    return handler(body, query, **match.groupdict())
                except HubError as e:
                    return e.reply()
        return HubError(404, None, f"the fake hub has no route {method} {path}").reply()

    def _commit_at(self, repo_id: str, rev: str) -> Commit:
        if repo_id not in self._repos:
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        commits = self._repos[repo_id]
        found = commits[-1] if rev == "main" else next((c for c in commits if c.sha == rev), None)
        if found is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return found

    def _create_repo(self, body: bytes, query: object) -> Reply:
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, None, "the fake hub only hosts model repos")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self._repos:  # the client reads "url" from the 409 body when exist_ok=True
            return HubError(409, None, "You already created this model repo").reply(url=url)
        self._repos[repo_id] = [Commit(_new_sha(repo_id), "initial commit", {})]
        return _json({"url": url, "name": repo_id})

    def _model_info(self, body: bytes, query: object, repo: str, rev: str | None) -> Reply:
        commit = self._commit_at(repo, rev or "main")
        files = sorted(commit.files.items())
        siblings = [{"rfilename": p, "size": len(c), "blobId": git_blob_sha(c)} for p, c in files]
        return _json(
            {
                "id": repo,
                "author": repo.split("/")[0],
                "sha": commit.sha,
                "private": False,
                "siblings": siblings,
            }
        )

    def _tree(self, body: bytes, query: dict[str, list[str]], repo: str, rev: str, path: str | None) -> Reply:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, content in self._commit_at(repo, rev).files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            folders = [prefix + "/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
            for folder in folders if recursive else folders[:1]:
                entries[folder] = {"type": "directory", "oid": git_blob_sha(folder.encode()), "path": folder}
            if recursive or len(parts) == 1:
                entries[name] = {
                    "type": "file",
                    "oid": git_blob_sha(content),
                    "size": len(content),
                    "path": name,
                }
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        return _json([entries[k] for k in sorted(entries)])

    def _preupload(self, body: bytes, query: object, repo: str, rev: str) -> Reply:
        head = self._commit_at(repo, rev)
        files = []
        for f in json.loads(body)["files"]:
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in head.files:  # lets the client skip unchanged files
                entry["oid"] = git_blob_sha(head.files[f["path"]])
            files.append(entry)
        return _json({"files": files, "commitOid": head.sha})

    def _commit(self, body: bytes, query: dict[str, list[str]], repo: str, rev: str) -> Reply:
        if rev != "main" or query.get("create_pr"):
            raise HubError(400, None, "the fake hub only commits to main, without pull requests")
        files = dict(self._commit_at(repo, rev).files)
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = "\n\n".join(filter(None, [value["summary"], value.get("description")]))
            elif key == "file" and value["encoding"] == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, None, f"the fake hub does not support commit operation {key!r}")
        commit = Commit(_new_sha(repo), message, files)
        self._repos[repo].append(commit)
        return _json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self.endpoint}/{repo}/commit/{commit.sha}",
            }
        )

    def _resolve(self, body: bytes, query: object, repo: str, rev: str, path: str) -> Reply:
        commit = self._commit_at(repo, rev)
        headers = {"X-Repo-Commit": commit.sha}  # also on a 404: the client caches the miss under this commit
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", headers)
        content = commit.files[path]
        return (
            200,
            content,
            {**headers, "ETag": f'"{git_blob_sha(content)}"', "Content-Type": "application/octet-stream"},
        )


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Silence stderr logging; ``hub.requests`` is the log."""

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hub._lock:
                status, content, headers = hub._handle(self.command, self.path, body)
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

    return Handler


def run_with_hub(
    script: str, hub: FakeHub, hf_home: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run python ``script`` in a fresh interpreter whose client talks to ``hub`` (see ``FakeHub.env``)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **hub.env(hf_home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
