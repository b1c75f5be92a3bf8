"""Run independent jobs (a sweep's runs, a benchmark's seeds) as Ray tasks, each in its own process.

Every job runs in a fresh worker process (`max_calls=1`): nothing a job loads or seeds (the
model, torch's generators, a cache) reaches the next one, so a job's result never depends on
which jobs ran before it or beside it. Each worker sets torch's thread count to its CPU share:
two torch processes that each use every core slow each other down many times over
(`benchmarks/oversubscription.py` measures it), so `cpus_per_job` is also the thread count.

`address=None` starts a local Ray for the jobs and stops it after; `"auto"` or `"ray://..."` /
`"HOST:PORT"` joins an existing cluster, whose workers must see the same files (the project and
the output folder, on a shared filesystem). A job that raises is reported as failed with its one
line, and the others go on; a worker that dies (killed, out of memory) is reported the same way.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from core.errors import UserError


@dataclass
class JobResult:
    index: int
    ok: bool
    value: Any = None  # what the job returned, when ok
    error: str | None = None  # one line, when not
    seconds: float = 0.0


def _job(fn: Callable, args: tuple, threads: int) -> tuple[bool, Any, float]:
    """What runs inside the worker: set the thread count, call `fn`, never raise."""
    started = time.perf_counter()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a job that does not use torch
        pass
    try:
        return True, fn(*args), time.perf_counter() - started
    except UserError as error:
        return False, str(error), time.perf_counter() - started
    except BaseException as error:  # noqa: BLE001 - a failed job is reported, the others go on
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
        return False, f"{type(error).__name__}: {error}{where}", time.perf_counter() - started


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_ray(address: str | None) -> bool:
    """Start a local Ray (address None) or join `address`; True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address is None:
            ray.init(num_cpus=cpu_count(), object_store_memory=256 * 2**20, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise UserError(None, "--address", f"cannot reach Ray at {address!r} ({str(error).splitlines()[0]})",
                        "start the cluster first (ray start --head), or leave --address out for a local Ray") from None
    return True


class JobRunner:
    """Ray for the length of a `with` block: a local one it starts (and stops), or a cluster it joins.

    `slots` is how many jobs run at once at `cpus_per_job` (and `gpus_per_job`) each.
    """

    def __init__(self, *, cpus_per_job: float = 1, gpus_per_job: float = 0, address: str | None = None):
        if cpus_per_job <= 0:
            raise UserError(None, "--cpus-per-run", f"must be positive, got {cpus_per_job}", "give a CPU share such as 1 or 0.5")
        if gpus_per_job < 0:
            raise UserError(None, "--gpus-per-run", f"must be 0 or more, got {gpus_per_job}", "give a GPU share such as 0.25 or 1")
        self.cpus_per_job, self.gpus_per_job, self.address = cpus_per_job, gpus_per_job, address
        self.slots = 0
        self._started = False

    def __enter__(self) -> Self:
        import ray

        self._started = start_ray(self.address)
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // self.cpus_per_job)
        if self.gpus_per_job:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus_per_job))
        if slots < 1:
            self.__exit__(None, None, None)
            raise UserError(None, "--cpus-per-run" if not self.gpus_per_job else "--gpus-per-run",
                            f"no job fits: the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs",
                            "ask for a smaller share per run")
        self.slots = slots
        return self

    def __exit__(self, *_) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def run(self, fn: Callable, jobs: Sequence[tuple], on_submit: Callable[[int], None] | None = None) -> Iterator[JobResult]:
        """Run `fn(*jobs[i])` for every i, at most `slots` at a time; yield each `JobResult` as it
        finishes. `on_submit(i)` is called as job i is handed to Ray (it starts then, unless the
        cluster is busy with others' work).

        `fn` must be importable by the workers (a module-level function of an installed or
        current-directory package).
        """
        import ray

        threads = max(1, int(self.cpus_per_job))
        remote = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job, max_calls=1, max_retries=0)(_job)
        waiting = list(enumerate(jobs))[::-1]
        pending: dict = {}
        submitted: dict[int, float] = {}
        while waiting or pending:
            while waiting and len(pending) < self.slots:
                index, args = waiting.pop()
                if on_submit:
                    on_submit(index)
                pending[remote.remote(fn, args, threads)] = index
                submitted[index] = time.perf_counter()
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                ok, value, seconds = ray.get(done[0])
            except ray.exceptions.RayError as error:  # the worker died: killed, out of memory
                ok, value, seconds = False, f"{type(error).__name__}: {str(error).splitlines()[0]}", time.perf_counter() - submitted[index]
            yield JobResult(index, ok, value if ok else None, None if ok else str(value), seconds)
