"""Isolate the data tests from real data directories and the user's cache."""

from __future__ import annotations

import pytest

from friendly_sam.data import datasets


@pytest.fixture(autouse=True)
def _isolated_data_dirs(tmp_path_factory, monkeypatch):
    # Tests that want the real system copy (Debian Fashion-MNIST) restore SYSTEM_DIRS themselves.
    monkeypatch.delenv("FSAM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
