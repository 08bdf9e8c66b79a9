"""Shared by every test: a fixed torch seed, and the ``e2e`` marker on everything under
``tests/e2e/`` (tool runs in subprocesses), which run after the unit tests; the unit tests
alone: ``pytest tests -m 'not e2e'``. Helpers shared by test files are in
:mod:`s2aformer_mm.testing`."""
from pathlib import Path

import pytest
import torch

E2E = Path(__file__).resolve().parent / 'e2e'


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.e2e)
    # Unit tests first: a broken module shows in minutes, before the long tool runs.
    items.sort(key=lambda item: item.get_closest_marker('e2e') is not None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
