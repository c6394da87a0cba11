import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from helpers import assert_gone, become_subreaper, descendants  # noqa: E402

become_subreaper()


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Every test: whatever it started (backends, proxies, grandchildren) is gone at the end."""
    before = descendants()
    yield
    assert_gone(descendants() - before, timeout=15)
