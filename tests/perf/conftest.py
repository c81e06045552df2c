"""Shared fixtures for the performance-option tests (CPU correctness of every speed lever)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine is shared; tiny models gain nothing from threads.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
