"""`tunekit download` against a loopback stand-in for the Hub (HF_ENDPOINT=http://127.0.0.1:<port>)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

COMMIT = "a" * 40
TOKEN = "hf_secret_token_123"
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"S" * 1000,
    "pytorch_model.bin": b"B" * 1000,
    "original/consolidated.00.pth": b"P" * 500,
    "flax_model.msgpack": b"F" * 100,
    "tokenizer.model": b"T" * 50,
}
REPOS = {
    "org/open": {"files": FILES},
    "org/gated": {"files": {"config.json": b"{}"}, "gated": True},
    "org/private": {"files": {"config.json": b"{}"}, "private": True},
    "org/forbidden": {"files": {"config.json": b"{}"}, "forbidden": True},
    "org/meta-only": {"files": {"consolidated.00.pth": b"P" * 10, "params.json": b"{}"}},
}


class _Hub(BaseHTTPRequestHandler):
    """The endpoints snapshot_download uses: model info, tree listing, file resolve (HEAD + GET)."""

    requests: list[tuple[str, str, str | None]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj):
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _auth_error(self, repo_id) -> bool:
        repo = REPOS.get(repo_id)
        auth = self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {TOKEN}":
            self._send(401, b"bad token", {"X-Error-Message": "Invalid credentials in Authorization header"})
        elif repo is None or (repo.get("private") and auth is None):
            self._send(404 if repo is None else 401, b"not found", {"X-Error-Code": "RepoNotFound",
                                                                    "X-Error-Message": "Repository not found"})  # fmt: skip
        elif repo.get("gated") and auth is None:
            self._send(401, b"gated", {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
        elif repo.get("forbidden"):
            self._send(403, b"forbidden", {"X-Error-Message": "Your token does not have access"})
        else:
            return False
        return True

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        type(self).requests.append((self.command, path, self.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            if self._auth_error(repo_id):
                return
            files = REPOS[repo_id]["files"]
            if len(parts) == 4 or parts[4] == "revision":
                return self._json({"id": repo_id, "sha": COMMIT, "private": False,
                                   "siblings": [{"rfilename": f} for f in files]})  # fmt: skip
            if parts[4] == "tree":
                return self._json([{"type": "file", "path": f, "size": len(b),
                                    "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()])  # fmt: skip
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
            if self._auth_error(repo_id):
                return
            body = REPOS[repo_id]["files"].get(filename)
            if body is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
            return self._send(200, body, {"ETag": f'"{hashlib.sha1(body).hexdigest()}"', "X-Repo-Commit": COMMIT})
        self._send(404, b"unknown endpoint")


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(hub, tmp_path, *args, token_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TUNEKIT_MODELS_ROOT=str(tmp_path / "models"),
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")  # fmt: skip
    if token_env:
        env["HF_TOKEN"] = token_env
    code = "import sys; from tunekit.cli.download import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


def _files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and ".cache" not in p.parts}


def test_download_into_models_root_skipping_duplicate_formats(hub, tmp_path):
    r = _run(hub, tmp_path, "org/open", "--hf-token", TOKEN)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "models" / "org" / "open"
    assert _files(dest) == {"config.json", "model.safetensors", "tokenizer.model"}
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    # The token went to the Hub, and nowhere else: not printed, not written to disk.
    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in _Hub.requests)
    assert TOKEN not in r.stdout + r.stderr
    assert all(TOKEN.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_download_all_formats_and_patterns(hub, tmp_path):
    r = _run(hub, tmp_path, "org/open", "--output-dir", str(tmp_path / "all"), "--all-formats")
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / "all") == set(FILES)
    r = _run(hub, tmp_path, "org/open", "--output-dir", str(tmp_path / "inc"), "--include", "*.json", "*.model")
    assert r.returncode == 0 and _files(tmp_path / "inc") == {"config.json", "tokenizer.model"}
    r = _run(hub, tmp_path, "org/meta-only", "--output-dir", str(tmp_path / "meta"), "--exclude", "params.json")
    assert r.returncode == 0 and _files(tmp_path / "meta") == {"consolidated.00.pth"}  # pth kept: no safetensors


def test_gated_repo(hub, tmp_path):
    r = _run(hub, tmp_path, "org/gated")
    assert r.returncode == 1
    assert "org/gated is a gated repository" in r.stderr and "--hf-token" in r.stderr
    assert _run(hub, tmp_path, "org/gated", token_env=TOKEN).returncode == 0  # HF_TOKEN from the environment


def test_missing_and_private_repos(hub, tmp_path):
    for repo in ("org/nope", "org/private"):
        r = _run(hub, tmp_path, repo)
        assert r.returncode == 1
        assert f"{repo} was not found on the Hub, or it is private" in r.stderr, r.stderr


def test_unauthorised_and_bad_token(hub, tmp_path):
    r = _run(hub, tmp_path, "org/forbidden", "--hf-token", TOKEN)
    assert r.returncode == 1 and "not authorised to read org/forbidden (403" in r.stderr
    r = _run(hub, tmp_path, "org/open", "--hf-token", "hf_wrong_token")
    assert r.returncode == 1 and "rejected the token" in r.stderr and "hf_wrong_token" not in r.stderr


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_downloaded_files_honour_the_umask(hub, tmp_path, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        r = _run(hub, tmp_path, "org/open", "--output-dir", str(tmp_path / "dl"), "--all-formats")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "dl"
    for p in [dest, *dest.rglob("*")]:
        if ".cache" in p.relative_to(dest).parts:
            continue
        assert p.stat().st_mode & 0o777 == (dir_mode if p.is_dir() else file_mode), p


def test_download_resumes_into_its_own_earlier_output_but_not_a_foreign_dir(hub, tmp_path):
    dest = tmp_path / "dl"
    assert _run(hub, tmp_path, "org/open", "--output-dir", str(dest)).returncode == 0
    again = _run(hub, tmp_path, "org/open", "--output-dir", str(dest))
    assert again.returncode == 0, again.stderr  # an earlier download (it has .cache/huggingface)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text("mine")
    r = _run(hub, tmp_path, "org/open", "--output-dir", str(foreign))
    assert r.returncode == 1 and "already holds files that were not downloaded there" in r.stderr
    assert (foreign / "config.json").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["config.json"]
