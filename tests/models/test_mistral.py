"""Mistral 7B v0.3: parity with transformers at tiny sizes, exact checkpoint round trips, published sizes."""

from __future__ import annotations

import pytest
from _family_checks import (
    check_hf_round_trip_is_bit_exact,
    check_kv_cache_decode_equals_recompute,
    check_logits_match_transformers,
    check_published_parameter_counts,
)
from _family_ref import FAMILIES

FAMILY = "mistral"


def test_logits_match_transformers():
    check_logits_match_transformers(FAMILY)


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path):
    check_hf_round_trip_is_bit_exact(FAMILY, tmp_path)


def test_kv_cache_decode_equals_recompute():
    check_kv_cache_decode_equals_recompute(FAMILY)


@pytest.mark.parametrize("size", sorted(FAMILIES[FAMILY].published))
def test_published_size_has_transformers_parameter_count(size):
    check_published_parameter_counts(FAMILY, size)
