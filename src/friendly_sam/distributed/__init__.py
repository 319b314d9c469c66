"""SAM / F-SAM on ``torch.distributed``: DDP steps with defined perturbation semantics, per-replica
checkpoint state, the ``torchrun`` runtime of ``fsam train``. See ``docs/distributed.md``.

Sharded parameters (FSDP2 ``fully_shard``, ZeRO) need no helper here: give the optimizer
``process_group=`` (the group the parameters are sharded over) and its global norms are reduced.
"""

from .comm import AllReduceCounter
from .ddp import PER_REPLICA, PERTURBATION_MODES, SYNCHRONIZED, check_mode, ddp_training_step
from .runtime import DistributedContext, init_from_env, shard_bounds
from .state import gather_replica_states, load_replica_state, replica_state

__all__ = [
    "PERTURBATION_MODES",
    "PER_REPLICA",
    "SYNCHRONIZED",
    "AllReduceCounter",
    "DistributedContext",
    "check_mode",
    "ddp_training_step",
    "gather_replica_states",
    "init_from_env",
    "load_replica_state",
    "replica_state",
    "shard_bounds",
]
