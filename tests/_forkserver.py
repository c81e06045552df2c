"""A fork server for the suite's ``python -m <module> args...`` subprocesses.

Most end-to-end tests run a real entry point (``python -m recipes.lora_finetune ...``,
``python -m tunekit.cli.main validate ...``) in a fresh process, as a user types it. Four of the
five CPU-seconds such a process costs are imports (torch, torch._dynamo, hydra) that are the same
every time. This module keeps one *server* process per test worker that has imported them once;
each run is a ``fork()`` of it that sets argv, environment, working directory, standard streams
and umask exactly as ``subprocess.run`` would, then runs the module as ``__main__`` with ``runpy`` (what
``python -m`` does) and exits with the status the interpreter would give. Each run is still its
own process: no state, signal handler, thread or open file survives into the next one.

``tests/conftest.py`` routes ``subprocess.run([sys.executable, "-m", ...], capture_output=True,
...)`` here; everything else (other programs, ``-c`` snippets, ``Popen`` for signal tests, runs
that change import-time settings such as ``PYTHONPATH`` or ``OMP_*``) goes to ``subprocess`` as
before. ``TUNEKIT_TEST_FORKSERVER=0`` turns it off.

Protocol: one JSON request per line on the server's stdin, one JSON reply per line on its stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Environment variables read when the server imports torch/hydra: a run that sets any of these
# differently from the server gets a plain subprocess.
_IMPORT_TIME_ENV = ("PYTHON", "OMP_", "MKL_", "TORCH", "PYTORCH", "CUDA", "KMP_", "LD_", "OPENBLAS")

_SERVER = r'''
import json, os, sys, time, signal
import torch, torch._dynamo, hydra, omegaconf, hydra.core.global_hydra  # the shared imports
import runpy, traceback, threading, atexit
print(json.dumps({"ready": True}), flush=True)
proto_in, proto_out = sys.stdin, sys.stdout

def child(req):
    os.umask(req["umask"])
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path, mode in ((0, req["stdin"], os.O_RDONLY), (1, req["stdout"], os.O_WRONLY),
                           (2, req["stderr"], os.O_WRONLY)):
        f = os.open(path, mode)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1 if req["unbuffered"] else -1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.path[0] = req["cwd"]
    sys.argv = ["-m"] + req["args"]
    code = 0
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        c = e.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c
        else:
            print(c, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    os._exit(code & 0xFF)

for line in proto_in:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            child(req)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(70)
    deadline = time.monotonic() + req["timeout"] if req["timeout"] else None
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
        elif deadline is not None and time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.01)
    proto_out.write(json.dumps({"status": status}) + "\n")
    proto_out.flush()
'''


class _Server:
    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        ready = self.proc.stdout.readline()
        if not ready.strip().startswith('{"ready"'):
            raise RuntimeError("fork server did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, req: dict) -> int | str:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("fork server died")
        return json.loads(reply)["status"]


_lock = threading.Lock()
_servers: dict[tuple, _Server] = {}  # one per set of import-time settings
_MAX_SERVERS = 3
_disabled = os.environ.get("TUNEKIT_TEST_FORKSERVER", "1") == "0"


def _server_for(env: dict) -> _Server | None:
    global _disabled
    if _disabled:
        return None
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_IMPORT_TIME_ENV) and k != "PYTHONUNBUFFERED"))
    server = _servers.get(key)
    if server is not None and server.alive():
        return server
    if server is None and len(_servers) >= _MAX_SERVERS:
        return None
    try:
        _servers[key] = _Server(env)
    except Exception:
        _disabled = True
        return None
    return _servers[key]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def try_run(args, kwargs: dict) -> subprocess.CompletedProcess | None:
    """``subprocess.run(args, **kwargs)`` through the fork server, or None when it does not apply."""
    if not isinstance(args, (list, tuple)) or len(args) < 3:
        return None
    if str(args[0]) != sys.executable or args[1] != "-m":
        return None
    allowed = {"cwd", "env", "capture_output", "text", "timeout", "input", "check", "universal_newlines"}
    if set(kwargs) - allowed or not kwargs.get("capture_output"):
        return None
    text = bool(kwargs.get("text") or kwargs.get("universal_newlines"))
    env = dict(kwargs["env"]) if kwargs.get("env") is not None else dict(os.environ)
    env = {str(k): str(v) for k, v in env.items()}
    with _lock:
        server = _server_for(env)
        if server is None:
            return None
        with tempfile.TemporaryDirectory(prefix="forkrun-") as tmp:
            t = Path(tmp)
            data = kwargs.get("input")
            (t / "in").write_bytes(data.encode() if isinstance(data, str) else (data or b""))
            (t / "out").write_bytes(b"")
            (t / "err").write_bytes(b"")
            cwd = str(Path(kwargs.get("cwd") or os.getcwd()).resolve())
            req = {"module": str(args[2]), "args": [str(a) for a in args[3:]], "cwd": cwd, "env": env,
                   "stdin": str(t / "in"), "stdout": str(t / "out"), "stderr": str(t / "err"),
                   "timeout": kwargs.get("timeout"), "unbuffered": bool(env.get("PYTHONUNBUFFERED")),
                   "umask": _current_umask()}
            status = server.run(req)
            out, err = (t / "out").read_bytes(), (t / "err").read_bytes()
    if text:
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if status == "timeout":
        raise subprocess.TimeoutExpired(list(args), kwargs.get("timeout"), output=out, stderr=err)
    proc = subprocess.CompletedProcess(list(args), status, out, err)
    if kwargs.get("check"):
        proc.check_returncode()
    return proc
