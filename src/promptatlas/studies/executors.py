"""Where the cells of a study run: here, one after another (``local``), or on Ray (``ray``).

An executor runs *jobs*: each has a key, the keys it needs, and a payload for the work
function, ``work(payload, needed) -> result``, where ``needed`` maps each needed key to its
result. A result is passed to the jobs that need it *as a value* (on Ray an object reference,
moved through Ray's object store), never looked up on a shared disk. ``on_result(key, result)``
is called in the driver for every finished job, in the order they finish; the driver is the
only process that writes the study's folder and results database.

``local`` (the default) runs the jobs in order in this process; an exception stops the study
at once, as it always did (a rerun continues where it stopped).

``ray`` submits every job as a Ray task (``pip install 'promptatlas[ray]'``): on this machine
(``ray.init()``, one task per CPU or per ``gpus_per_cell`` of a GPU) or on a cluster
(``address``: ``auto`` for the cluster this machine belongs to, or ``ray://host:10001``; see
docs/executors.md). Tasks keep their worker process between jobs (``max_calls=0``), so a
worker loads the model once and reuses it for every cell it runs. A job that fails is retried
``max_retries`` times; one that still fails is reported with its error, and each job that needs
it is reported as not run because of it; the others go on, and the study then stops with an
:class:`ExecutorError` naming them all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from promptatlas.configtools import ConfigBase, ConfigError

__all__ = [
    "EXECUTORS",
    "ExecutorError",
    "ExecutorSpec",
    "Job",
    "JobFailure",
    "RayMissingError",
    "import_ray",
    "run_jobs",
]

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'promptatlas[ray]'"


class ExecutorError(RuntimeError):
    """Jobs that failed (after their retries) and the jobs that could not run because of them."""

    def __init__(self, failures: Sequence[JobFailure]) -> None:
        self.failures = list(failures)
        lines = [failure.describe() for failure in self.failures]
        super().__init__(
            f"{len(lines)} cell(s) did not finish: " + "; ".join(lines) + ". Finished cells are "
            "kept: fix the cause and rerun the same command to run the rest"
        )


class RayMissingError(ConfigError):
    """``executor: ray`` without Ray installed."""


@dataclass(frozen=True)
class ExecutorSpec(ConfigBase):
    """The ``executor`` block of a grid file (and the ``--executor`` options).

    kind: "local" (this process, one cell after another) or "ray".
    address: the Ray cluster to join ("auto": the cluster this machine is part of; a
        ``ray://host:port`` address; default: a Ray instance started on this machine).
    gpus_per_cell: GPUs each cell holds (fractions share a GPU, e.g. 0.5 = two cells per GPU;
        0 = CPU). ``cpus_per_cell``: CPUs each cell holds.
    max_retries: how many times a failed cell is tried again (Ray only).
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    gpus_per_cell: float = 0.0
    cpus_per_cell: float = 1.0
    max_retries: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in EXECUTORS:
            raise self.invalid("kind", f"expected one of {list(EXECUTORS)}, got {self.kind!r}")
        if self.gpus_per_cell < 0 or self.cpus_per_cell < 0:
            raise self.invalid("gpus_per_cell", "GPUs and CPUs per cell must be ≥ 0")
        if self.gpus_per_cell > 1 and self.gpus_per_cell != int(self.gpus_per_cell):
            raise self.invalid(
                "gpus_per_cell", f"above 1 a cell takes whole GPUs, got {self.gpus_per_cell}"
            )
        if self.max_retries < 0:
            raise self.invalid("max_retries", f"must be ≥ 0, got {self.max_retries}")
        if self.kind == "local" and (self.address or self.gpus_per_cell):
            raise self.invalid(
                "kind", "address and gpus_per_cell need the ray executor (--executor ray)"
            )


@dataclass(frozen=True)
class Job:
    """One unit of work: ``key`` (hashable, unique), the keys of the results it ``needs`` (other
    jobs or given inputs) and the ``payload`` handed to the work function."""

    key: Hashable
    needs: tuple[Hashable, ...] = ()
    payload: Any = None
    name: str = ""


@dataclass
class JobFailure:
    key: Hashable
    name: str
    error: str
    blocked_by: str | None = None  # the failed job this one needed

    def describe(self) -> str:
        if self.blocked_by is not None:
            return f"{self.name} not run (it needs {self.blocked_by}, which failed)"
        return f"{self.name} failed: {self.error}"


@dataclass
class _Plan:
    jobs: Sequence[Job]
    inputs: Mapping[Hashable, Any]
    index: dict[Hashable, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {job.key: i for i, job in enumerate(self.jobs)}
        for job in self.jobs:
            for need in job.needs:
                if (
                    need not in self.inputs
                    and self.index.get(need, len(self.jobs)) >= self.index[job.key]
                ):
                    raise ValueError(f"job {job.name or job.key} needs {need}, which comes later")


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayMissingError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(
            f"the ray executor needs Ray, which is not installed: {RAY_INSTALL} (or "
            "pip install 'ray>=2.9'); without it, use --executor local"
        ) from None
    return ray


def run_jobs(
    spec: ExecutorSpec,
    jobs: Sequence[Job],
    work: Callable[[Any, Mapping[Hashable, Any]], Any],
    *,
    on_result: Callable[[Hashable, Any], None],
    inputs: Mapping[Any, Any] | None = None,
    shared: Any = None,
    log: Callable[[str], Any] = print,
) -> None:
    """Run ``jobs`` with the executor ``spec`` names; see the module docstring. ``shared`` is
    handed to ``work`` as the payload's first element on every job (``work((shared, payload),
    needed)``), sent once to a cluster instead of once per job."""
    plan = _Plan(jobs, dict(inputs or {}))
    if spec.kind == "local":
        _run_local(plan, work, on_result, shared)
    else:
        _run_ray(spec, plan, work, on_result, shared, log)


def _run_local(
    plan: _Plan,
    work: Callable[[Any, Mapping[Hashable, Any]], Any],
    on_result: Callable[[Hashable, Any], None],
    shared: Any,
) -> None:
    results: dict[Hashable, Any] = dict(plan.inputs)
    for job in plan.jobs:
        needed = {need: results[need] for need in job.needs}
        result = work((shared, job.payload), needed)
        results[job.key] = result
        on_result(job.key, result)


def _call(
    work: Any,
    shared: Any,
    payload: Any,
    threads: int | None,
    needs: Sequence[Hashable],
    *values: Any,
) -> Any:
    """The body of every Ray task: the needed results arrive as values (Ray resolves the object
    references passed as arguments before the task starts). ``threads``: the driver's torch
    thread count on a local Ray (a worker otherwise gets one thread per CPU it holds): float
    sums depend on the thread count, and the same machine must give the same prompt bytes with
    either executor."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return work((shared, payload), dict(zip(needs, values, strict=True)))


def _run_ray(
    spec: ExecutorSpec,
    plan: _Plan,
    work: Callable[[Any, Mapping[Hashable, Any]], Any],
    on_result: Callable[[Hashable, Any], None],
    shared: Any,
    log: Callable[[str], Any],
) -> None:
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        started = time.perf_counter()
        ray.init(address=spec.address or None, logging_level="ERROR", log_to_driver=True)
        started_here = True
        resources = ray.cluster_resources()
        log(
            f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
            f"({time.perf_counter() - started:.0f}s to start)"
        )
    try:
        task = ray.remote(
            num_cpus=spec.cpus_per_cell,
            num_gpus=spec.gpus_per_cell,
            max_calls=0,  # keep the worker (and the model it loaded) between cells
            max_retries=spec.max_retries,
            retry_exceptions=spec.max_retries > 0,
        )(_call)
        shared_ref = ray.put(shared)
        work_ref = ray.put(work)
        refs: dict[Hashable, Any] = {}
        for key, value in plan.inputs.items():
            if any(key in job.needs for job in plan.jobs):
                refs[key] = ray.put(value)
        pending: dict[Any, Job] = {}
        threads = None if spec.address else _driver_threads()
        for job in plan.jobs:
            ref = task.remote(
                work_ref,
                shared_ref,
                job.payload,
                threads,
                job.needs,
                *(refs[n] for n in job.needs),
            )
            refs[job.key] = ref
            pending[ref] = job
        _collect(ray, plan, pending, on_result)
    finally:
        if started_here:
            ray.shutdown()


def _driver_threads() -> int:
    import torch

    return torch.get_num_threads()


def _collect(
    ray: Any,
    plan: _Plan,
    pending: dict[Any, Job],
    on_result: Callable[[Hashable, Any], None],
) -> None:
    failed: dict[Hashable, JobFailure] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in sorted(ready, key=lambda r: plan.index[pending[r].key]):
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # RayTaskError, WorkerCrashedError, ...
                    blocked = next((n for n in job.needs if n in failed), None)
                    name = job.name or str(job.key)
                    if blocked is not None:
                        root = failed[blocked]
                        origin = root.blocked_by or root.name
                        failed[job.key] = JobFailure(job.key, name, "", blocked_by=origin)
                    else:
                        failed[job.key] = JobFailure(job.key, name, _reason(exc))
                    print(f"promptatlas: {failed[job.key].describe()}", file=sys.stderr)
                    continue
                on_result(job.key, result)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    if failed:
        raise ExecutorError(sorted(failed.values(), key=lambda f: plan.index[f.key]))


def _reason(exc: BaseException) -> str:
    """The original error of a failed Ray task, in one line."""
    cause = getattr(exc, "cause", None)
    error = cause if isinstance(cause, BaseException) else exc
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".rstrip(": ")
