"""Suite-wide: ``python -m <module>`` subprocesses go through a fork server (see ``_forkserver.py``).

Each such run is still a fresh process running the real entry point; the server only saves the
imports every run would repeat. ``TUNEKIT_TEST_FORKSERVER=0`` turns it off.
"""

from __future__ import annotations

import subprocess

import _forkserver
import pytest

_real_run = subprocess.run


def _run(args, *popenargs, **kwargs):
    if not popenargs:
        proc = _forkserver.try_run(args, kwargs)
        if proc is not None:
            return proc
    return _real_run(args, *popenargs, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _fork_server_for_entry_points():
    subprocess.run = _run
    yield
    subprocess.run = _real_run
