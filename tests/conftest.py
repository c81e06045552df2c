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


# The modules that take longest (`make test` prints the slowest tests) go first: with
# `--dist loadscope` each module runs whole on one worker, in collection order, so a long module
# collected last would leave the other core idle at the end.
_FIRST = (
    "tests/distributed/test_distributed.py",
    "tests/recipes/test_sweep_and_errors.py",
    "tests/generation/test_generate_recipe.py",
    "tests/distributed/test_recipe_resume.py",
    "tests/reliability/test_faults.py",
    "tests/models/test_family_recipes.py",
    "tests/recipes/test_resume.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(_FIRST)))  # stable
