"""SAM / F-SAM on ``torch.distributed``: the perturbation modes, per-replica checkpoint state, the
``torchrun`` runtime of ``fsam train``. The DDP training step is
:func:`friendly_sam.train.ddp_training_step` (``train`` sits above this package). See ``docs/distributed.md``.

Sharded parameters (FSDP2 ``fully_shard``, ZeRO) need no helper here: give the optimizer
``process_group=`` (the group the parameters are sharded over) and its global norms are reduced.
"""

from .comm import AllReduceCounter
from .ddp import PER_REPLICA, PERTURBATION_MODES, SYNCHRONIZED, check_mode
from .runtime import DistributedContext, ProcessGroupError, init_from_env, process_group_failure, shard_bounds
from .state import gather_replica_states, load_replica_state, replica_state

__all__ = [
    "PERTURBATION_MODES",
    "PER_REPLICA",
    "SYNCHRONIZED",
    "AllReduceCounter",
    "DistributedContext",
    "check_mode",
    "gather_replica_states",
    "init_from_env",
    "process_group_failure",
    "ProcessGroupError",
    "load_replica_state",
    "replica_state",
    "shard_bounds",
]
