"""Two processes on gloo: the documented semantics of the two perturbation modes, and sharded norms.

The scenarios live in dist_worker.py (one process group for all); these tests check what they found.
"""

from __future__ import annotations

import pytest

from friendly_sam.distributed import check_mode, shard_bounds

TOL = 1e-12  # float64 runs


def scenario(results: list[dict], name: str) -> list[dict]:
    for r, res in enumerate(results):
        assert "error" not in res[name], f"rank {r}:\n{res[name]['error']}"
    return [res[name] for res in results]


def test_synchronized_equals_one_process_over_the_global_batch(dist_results):
    for res in scenario(dist_results, "synchronized"):
        assert len(res["diffs"]) == 4  # the last global batch (15) splits 8 / 7
        assert max(res["diffs"]) < TOL
        assert res["spreads"] == [0.0] * 4  # bit-identical parameters on both ranks after every step
        assert res["ema_diff"] < TOL and res["ema_spread"] == 0.0  # one shared EMA


def test_per_replica_equals_the_per_replica_simulation(dist_results):
    for res in scenario(dist_results, "per_replica"):
        assert max(res["diffs"]) < TOL
        assert res["spreads"] == [0.0] * 4  # the synchronised second gradient keeps replicas identical
        assert res["ema_diff_own_replica"] < TOL  # each rank's EMA is the one of its own half-batches
        assert res["ema_spread"] > 1e-3  # ... so the EMAs differ between ranks
        assert res["sims_agree"] == 0.0


def test_batchnorm_buffers_under_ddp(dist_results):
    for res in scenario(dist_results, "batchnorm_buffers"):
        assert res["per-replica"]["param_spread"] == 0.0 and res["synchronized"]["param_spread"] == 0.0
        # per-replica: the broadcast happens before the first (local) forward only, which then updates
        # each replica's statistics with its own batch; synchronized: again before the second forward.
        assert res["per-replica"]["buffer_spread"] > 0.0
        assert res["synchronized"]["buffer_spread"] == 0.0


def test_no_sync_around_backward_only_still_synchronises(dist_results):
    res = scenario(dist_results, "backward_only_no_sync")[0]
    assert res["grad_spread_backward_only"] == 0.0  # the common recipe's silent all-reduce
    assert res["grad_spread_forward_and_backward"] > 0.0  # what ddp_training_step does


def test_bytes_all_reduced_per_step(dist_results):
    res = scenario(dist_results, "comm_volume")[0]
    assert res["per-replica"] == res["gradient_bytes"]  # as plain DDP
    assert res["synchronized"] == 2 * res["gradient_bytes"]


@pytest.mark.parametrize("name", ["fsam", "fsam_clip", "afsam"])
def test_sharded_norm_matches_unsharded_run(dist_results, name):
    results = scenario(dist_results, "sharded_simulation")
    assert results[0]["empty_shard_on_rank"] == [0, 0]  # rank 0 holds no part of the two biases
    for res in results:
        assert max(res[f"{name}_group"]) < TOL
        assert max(res[f"{name}_nogroup"]) > 1e-4  # local norms would be wrong


def test_fsdp2_fully_shard_on_cpu(dist_results):
    for res in scenario(dist_results, "fsdp2"):
        assert max(res["group"]) < TOL  # process_group=: one all-reduce per norm
        assert max(res["dtensor_default"]) < TOL  # DTensor reduces each parameter's norm itself
        assert max(res["group_foreach"]) < TOL  # multi-tensor kernels on DTensors (the GPU default)


def test_mode_names_and_shard_bounds():
    assert check_mode("per-replica") == "per-replica"
    with pytest.raises(ValueError, match="synchronized"):
        check_mode("sync")
    assert [shard_bounds(7, i, 3) for i in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(1, i, 2) for i in range(2)] == [(0, 1), (1, 1)]


def test_fp16_overflow_on_one_replica_is_skipped_by_all_with_replica_group(dist_results):
    for rank, res in enumerate(scenario(dist_results, "fp16_overflow_per_replica")):
        alone, agree = res["alone"], res["agree"]
        # Without replica_group: rank 1 alone skips step 2 and halves its scale; the replicas diverge.
        assert alone["param_spreads"][:2] == [0.0, 0.0]
        assert alone["param_spreads"][2] > 0.0 and alone["scale_spreads"][2] > 0.0
        # With it: every replica skips step 2 (weights and EMA untouched), halves the scale, stays identical.
        assert agree["param_spreads"] == [0.0] * 4 and agree["scale_spreads"] == [0.0] * 4
        assert agree["moved"][2] == 0.0 and agree["ema_moved"][2] == 0.0
        assert min(agree["moved"][i] for i in (0, 1, 3)) > 0.0  # the other steps are taken
        assert agree["ema_moved"][1] > 0.0 and agree["ema_moved"][3] > 0.0
        assert agree["final_scale"] == 2.0**9, rank


def test_periodic_perturbation_keeps_ddp_replicas_identical(dist_results):
    for res in scenario(dist_results, "periodic"):
        for key in ("per-replica/base", "synchronized/looksam"):
            assert res[key]["kinds"] == [True, False, True, False] and res[key]["steps"] == 4
            assert res[key]["spreads"] == [0.0] * 4  # unperturbed steps all-reduce their applied gradient
        # each replica's own clean gradient would give each its own LookSAM component: refused, not diverged
        assert "synchronized" in res["per-replica/looksam"]["refused"]
