"""The Ray cluster a sweep runs on: what it has, what a trial may ask of it, and how many trials fit.

Checked before any trial starts, so a sweep that asks for GPUs the cluster lacks is refused with a
message instead of waiting forever for resources that will never come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner import storage
from tuner.errors import UserError
from tuner.spec import Spec


@dataclass
class Node:
    node_id: str
    address: str
    cpus: float
    gpus: float


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    def describe(self) -> str:
        lines = [f"cluster: {len(self.nodes)} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs"]
        lines += [f"  node {n.node_id[:12]} ({n.address}): {n.cpus:g} CPUs, {n.gpus:g} GPUs" for n in self.nodes]
        return "\n".join(lines)


def inspect() -> Cluster:
    """The live nodes of the Ray cluster this process is connected to."""
    import ray

    nodes = [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), n["Resources"].get("CPU", 0.0),
                  n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    return Cluster(sorted(nodes, key=lambda n: n.node_id))


def workers_have_cuda() -> bool:
    """Whether a process given a GPU by Ray can use CUDA (a test cluster may only declare GPUs)."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    return bool(ray.get(probe.remote()))


def probe_storage(location: str, cluster: Cluster) -> None:
    """Is `location` shared? The driver writes a marker; a task pinned to every node reads it back.

    Decided by a probe, not by the path's shape: `/mnt/x` may be NFS on one cluster and a local disk
    on another. Only a multi-node cluster is probed; one node always sees its own disk."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if len(cluster.nodes) < 2:
        return
    marker, token = storage.join(location, ".tuner-probe"), uuid.uuid4().hex
    storage.write_text(marker, token)

    @ray.remote(num_cpus=0)
    def read(path: str) -> str | None:
        try:
            return storage.read_text(path)
        except (OSError, FileNotFoundError):
            return None

    seen = ray.get([read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                    .remote(marker) for n in cluster.nodes])
    refuse_unshared(location, [n.node_id for n, got in zip(cluster.nodes, seen) if got != token])


def refuse_unshared(location: str, blind: list[str]) -> None:
    if blind:
        raise UserError(f"storage: {location!r} is not shared: node(s) {', '.join(b[:12] for b in blind)} "
                        "cannot read what the driver wrote there. Set storage to s3://bucket/path, "
                        "gs://bucket/path, or a path on a filesystem every node mounts (e.g. NFS)")


def workers(spec: Spec) -> int:
    """Processes per trial: more than one GPU per trial means data-parallel, one worker per GPU."""
    gpus = spec.resources.gpus_per_trial
    return int(gpus) if gpus > 1 else 1


def gpus_per_worker(spec: Spec) -> float:
    return 1.0 if workers(spec) > 1 else spec.resources.gpus_per_trial


def check(spec: Spec, cluster: Cluster) -> None:
    """Refuse what the cluster can never give: every trial would wait forever."""
    problems = []
    need, total = gpus_per_worker(spec), spec.resources.gpus_per_trial
    biggest = max((n.gpus for n in cluster.nodes), default=0.0)
    if need > biggest:
        problems.append(f"resources.gpus_per_trial: got {total:g}, but no node has {need:g} GPU(s) for "
                        f"one worker (largest node: {biggest:g}); lower it or add GPU nodes")
    elif total > cluster.gpus:
        problems.append(f"resources.gpus_per_trial: got {total:g}, but the cluster has {cluster.gpus:g} "
                        f"GPUs in all; at most {cluster.gpus:g} (or add GPU nodes)")
    cpus = spec.resources.cpus_per_trial
    if cpus > max((n.cpus for n in cluster.nodes), default=0.0):
        problems.append(f"resources.cpus_per_trial: got {cpus:g}, but no node has that many CPUs; "
                        f"at most {max(n.cpus for n in cluster.nodes):g}")
    if problems:
        raise UserError("the cluster cannot run these trials:\n" + "\n".join(f"  - {p}" for p in problems))


def concurrency(spec: Spec, cluster: Cluster) -> int | None:
    """How many trials may run at once: the spec's cap, and never more than the GPUs allow.

    Data-parallel trials must be capped: their Tune driver holds no GPU, so Tune alone would start
    more drivers than the GPUs can serve, each waiting for its workers."""
    limit = spec.search.max_concurrent_trials
    gpus = spec.resources.gpus_per_trial
    if gpus > 0:
        fits = max(1, math.floor(cluster.gpus / gpus + 1e-9))
        limit = min(limit, fits) if limit else fits
    return limit
