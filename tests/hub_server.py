"""A small Hugging Face Hub look-alike on loopback, for push/pull tests without the network.

It speaks the endpoints ``huggingface_hub`` uses for dataset repos (found by running the
real client against it and reading ``hf_api.py``, ``_commit_api.py``, ``file_download.py``):

- ``POST /api/repos/create``                       create a repo (409 if it exists)
- ``POST /api/validate-yaml``                      README metadata check (always fine)
- ``GET  /api/datasets/{repo}[/revision/{rev}]``   repo info with the head ``sha``
- ``POST /api/datasets/{repo}/branch/{branch}``    create a branch (409 if it exists)
- ``POST /api/datasets/{repo}/preupload/{rev}``    every file is uploaded as "regular"
- ``POST /api/datasets/{repo}/commit/{rev}``       NDJSON commit; a stale ``parentCommit`` -> 412
- ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]`` listing, ``recursive``, paged by ``Link``
- ``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}`` file bytes with ETag, X-Repo-Commit,
  Content-Length

State lives in memory: per repo, commits (full file maps) and branch heads. With ``token``
set, every request must carry ``Authorization: Bearer <token>`` or gets a 401.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

API_RE = re.compile(r"^/api/datasets/([^/]+)/([^/]+)(?:/(revision|preupload|commit|tree|branch)(?:/(.*))?)?$")
RESOLVE_RE = re.compile(r"^/datasets/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if len(rev) >= 7:
            found = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class FakeHub:
    """The server's state plus the thread running it; ``url`` is the endpoint to use."""

    def __init__(self, token: str | None = None, page_size: int = 50) -> None:
        self.token = token
        self.page_size = page_size
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.commit_statuses: list[int] = []
        self.before_commit: Callable[[str], None] | None = None  # called with the repo id per commit
        self._counter = itertools.count()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    # ---- state helpers (also used by tests) -----------------------------------------
    def new_commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}|{parent}|{message}|{next(self._counter)}".encode()
        listing = b"".join(sorted(git_blob_oid(v).encode() + k.encode() for k, v in files.items()))
        oid = hashlib.sha1(seed + listing).hexdigest()
        commit = Commit(oid, parent, message, files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def external_commit(self, repo_id: str, path: str, data: bytes, branch: str = "main") -> str:
        """Another writer commits to ``repo_id``: moves the head under a pusher's feet."""
        with self.lock:
            repo = self.repos[repo_id]
            files = dict(repo.commits[repo.branches[branch]].files)
            files[path] = data
            return self.new_commit(repo, branch, files, f"external: {path}").oid

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        with self.lock:
            commit = self.repos[repo_id].resolve(rev)
            assert commit is not None
            return dict(commit.files)

    def history(self, repo_id: str, branch: str = "main") -> list[Commit]:
        with self.lock:
            repo = self.repos[repo_id]
            out, oid = [], repo.branches.get(branch)
            while oid:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---- plumbing --------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":  # a body after a HEAD response would poison the kept-alive connection
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _dispatch(self) -> None:
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            self._check_auth()
            match = API_RE.match(urlsplit(self.path).path)
            if match and match.group(3) == "commit" and self.hub.before_commit is not None:
                self.hub.before_commit(f"{match.group(1)}/{match.group(2)}")  # outside the lock
            with self.hub.lock:
                self._route(body)
        except HttpError as err:
            headers = {"X-Error-Code": err.code} if err.code else {}
            headers["X-Error-Message"] = err.message
            self._json(err.status, {"error": err.message, **err.extra}, headers)

    do_GET = do_POST = do_HEAD = do_PUT = _dispatch

    def _check_auth(self) -> None:
        if self.hub.token is None:
            return
        given = self.headers.get("Authorization", "")
        if given != f"Bearer {self.hub.token}":
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _repo(self, ns: str, name: str) -> Repo:
        repo = self.hub.repos.get(f"{ns}/{name}")
        if repo is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # ---- routes ----------------------------------------------------------------------
    def _route(self, body: bytes) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        path = split.path
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo(json.loads(body))
        if path == "/api/validate-yaml" and self.command == "POST":
            return self._json(200, {"errors": [], "warnings": []})
        match = RESOLVE_RE.match(path)
        if match and self.command in ("GET", "HEAD"):
            ns, name, rev, file = match.groups()
            return self._resolve(self._repo(ns, name), unquote(rev), unquote(file))
        match = API_RE.match(path)
        if not match:
            raise HttpError(404, f"no route for {self.command} {path}")
        ns, name, action, rest = match.groups()
        repo = self._repo(ns, name)
        if action is None or action == "revision":
            return self._info(repo, unquote(rest) if rest else "main")
        if action == "tree" and self.command == "GET":
            rev, _, sub = (rest or "").partition("/")
            return self._tree(repo, unquote(rev), unquote(sub), query)
        if action == "preupload" and self.command == "POST":
            return self._preupload(repo, unquote(rest or "main"), json.loads(body))
        if action == "commit" and self.command == "POST":
            return self._commit_post(repo, unquote(rest or "main"), body)
        if action == "branch" and self.command == "POST":
            return self._branch(repo, unquote(rest or ""), json.loads(body or b"{}"))
        raise HttpError(404, f"no route for {self.command} {path}")

    def _create_repo(self, payload: dict[str, Any]) -> None:
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if payload.get("type") != "dataset":
            raise HttpError(400, "this fake hub only hosts dataset repos")
        if repo_id in self.hub.repos:
            raise HttpError(409, "You already created this dataset repo",
                            url=f"{self.hub.url}/datasets/{repo_id}")
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        self.hub.new_commit(repo, "main", {".gitattributes": b"*.parquet filter=lfs\n"}, "initial commit")
        self.hub.repos[repo_id] = repo
        self._json(200, {"url": f"{self.hub.url}/datasets/{repo_id}", "name": repo_id})

    def _info(self, repo: Repo, rev: str) -> None:
        commit = self._commit(repo, rev)
        self._json(200, {"id": repo.repo_id, "sha": commit.oid, "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(commit.files)]})

    def _tree(self, repo: Repo, rev: str, sub: str, query: dict[str, str]) -> None:
        commit = self._commit(repo, rev)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HttpError(404, f"{sub} does not exist on {rev}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for path, data in commit.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(rest[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0, "path": folder})
            if recursive or len(rest) == 1:
                entries[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        ordered = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", "0"))
        page = ordered[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(ordered):
            params = {k: v for k, v in query.items() if k != "cursor"} | {"cursor": str(start + self.hub.page_size)}
            split = urlsplit(self.path)
            headers["Link"] = f'<{self.hub.url}{split.path}?{urlencode(params)}>; rel="next"'
        self._json(200, page, headers)

    def _preupload(self, repo: Repo, rev: str, payload: dict[str, Any]) -> None:
        commit = self._commit(repo, rev)
        files = []
        for item in payload["files"]:
            existing = commit.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_oid(existing) if existing is not None else None})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _commit_post(self, repo: Repo, rev: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise HttpError(400, "commit without header")
        head = repo.branches.get(rev)
        if head is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            self.hub.commit_statuses.append(412)
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            elif key == "lfsFile":
                raise HttpError(400, "this fake hub does not take LFS uploads")
        commit = self.hub.new_commit(repo, rev, files, header.get("summary", ""))
        self.hub.commit_statuses.append(200)
        self._json(200, {"commitUrl": f"{self.hub.url}/datasets/{repo.repo_id}/commit/{commit.oid}",
                         "commitOid": commit.oid, "success": True})

    def _branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> None:
        if branch in repo.branches:
            raise HttpError(409, f"Reference refs/heads/{branch} already exists")
        start = self._commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        self._json(200, {})

    def _resolve(self, repo: Repo, rev: str, file: str) -> None:
        commit = self._commit(repo, rev)
        data = commit.files.get(file)
        if data is None:
            raise HttpError(404, f"Entry not found: {file}", "EntryNotFound")
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": commit.oid}
        self._send(200, data, headers, content_type="application/octet-stream")
