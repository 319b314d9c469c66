"""The examples of docs/integrations.md, run verbatim (each in a fresh namespace, in a temporary folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)
NEEDS = {
    "lightning": "pytorch_lightning",
    "lightning-manual": "pytorch_lightning",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "timm": "timm.optim",
}


def _examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text()))


def test_every_integration_has_an_example():
    assert set(_examples()) == set(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_doc_example_runs(name, tmp_path, monkeypatch):
    try:
        __import__(NEEDS[name])
    except Exception as err:  # timm: torchvision may fail to load here
        pytest.skip(f"{NEEDS[name]} cannot be imported here ({type(err).__name__}: {err})")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _examples()[name]
    exec(compile(code, f"{DOC.name}:{name}", "exec"), {"__name__": f"doc_example_{name.replace('-', '_')}"})
    assert os.getcwd() == str(tmp_path)
