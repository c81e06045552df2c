"""tunekit.config.instantiate: Hydra semantics with `_component_`, and its error messages."""

from __future__ import annotations

import functools

import pytest
from omegaconf import DictConfig, OmegaConf

from tunekit.config import ConfigError, instantiate

HERE = __name__


class Point:
    def __init__(self, x: int, y: int = 0) -> None:
        self.x, self.y = x, y


class Pair:
    def __init__(self, first, second=None) -> None:
        self.first, self.second = first, second


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def explode(reason: str) -> None:
    raise RuntimeError(reason)


@pytest.mark.parametrize("key", ["_component_", "_target_"])
def test_both_keys_build_the_same_object(key):
    p = instantiate({key: f"{HERE}.Point", "x": 1, "y": 2})
    assert isinstance(p, Point) and (p.x, p.y) == (1, 2)


def test_both_keys_agreeing_is_fine_disagreeing_is_an_error():
    assert instantiate({"_component_": f"{HERE}.Point", "_target_": f"{HERE}.Point", "x": 1}).x == 1
    cfg = OmegaConf.create({"sub": {"_component_": f"{HERE}.Point", "_target_": f"{HERE}.Pair"}})
    with pytest.raises(ConfigError, match=r"`sub` has both `_component_`.*synonyms"):
        instantiate(cfg.sub)


def test_nested_component_nodes_are_renamed_at_every_depth():
    cfg = OmegaConf.create(
        {
            "_component_": f"{HERE}.Pair",
            "first": {"_component_": f"{HERE}.Point", "x": 3},
            "second": [{"_component_": f"{HERE}.Point", "x": 4}],
        }
    )
    pair = instantiate(cfg)
    assert pair.first.x == 3 and pair.second[0].x == 4
    assert "_component_" in cfg and "_target_" not in cfg  # the caller's node is untouched


def test_partial_and_positional_args():
    part = instantiate({"_component_": f"{HERE}.add", "_partial_": True, "b": 2})
    assert isinstance(part, functools.partial) and part(1) == 3
    assert instantiate({"_component_": f"{HERE}.add", "_args_": [1, 2]}, scale=10) == 30
    assert instantiate({"_component_": f"{HERE}.add", "b": 5}, 1) == 6


def test_recursive_false_and_convert():
    pair = instantiate(
        {"_component_": f"{HERE}.Pair", "_recursive_": False, "first": {"_component_": f"{HERE}.Point", "x": 1}}
    )
    assert isinstance(pair.first, DictConfig) and pair.first._component_ == f"{HERE}.Point"
    pair = instantiate({"_component_": f"{HERE}.Pair", "_convert_": "all", "first": {"a": 1}})
    assert type(pair.first) is dict


def test_kwargs_with_component_nodes_are_renamed():
    pair = instantiate({"_component_": f"{HERE}.Pair", "first": 1}, second={"_component_": f"{HERE}.Point", "x": 9})
    assert pair.second.x == 9


def _root(node: dict) -> DictConfig:
    return OmegaConf.create({"checkpointer": node})


def test_misspelt_attribute_names_key_path_and_close_match():
    cfg = _root({"_component_": f"{HERE}.Piont", "x": 1})
    with pytest.raises(ConfigError) as err:
        instantiate(cfg.checkpointer)
    text = str(err.value)
    assert "`checkpointer._component_`" in text and f"{HERE}.Piont" in text
    assert "Did you mean: Point" in text and "Traceback" not in text


def test_misspelt_module_gets_close_match():
    with pytest.raises(ConfigError, match=r"no attribute `collectons`|no module named `collectons`.*collections"):
        instantiate(_root({"_component_": "collectons.OrderedDict"}).checkpointer)


def test_bad_keyword_lists_offending_keys_and_signature():
    cfg = _root({"_component_": f"{HERE}.Point", "x": 1, "yy": 2, "zz": 3})
    with pytest.raises(ConfigError) as err:
        instantiate(cfg.checkpointer)
    text = str(err.value)
    assert "`checkpointer`" in text and "unexpected key `yy` (did you mean: y?)" in text
    assert "unexpected key `zz`" in text and f"Signature: {HERE}.Point(x, y=0)" in text


def test_missing_required_argument():
    with pytest.raises(ConfigError, match=r"`checkpointer`: missing required argument\(s\): x"):
        instantiate(_root({"_component_": f"{HERE}.Point", "y": 1}).checkpointer)


def test_nested_error_names_nested_key_path():
    cfg = _root({"_component_": f"{HERE}.Pair", "first": {"_component_": f"{HERE}.Point", "q": 1}})
    with pytest.raises(ConfigError, match=r"`checkpointer.first`: unexpected key `q`"):
        instantiate(cfg.checkpointer)


def test_blocklisted_target_stays_refused(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    with pytest.raises(ConfigError, match="blocklisted"):
        instantiate({"_component_": "os.remove", "path": str(victim)})
    assert victim.exists()


def test_failure_inside_the_component_keeps_its_type_and_names_the_key():
    cfg = _root({"_component_": f"{HERE}.explode", "reason": "boom"})
    with pytest.raises(RuntimeError, match="boom") as err:
        instantiate(cfg.checkpointer)
    assert any("checkpointer" in note for note in getattr(err.value, "__notes__", ["checkpointer"]))


def test_none_passes_through():
    assert instantiate(None) is None
