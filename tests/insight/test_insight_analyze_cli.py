"""`fsam analyze RUN_DIR` end to end, in a subprocess, on a tiny real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from testkit import FASHION_DIR, needs_fashion_mnist

pytestmark = needs_fashion_mnist


def fsam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "friendly_sam.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_analyze_writes_json_and_plots_and_compare_shows_them(tmp_path, capsys):
    import torch

    from friendly_sam.cli import main
    from friendly_sam.train import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig(
        data_dir=str(FASHION_DIR), model="cnn_small", train_subset=128, batch_size=64, epochs=1,
        test_subset=100, threads=1, component="minibatch", decomposition=True, decomposition_every=1,
        decomposition_subset=64,
    )  # fmt: skip
    threads = torch.get_num_threads()
    train(cfg, run, progress=False, log=lambda s: None)
    torch.set_num_threads(threads)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["diag_steps"] == 1 and len(metrics["diag_ema_full_cos_points"]) == 1

    r = fsam(
        "analyze", str(run), "--subset", "64", "--batch-size", "32", "--eig-iters", "3", "--trace-samples", "2",
        "--sharpness-steps", "2", "--points-1d", "5", "--points-2d", "3", "--threads", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "top eigenvalue" in r.stdout and "eigenvalue 3/3" in r.stderr  # summary and progress lines
    assert "\r" not in r.stderr and "\x1b" not in r.stderr  # stderr is a pipe: plain lines, no bar
    analysis = json.loads((run / "analysis.json").read_text())
    res = analysis["results"]
    assert set(res) == {"eigenvalue", "trace", "sharpness", "landscape1d", "landscape2d"}
    assert res["eigenvalue"]["hvps"] <= 3 and res["eigenvalue"]["subset"] == 64
    assert res["trace"]["hvps"] == 2
    assert res["sharpness"]["rho"] == 0.05 and res["sharpness"]["rho_source"] == "run config"
    assert len(res["landscape1d"]["losses"]) == 5 and len(res["landscape2d"]["losses"]) == 3
    assert analysis["checkpoint_epoch"] == 1
    for png in ("landscape_1d.png", "landscape_2d.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # in-process from here (the subprocess above is the end-to-end check): a partial re-run keeps the
    # other parts, each with its own options
    capsys.readouterr()
    assert (
        main(["analyze", str(run), "--parts", "sharpness", "--rho", "0.2", "--subset", "32", "--quiet"]) == 0
    )
    assert capsys.readouterr() == ("", "")
    torch.set_num_threads(threads)
    res = json.loads((run / "analysis.json").read_text())["results"]
    assert (
        res["sharpness"]["rho"] == 0.2
        and res["sharpness"]["subset"] == 32
        and res["eigenvalue"]["subset"] == 64
    )

    assert main(["compare", str(run)]) == 0
    assert "top Hessian eigenvalue" in capsys.readouterr().out
    assert main(["analyze", str(run), "--parts", "eigenvalue,bogus"]) == 2
    assert "unknown part(s) bogus" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no run" in capsys.readouterr().err
