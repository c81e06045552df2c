"""`tunekit convert` never writes over, into or around what it reads, nor deletes what it did not write.

Every refusal exits 1 with one paragraph naming the directory and what to do, and leaves the
source run and the destination byte-identical.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _harness import REPO, assert_ok, assert_unchanged, assert_user_error, run_tunekit, snapshot

ASSETS = REPO / "src" / "tunekit" / "assets" / "tiny_llama2"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo PWNED > /dev/null",))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A run with one checkpoint (the new layout), an earlier convert output, a user's folder."""
    from tunekit.checkpointing import FullModelHFCheckpointer, convert_checkpoint

    root = tmp_path_factory.mktemp("convert")
    run = root / "run"
    ckptr = FullModelHFCheckpointer(ASSETS / "hf", run)
    ckptr.save_checkpoint({"model": ckptr.load_checkpoint()["model"]}, epoch=0, info={"data": "x"})
    converted = convert_checkpoint(ASSETS / "meta", root / "converted", to="hf")
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "model.safetensors").write_bytes(b"not from tunekit")
    return {"root": root, "run": run, "converted": converted, "mine": mine}


def _convert(*args: str):
    return run_tunekit("convert", *args, timeout=120)


def test_dest_is_the_source(world):
    run, before = world["run"], snapshot(world["run"])
    src = run / "epoch_0"
    assert_user_error(_convert(str(src), str(src), "--to", "hf", "--force"), f"dest {src} is the source",
                      "choose a new directory")
    assert_unchanged(before, run)


def test_dest_contains_the_source_even_with_force(world):
    # what `tunekit convert RUN/epoch_0 RUN --to hf --force` did before: delete the whole run
    run, before = world["run"], snapshot(world["run"])
    assert_user_error(_convert(str(run / "epoch_0"), str(run), "--to", "hf", "--force"),
                      f"dest {run} contains the source", "would delete the checkpoint being read",
                      "outside")
    assert_unchanged(before, run)


def test_dest_inside_the_source(world):
    run, before = world["run"], snapshot(world["run"])
    dest = run / "epoch_0" / "exported"
    assert_user_error(_convert(str(run), str(dest), "--to", "meta"), f"dest {dest} is inside the source",
                      "choose a directory outside")
    assert_unchanged(before, run)


def test_foreign_directory_is_never_replaced_even_with_force(world):
    mine, before = world["mine"], snapshot(world["mine"])
    assert_user_error(_convert(str(ASSETS / "meta"), str(mine), "--to", "hf", "--force"),
                      f"dest {mine} exists and is not empty", "not written by tunekit convert", "notes.txt",
                      "never deletes files it did not create", "choose a new directory")
    assert_unchanged(before, mine)


def test_another_run_is_never_replaced(world):
    run, before = world["run"], snapshot(world["run"])
    assert_user_error(_convert(str(ASSETS / "meta"), str(run), "--to", "hf", "--force"),
                      f"dest {run} exists and is not empty", "run directory", "epoch_0", "choose a new directory")
    assert_unchanged(before, run)


def test_earlier_convert_output_needs_force(world):
    out, before = world["converted"], snapshot(world["converted"])
    assert_user_error(_convert(str(ASSETS / "meta"), str(out), "--to", "hf"),
                      "earlier tunekit convert output", "pass --force")
    assert_unchanged(before, out)


def test_earlier_convert_output_with_a_users_file_is_kept(world, tmp_path):
    out = tmp_path / "converted"
    shutil.copytree(world["converted"], out)
    (out / "my_eval.json").write_text("{}")
    before = snapshot(out)
    assert_user_error(_convert(str(ASSETS / "meta"), str(out), "--to", "hf", "--force"),
                      "my_eval.json", "which convert did not write", "will not delete them",
                      "move them away or choose a new directory")
    assert_unchanged(before, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_force_replaces_an_earlier_output_and_keeps_the_umask(world, tmp_path):
    out = tmp_path / "converted"
    shutil.copytree(world["converted"], out)
    old = os.umask(0o027)
    try:
        proc = _convert(str(ASSETS / "meta"), str(out), "--to", "hf", "--dtype", "bf16", "--force")
    finally:
        os.umask(old)
    assert_ok(proc, f"Wrote HF checkpoint to {out}")
    assert '"torch_dtype": "bfloat16"' in (out / "config.json").read_text()
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir()]}
    assert modes.pop("converted") == 0o750 and set(modes.values()) == {0o640}, modes


def test_source_pickle_with_code(world, tmp_path):
    import torch

    src = tmp_path / "meta"
    shutil.copytree(ASSETS / "meta", src)
    torch.save({"tok_embeddings.weight": torch.zeros(2), "x": _RunsCode()}, src / "consolidated.00.pth")
    before = snapshot(src)
    text = assert_user_error(_convert(str(src), str(tmp_path / "out"), "--to", "hf"),
                             str(src / "consolidated.00.pth"), "Python objects other than tensors", "posix.system",
                             "tunekit will not run them")
    assert "weights_only=False" not in text
    assert_unchanged(before, src)
    assert not (tmp_path / "out").exists()


def test_missing_source(tmp_path):
    assert_user_error(_convert(str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "hf"),
                      f"source={str(tmp_path / 'nope')!r} does not exist", "run directory")
    assert not (tmp_path / "out").exists()


def test_dest_below_a_file(world, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    run, before = world["run"], snapshot(world["run"])
    text = assert_user_error(_convert(str(run / "epoch_0"), str(taken / "out"), "--to", "meta"), str(taken),
                             "a file of that name is in the way", "a new destination")
    assert "free disk space" not in text
    assert taken.read_text() == "mine\n"
    assert_unchanged(before, run)
