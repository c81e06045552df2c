"""The distributed floor: process groups and FSDP2 state-dict helpers (imports torch only).

``training`` (the loop, sharding a model) and ``checkpointing`` (sharded DCP checkpoints) build
on this; it imports nothing else of tunekit.
"""

from tunekit.distributed._process import (
    all_reduce_sum,
    any_rank_true,
    barrier,
    broadcast_object,
    destroy_distributed,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_rank_zero,
    launcher_env,
)
from tunekit.distributed._state_dict import (
    FSDP_ATTR,
    full_value,
    gather_full_model,
    gather_full_optimizer_state_dict,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state_dict,
    local_grads,
    mesh_device,
    set_gradient_sync,
)

__all__ = [
    "FSDP_ATTR",
    "all_reduce_sum",
    "any_rank_true",
    "barrier",
    "broadcast_object",
    "destroy_distributed",
    "full_value",
    "gather_full_model",
    "gather_full_optimizer_state_dict",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_rank_zero",
    "is_sharded",
    "launcher_env",
    "load_full_state_dict",
    "load_optimizer_state_dict",
    "local_grads",
    "mesh_device",
    "set_gradient_sync",
]
