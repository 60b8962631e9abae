"""Search tests run their tiny models on one intra-op thread."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny decode steps: a second thread only adds synchronisation (on a loaded
    two-core machine one 2-thread attention call of these sizes waits ~10 ms, 1000x its work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
