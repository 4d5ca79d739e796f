"""Shared fixtures for the metrics tests."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

# the package re-exports functions of the same names, so fetch the modules themselves
gauc_mod = importlib.import_module("rankboard.service.metrics.functional.grouped_auc")
xauc_mod = importlib.import_module("rankboard.service.metrics.functional.xauc")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=["numpy", "torch"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the numpy CPU kernels and with the torch (any-device) path."""
    use = request.param == "numpy"
    monkeypatch.setattr(gauc_mod, "_use_numpy", use)
    monkeypatch.setattr(xauc_mod, "_use_numpy", use)
    return request.param
