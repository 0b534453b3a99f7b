"""The roles of the processes of a multi-worker search.

Every worker runs the same steps in lockstep (the collectives need all of them), and every worker
saves checkpoints (saving is collective too); only the chief writes the workdir: search.json,
board.json, TensorBoard logs and the checkpoints that are kept. The others save to a temporary
folder that `loop.search` removes. Without a cluster (one process) that process is the chief.
"""
from __future__ import annotations

__all__ = ["multi_worker", "role"]


def role(strategy) -> tuple:
    """(chief, task_id) of this process under `strategy`: (True, 0) without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                     "chief" not in resolver.cluster_spec().as_dict())
    return chief, task_id


def multi_worker(strategy) -> bool:
    """Whether `strategy`'s cluster has more than one worker (chief included)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1
