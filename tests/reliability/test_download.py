"""`tunekit download` failures: one paragraph each, exit 1, the token never shown, nothing written over.

No case touches the network: the Hub endpoint is a closed loopback port, offline mode, or a
loopback stand-in that answers like the Hub for an unknown and a gated repository.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from _harness import assert_unchanged, assert_user_error, run_tunekit, snapshot

TOKEN = "hf_reliability_secret_42"


class _Hub(BaseHTTPRequestHandler):
    """The Hub's answers for an unknown repo (404 RepoNotFound) and a gated one (401 GatedRepo)."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        if "org/gated" in path and self.headers.get("Authorization") is None:
            return self._send(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"})
        self._send(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _download(tmp_path: Path, *args: str, endpoint: str = "http://127.0.0.1:9", **env: str):
    base = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": "",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0",
            "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5", "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1", "TUNEKIT_MODELS_ROOT": str(tmp_path / "models")}  # fmt: skip
    return run_tunekit("download", *args, timeout=120, env={**base, **env})


def _no_token(proc) -> None:
    assert TOKEN not in (proc.stdout or "") + (proc.stderr or "")


@pytest.mark.parametrize("repo_id", ["a/b/c", "my org/my model", ""], ids=["three-parts", "spaces", "empty"])
def test_malformed_repo_id(tmp_path, repo_id):
    proc = _download(tmp_path, repo_id, "--hf-token", TOKEN)
    assert_user_error(proc, f"repo_id {repo_id!r} is not a Hugging Face Hub repository id", "owner/name",
                      "meta-llama/Llama-2-7b-hf")
    _no_token(proc)
    assert not (tmp_path / "models").exists()


def test_no_network(tmp_path):
    proc = _download(tmp_path, "meta-llama/Llama-2-7b-hf", "--hf-token", TOKEN)
    assert_user_error(proc, "Could not reach the Hub at http://127.0.0.1:9", "meta-llama/Llama-2-7b-hf",
                      "check the connection", "checkpointer.checkpoint_dir")
    _no_token(proc)


def test_offline_mode(tmp_path):
    proc = _download(tmp_path, "meta-llama/Llama-2-7b-hf", "--hf-token", TOKEN, HF_HUB_OFFLINE="1")
    assert_user_error(proc, "offline mode is on", "HF_HUB_OFFLINE", "Unset HF_HUB_OFFLINE")
    _no_token(proc)


def test_unknown_repo(tmp_path, hub):
    proc = _download(tmp_path, "org/does-not-exist", "--hf-token", TOKEN, endpoint=hub)
    assert_user_error(proc, "org/does-not-exist was not found on the Hub", "check the spelling", "--hf-token")
    _no_token(proc)


def test_gated_repo_without_token(tmp_path, hub):
    proc = _download(tmp_path, "org/gated", endpoint=hub)
    assert_user_error(proc, "org/gated is a gated repository", "request access at https://huggingface.co/org/gated",
                      "--hf-token", "HF_TOKEN")


def test_output_dir_holding_the_users_files(tmp_path):
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    before = snapshot(mine)
    proc = _download(tmp_path, "org/open", "--output-dir", str(mine), "--hf-token", TOKEN)
    assert_user_error(proc, f"--output-dir {mine} already holds files", "config.json", "would overwrite",
                      "choose a new or empty directory")
    _no_token(proc)
    assert_unchanged(before, mine)


def test_output_dir_that_is_a_file(tmp_path):
    taken = tmp_path / "model"
    taken.write_text("mine\n")
    before = snapshot(tmp_path)
    proc = run_tunekit("download", "meta-llama/Llama-2-7b-hf", "--output-dir", str(taken),
                       env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_user_error(proc, f"--output-dir {taken} exists and is not a directory", "Choose a new directory")
    assert_unchanged(before, tmp_path)
