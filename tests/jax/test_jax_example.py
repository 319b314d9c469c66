"""The flax example trains on real Fashion-MNIST with noisy labels (tiny size here) and every optimizer
(SGD, SAM, F-SAM) beats chance (10 %) by a wide margin; its label noise and argument checks."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("flax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import numpy as np  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "jax_fashion_mnist.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; .ci/run does it)",
)


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("jax_fashion_mnist", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@needs_fashion
def test_every_optimizer_beats_chance_by_far(example, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ["--train-size", "1536", "--test-size", "1000", "--epochs", "2", "--width", "64", "--noise", "0.2"]
    results = example.main([*args, "--json", str(out)])
    assert [r["optimizer"] for r in results] == ["sgd", "sam", "fsam"]
    for r in results:
        assert r["test_accuracy"] > 0.5, r  # chance is 0.1
        assert np.isfinite(r["last_loss"])
    assert json.loads(out.read_text())["results"] == results


def test_symmetric_noise_flips_exactly_the_asked_fraction_to_other_classes(example) -> None:
    labels = np.arange(1000, dtype=np.int32) % 10
    noisy = example.symmetric_noise(labels, 0.35, seed=3)
    assert int(np.sum(noisy != labels)) == 350
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert np.array_equal(noisy, example.symmetric_noise(labels, 0.35, seed=3))


def test_bad_arguments_stop_with_a_message(example, tmp_path: Path, capsys) -> None:
    for argv, says in [
        (["--noise", "0.95"], "--noise 0.95"),
        (["--data", str(tmp_path)], "no Fashion-MNIST in"),
        (["--train-size", "10"], "smaller than one batch"),
    ]:
        with pytest.raises(SystemExit):
            example.main(argv)
        assert says in capsys.readouterr().err


def test_a_truncated_idx_file_is_refused(example, tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + b"abc"))
    with pytest.raises(ValueError, match="truncated"):
        example.read_idx(bad)
