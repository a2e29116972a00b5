"""Where a sweep's candidates run: `plan run --all K --executor sequential | ray [--ray-address ADDRESS]`.

    sequential   one candidate after another in this process, sharing the dense model the teacher stage loaded
    ray          one Ray task per candidate (https://docs.ray.io): a local Ray instance started for the run, or the
                 cluster at --ray-address (auto, host:port, or ray://host:port), joined for the run

Both call the same pipeline (`planner.run.pipeline.run_candidate`) and write the same stage records into the run
folder, so the two give the same results.json but for timings. The driver (this process) first runs the dense
baseline once (teacher, quality:dense, lm-eval:dense) and records it; a task reads the teacher's traces from that
record. A task needs the run folder: on a cluster, --out must be on storage every node reaches (a shared file
system), and a task that cannot see it stops the run with that message.

Latency (and --load) is never measured in a task. The driver times every variant after all tasks have finished, as
the sequential run does: the benchmark alternates dense and candidates request by request on one device (the
interleaved A/B rule), so drift on the machine falls on all of them alike, and no two variants are ever timed at
once on the same device, which concurrent tasks could not promise.

A task declares its resources: one GPU where the run's device is CUDA (Ray hands each task its own GPU), else
--threads CPUs (default 1), which is also the task's torch thread count. A local instance gets this machine's cores,
so on 2 cores two candidates run at once, each loading its own copy of the dense model.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from planner.console import escape, say
from planner.errors import InputError, did_you_mean
from planner.run.folder import RunFolder
from planner.run.pipeline import (CandidateOutcome, candidate_stages, failing_rank_for_test, failure_of, read_output,
                                  run_candidate)
from planner.run.stages import RunInputs, RunOptions, TeacherOutput

EXECUTORS = ("sequential", "ray")
CONNECT_TIMEOUT_S = 10.0  # to reach --ray-address before Ray is asked to join it
RAY_PORTS = {"ray": 10001, "": 6379}  # defaults: the Ray Client server, the head node's GCS
OBJECT_STORE_BYTES = 256 * 2**20  # a local instance's object store: tasks return documents of a few kilobytes
MISSING_RAY = "--executor ray needs Ray: pip install 'planner[ray]'"


def check_executor(executor: str, ray_address: str | None) -> None:
    """Bad executor settings are InputErrors, raised before any work."""
    if executor not in EXECUTORS:
        raise InputError(did_you_mean(executor, EXECUTORS, "executor"))
    if ray_address is not None and executor != "ray":
        raise InputError("--ray-address joins a Ray cluster and needs --executor ray")
    if ray_address is not None and not ray_address.strip():
        raise InputError("--ray-address is empty (accepted: auto, host:port, ray://host:port)")


def open_executor(executor: str, ray_address: str | None, opt: RunOptions, device: str):
    """The executor for the run, ready: Ray connected (or refused with an InputError) before any work."""
    check_executor(executor, ray_address)
    if executor == "sequential":
        return SequentialExecutor()
    ray = RayExecutor(ray_address, opt, device)
    ray.start()
    return ray


class SequentialExecutor:
    name = "sequential"

    def run(self, runner, teacher: TeacherOutput) -> list[CandidateOutcome]:
        fail = failing_rank_for_test()
        return [run_candidate(runner.inputs, c, teacher.traces, runner.order, fail_for_test=c.rank == fail)
                for c in runner.candidates]

    def close(self) -> None:
        pass


# -- Ray ------------------------------------------------------------------------------------------------------------


@dataclass
class CandidateJob:
    """What a Ray task needs to run one candidate; picklable, with absolute paths (a worker's folder may differ)."""

    plan: Any
    root: str
    options: RunOptions
    device: str
    model_spec: str | None
    rank: int
    order: list[str]
    threads: int | None
    fail_for_test: bool = False


def run_candidate_job(job: CandidateJob) -> CandidateOutcome:
    """A Ray task's body: its own inputs (and its own copy of the dense model), the teacher's traces read from the
    run folder the driver wrote, then the candidate's pipeline. An InputError comes back as `bad_input`."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        folder = RunFolder(Path(job.root))
        if not (folder.root / "manifest.json").is_file() or not folder.done("teacher"):
            raise InputError(f"run folder {job.root!r} is not visible on Ray node {socket.gethostname()!r}: on a "
                             "cluster, --out must be on storage every node reaches (a shared file system)")
        if job.model_spec and Path(job.model_spec).is_absolute() and not Path(job.model_spec).exists():
            raise InputError(f"the plan's model {job.model_spec!r} is not on Ray node {socket.gethostname()!r}: on "
                             "a cluster, every node needs the model at the same path")
        teacher, _ = read_output(folder, "teacher", TeacherOutput)
        cand = next(c for c in job.plan.candidates if c.rank == job.rank)
        inputs = RunInputs(job.plan, folder, job.options, job.device, job.model_spec)
        return run_candidate(inputs, cand, teacher.traces, job.order, fail_for_test=job.fail_for_test)
    except InputError as exc:
        return CandidateOutcome(rank=job.rank, bad_input=str(exc))


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, opt: RunOptions, device: str):
        self.address = address
        self.opt = opt
        self.device = device
        self.gpu = device.startswith("cuda")
        self.cpus = opt.threads or 1  # per task
        self.started = False  # whether this run started (and so shuts down) the Ray instance
        self.ray = None

    def start(self) -> None:
        # Ray folds log lines that differ only in numbers ("[candidate 2] stage 6/13 prune:2"): keep each one
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        try:
            import ray
        except ImportError:
            raise InputError(MISSING_RAY) from None
        self.ray = ray
        if self.address is not None:
            check_reachable(self.address)
        try:
            if not ray.is_initialized():  # else: the caller's Ray session (a test, a notebook) is used as it is
                self._init()
            self._check_resources()
        except BaseException:
            self.close()
            raise
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        each = "1 GPU" if self.gpu else f"{self.cpus} CPU{'s' if self.cpus > 1 else ''}"
        say(f"candidates run as Ray tasks on {escape(where)} ({escape(_resources(ray.cluster_resources()))}), "
            f"{each} each", self.opt.progress)

    def _init(self) -> None:
        ray = self.ray
        quiet = dict(logging_level=logging.ERROR, log_to_driver=self.opt.progress)
        if self.address is None:
            ray.init(address="local", num_cpus=max(_cores(), self.cpus), include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, **quiet)
        else:
            try:
                ray.init(address=self.address, **quiet)
            except Exception as exc:  # refused, timed out, a version mismatch: the address is the user's to fix
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise InputError(f"cannot join the Ray cluster at --ray-address {self.address!r} "
                                 f"({type(exc).__name__}: {first})") from None
        self.started = True

    def _check_resources(self) -> None:
        """A task no node can hold would wait forever: refuse it now."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        gpus = sum(r.get("GPU", 0) for r in nodes)
        if self.gpu and not gpus:
            raise InputError(f"the run's device is {self.device} but the Ray cluster has no GPU "
                             f"({_resources(self.ray.cluster_resources())}); pass --device cpu, or join a cluster "
                             "with GPUs")
        if not any(r.get("CPU", 0) >= self.cpus and (not self.gpu or r.get("GPU", 0) >= 1) for r in nodes):
            most = max((int(r.get("CPU", 0)) for r in nodes), default=0)
            raise InputError(f"no Ray node has {self.cpus} CPUs for one candidate (the largest has {most}); pass "
                             f"--threads {max(most, 1)} or less")

    def run(self, runner, teacher: TeacherOutput) -> list[CandidateOutcome]:
        """One task per candidate with unfinished stages; the finished ones are read back here. Outcomes in the
        order of the candidates."""
        ray, opt = self.ray, self.opt
        fail = failing_rank_for_test()
        outcomes: dict[int, CandidateOutcome] = {}
        todo = []
        for cand in runner.candidates:
            if all(runner.folder.done(s) for s in candidate_stages(cand, opt)):
                outcomes[cand.rank] = run_candidate(runner.inputs, cand, teacher.traces, runner.order)
            else:
                todo.append(cand)
        options = replace(opt, eval_text=[_absolute(p) for p in opt.eval_text],
                          eval_prompts=[_absolute(p) for p in opt.eval_prompts])
        model_spec = runner.model_spec  # a local folder by its absolute path: a worker may start elsewhere
        if model_spec and Path(model_spec).exists():
            model_spec = _absolute(model_spec)
        task = ray.remote(run_candidate_job)
        resources = dict(num_cpus=self.cpus, num_gpus=1 if self.gpu else 0, max_retries=0)
        refs = {}
        for cand in todo:
            job = CandidateJob(plan=runner.plan, root=str(runner.folder.root.resolve()), options=options,
                               device="cuda" if self.gpu else "cpu", model_spec=model_spec, rank=cand.rank,
                               order=runner.order, threads=self.cpus, fail_for_test=cand.rank == fail)
            refs[task.options(name="planner-candidate", **resources).remote(job)] = cand  # the rank: in its lines
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                cand = refs[done[0]]
                outcome = self._outcome(done[0], cand, runner.folder)
                if outcome.bad_input is not None:
                    raise InputError(outcome.bad_input)
                outcomes[cand.rank] = outcome
                state = (f"failed in {outcome.failure.stage}" if outcome.failure else "finished")
                say(f"{escape(f'[candidate {cand.rank}]')} {state} ({len(outcomes)} of {len(runner.candidates)} "
                    "candidates done)", opt.progress)
        except BaseException:  # Ctrl-C, bad input: nothing more to wait for; finished stages stay recorded
            for ref in pending:
                ray.cancel(ref)
            raise
        return [outcomes[c.rank] for c in runner.candidates]

    def _outcome(self, ref, cand, folder: RunFolder) -> CandidateOutcome:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died (out of memory, a lost node), not the stage
            error = getattr(exc, "cause", None) or exc
            stage = next((s for s in candidate_stages(cand, self.opt) if not folder.done(s)),
                         candidate_stages(cand, self.opt)[-1])
            return CandidateOutcome(rank=cand.rank, failure=failure_of(cand, stage, error))

    def close(self) -> None:
        if self.started and self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


def check_reachable(address: str) -> None:
    """host:port (a head node's GCS) or ray://host:port (its Ray Client server) answers a TCP connection within
    CONNECT_TIMEOUT_S; "auto" (a cluster started on this machine) is found by Ray itself. Without this, Ray retries an
    unreachable address for a minute or more."""
    if address == "auto":
        return
    scheme, _, rest = address.rpartition("://")
    accepted = "accepted: auto, host:port, ray://host:port"
    if scheme not in RAY_PORTS or not rest:
        raise InputError(f"--ray-address {address!r} is not a Ray address ({accepted})")
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:
        host, port = rest, str(RAY_PORTS[scheme])
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r} is not a Ray address ({accepted})")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(exc, socket.gaierror):
            why = "unknown host"
        else:
            why = exc.strerror or type(exc).__name__
        raise InputError(f"cannot reach the Ray cluster at --ray-address {address!r} ({why}); start one there with "
                         "`ray start --head`, or leave out --ray-address to run a local Ray instance") from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _absolute(path: str) -> str:
    return str(Path(path).resolve())


def _resources(resources: dict) -> str:
    shown = [f"{resources.get(k, 0):g} {k}s" for k in ("CPU", "GPU") if resources.get(k)]
    return ", ".join(shown) or "no CPU or GPU"


__all__ = ["EXECUTORS", "check_executor", "open_executor", "SequentialExecutor", "RayExecutor", "CandidateJob",
           "run_candidate_job", "check_reachable"]
