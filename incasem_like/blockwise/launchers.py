"""Launchers start worker processes; the scheduler does not care where they run.

A worker is always the same command, `python -m incasem_like.blockwise.worker SPEC.json`, with the daisy
connection in the `DAISY_CONTEXT` environment variable. The local launcher runs it as a child process; the SLURM
and LSF launchers submit the same command as a batch job and wait for the job to end (`sbatch --wait`,
`bsub -K`), so a job that dies or is killed by the cluster ends its submission with a non-zero code and daisy
counts it as a lost worker: the block it held is retried and another job is submitted, up to `max_restarts`.
Jobs are submitted not to be requeued or rerun by the cluster (`--no-requeue`, `-rn`): a lost job ends its
submission at once instead of waiting in the queue as the same worker. daisy returns only once every submission
has: a waiting submission checks that the scheduler still listens and cancels its job (`scancel`, `bkill`) once
the run is over, so a job still queued then does not hold the command.

Commands are argument lists, never shell strings. This module stays light (standard library only): daisy
unpickles `WorkerSpawner` in a process of its own for every worker.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: environment variable telling a worker how many threads its compute may use
WORKER_THREADS_ENV = "INCASEM_LIKE_WORKER_THREADS"
#: the thread pools of the numeric libraries (OpenMP, BLAS), sized when they load: set before the worker starts
NUMERIC_THREADS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
#: daisy's default number of replacement workers a run may start after its first `workers`
DEFAULT_MAX_RESTARTS = 10
#: how often a waiting submission checks that the scheduler still listens
SCHEDULER_CHECK_SECONDS = 5.0
#: in a run's folder: written by the worker that stopped the run on a repeated error (see `worker.py`)
STOP_FILE = "stopped.json"
#: SLURM runs a script, not a program: this one runs its arguments as they are (no shell parses them)
SLURM_JOB_SCRIPT = '#!/bin/sh\nexec "$@"\n'


@dataclass(frozen=True)
class WorkerJob:
    """One worker to start: its name, command, environment additions and the folder for its scheduler log."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str]
    log_dir: Path
    #: host and port of the daisy scheduler
    scheduler: tuple[str, int]


class Launcher(Protocol):
    @property
    def scheduler_host(self) -> str:
        """The address workers use to reach the scheduler."""
        ...

    @property
    def max_restarts(self) -> int:
        """Replacement workers a run may start when workers die or their jobs are lost."""
        ...

    def worker_threads(self, workers: int) -> int:
        """Threads each worker's compute may use."""
        ...

    def run_worker(self, job: WorkerJob) -> None:
        """Run one worker to completion; raises `RuntimeError` saying why when it did not end cleanly."""
        ...


@dataclass(frozen=True)
class LocalLauncher:
    """Runs each worker as a separate OS process on this machine."""

    #: loopback keeps the scheduler private to this machine
    scheduler_host: str = "127.0.0.1"
    max_restarts: int = DEFAULT_MAX_RESTARTS

    def worker_threads(self, workers: int) -> int:
        """The machine's cores shared out between the workers."""
        return max(1, len(os.sched_getaffinity(0)) // workers)

    def run_worker(self, job: WorkerJob) -> None:
        """Its output goes to the daisy worker log (inherited streams)."""
        code = subprocess.run(list(job.command), env={**os.environ, **job.env}, stdin=subprocess.DEVNULL).returncode
        if code == INTERRUPTED:  # Ctrl-C: the run ends, quietly
            raise SystemExit(code)
        if code != 0:
            raise RuntimeError(f"worker exited with code {code}")


@dataclass(frozen=True)
class JobResources:
    """What each worker job asks the cluster for; None leaves the cluster's default."""

    cpus: int = 1
    gpus: int | None = None
    memory_mb: int | None = None
    time_minutes: int | None = None
    queue: str | None = None
    account: str | None = None
    #: passed to sbatch/bsub before the command, unchanged
    extra_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SlurmLauncher:
    """Submits each worker with `sbatch --wait` (one task, `cpus` cores), the environment exported to the job.

    The command goes to a two-line script (`exec "$@"`) as its arguments, so SLURM passes them unparsed.
    """

    scheduler_host: str
    resources: JobResources = JobResources()
    max_restarts: int = DEFAULT_MAX_RESTARTS

    def worker_threads(self, workers: int) -> int:
        return self.resources.cpus

    def submit_command(self, job: WorkerJob, script: Path) -> list[str]:
        resources = self.resources
        options = [
            "--wait",
            f"--job-name={job.name}",
            f"--output={str(job.log_dir / job.name).replace('%', '%%')}-%j.out",
            "--export=ALL",
            "--no-requeue",
            "--ntasks=1",
            f"--cpus-per-task={resources.cpus}",
        ]
        if resources.gpus:
            options.append(f"--gres=gpu:{resources.gpus}")
        if resources.memory_mb:
            options.append(f"--mem={resources.memory_mb}M")
        if resources.time_minutes:
            options.append(f"--time={resources.time_minutes}")
        if resources.queue:
            options.append(f"--partition={resources.queue}")
        if resources.account:
            options.append(f"--account={resources.account}")
        return ["sbatch", *options, *resources.extra_args, str(script), *job.command]

    def run_worker(self, job: WorkerJob) -> None:
        """sbatch's exit code is the job's: non-zero when the job failed, was cancelled, hit its time limit or
        lost its node."""
        job.log_dir.mkdir(parents=True, exist_ok=True)
        script = job.log_dir / "worker_job.sh"
        if not script.exists():
            temporary = script.with_name(f".{script.name}.{os.getpid()}")
            temporary.write_text(SLURM_JOB_SCRIPT)
            temporary.chmod(0o755)
            temporary.replace(script)
        _submit(self.submit_command(job, script), job, r"Submitted batch job (\d+)", "scancel", self.job_end)

    def job_end(self, job: WorkerJob, job_id: str) -> str | None:
        """What ended a job early, as slurmstepd wrote it into the job's log (sbatch --wait may not know: without
        accounting it loses track of a job that ended while it waited, and exits 0)."""
        log = job.log_dir / f"{job.name}-{job_id}.out"
        found = (
            re.search(r"\*\*\* JOB \d+ ON \S+ CANCELLED AT \S+ (.*?)\s*\*\*\*", log.read_text(errors="replace"))
            if log.is_file()
            else None
        )
        if found is None:
            return None
        if "TIME LIMIT" in found[1]:
            limit = f"{self.resources.time_minutes} min" if self.resources.time_minutes else "the partition's"
            return f"job {job_id} hit its time limit ({limit}); raise --time-limit"
        return f"job {job_id} was cancelled ({found[1] or 'scancel'}); its blocks go to another job"


@dataclass(frozen=True)
class LsfLauncher:
    """Submits each worker with `bsub -K` (`cpus` slots on one host); bsub copies the environment to the job.

    LSF runs the job's command line through a shell on the execution host, so each argument goes to bsub quoted
    for that shell (`shlex.quote`) and arrives unchanged.
    """

    scheduler_host: str
    resources: JobResources = JobResources()
    max_restarts: int = DEFAULT_MAX_RESTARTS

    def worker_threads(self, workers: int) -> int:
        return self.resources.cpus

    def submit_command(self, job: WorkerJob) -> list[str]:
        resources = self.resources
        options = ["-K", "-rn", "-J", job.name, "-o", str(job.log_dir / job.name) + "-%J.out"]
        options += ["-n", str(resources.cpus), "-R", "span[hosts=1]"]
        if resources.gpus:
            options += ["-gpu", f"num={resources.gpus}"]
        if resources.memory_mb:
            options += ["-M", f"{resources.memory_mb}MB", "-R", f"rusage[mem={resources.memory_mb}MB]"]
        if resources.time_minutes:
            hours, minutes = divmod(resources.time_minutes, 60)
            options += ["-W", f"{hours}:{minutes:02d}"]
        if resources.queue:
            options += ["-q", resources.queue]
        if resources.account:
            options += ["-P", resources.account]
        return ["bsub", *options, *resources.extra_args, *map(shlex.quote, job.command)]

    def run_worker(self, job: WorkerJob) -> None:
        """bsub -K's exit code is the job's: non-zero when the job failed, was killed or hit its run limit."""
        job.log_dir.mkdir(parents=True, exist_ok=True)
        _submit(self.submit_command(job), job, r"Job <(\d+)>", "bkill")


def _submit(
    command: list[str],
    job: WorkerJob,
    job_id_pattern: str,
    cancel_program: str,
    job_end: Callable[[WorkerJob, str], str | None] | None = None,
) -> None:
    """Run a blocking submission (its output goes to the daisy worker log). Once the scheduler stops listening
    (the run is over) its job is cancelled, which ends it cleanly; otherwise a failure raises with the submitting
    program's last complaint, e.g. a refused partition, or with what `job_end` finds ended the job early."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        submission = subprocess.Popen(
            command, env={**os.environ, **job.env}, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        cancelled = False
        while True:
            try:
                code = submission.wait(timeout=SCHEDULER_CHECK_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if not cancelled and not _listening(job.scheduler):
                    out.seek(0)
                    job_id = re.search(job_id_pattern, out.read().decode(errors="replace"))
                    if job_id:
                        subprocess.run([cancel_program, job_id[1]], stdin=subprocess.DEVNULL)
                        cancelled = True
        out.seek(0)
        err.seek(0)
        submitted = out.read().decode(errors="replace")
        sys.stdout.write(submitted)
        complaint = err.read().decode(errors="replace")
        sys.stderr.write(complaint)
    job_id = re.search(job_id_pattern, submitted)
    ended = job_end(job, job_id[1]) if job_end and job_id and not cancelled else None
    if ended:
        raise RuntimeError(ended)
    if code != 0 and not cancelled:
        last = complaint.strip().splitlines()[-1:] or ["the job failed, was killed or lost its node"]
        raise RuntimeError(f"{command[0]} exited with code {code}: {last[0]}")


def _listening(address: tuple[str, int]) -> bool:
    """Whether something accepts connections at `address` (a refusal means the scheduler is gone)."""
    try:
        with socket.create_connection(address, timeout=30):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:  # unreachable for now is not gone
        return True


#: the exit code of a worker stopped by Ctrl-C (SIGINT), as a shell reports it
INTERRUPTED = 130


def _wait_for_the_worker(signum, frame) -> None:
    """SIGINT in the process that waits for a worker: nothing to do (a Python handler, so the worker, started
    after it is set, gets the default one back)."""


def worker_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "incasem_like.blockwise.worker", str(spec_path)]


@dataclass(frozen=True)
class WorkerSpawner:
    """daisy's worker function: starts one worker through the launcher and waits for it; once the run stopped
    (`stop_file` exists) it fails at once instead, so daisy uses up its replacements and gives the run up.

    daisy runs it in a process of its own; it lives in this light module so that process starts fast.
    """

    launcher: Launcher
    name: str
    command: tuple[str, ...]
    log_dir: Path
    threads: int
    stop_file: Path

    def __call__(self, *, context) -> None:
        # Ctrl-C reaches the whole process group: this process goes on waiting for its worker, which ends itself
        signal.signal(signal.SIGINT, _wait_for_the_worker)
        if self.stop_file.exists():
            raise RuntimeError(f"the run stopped ({self.stop_file}): no worker started")
        threads = {name: str(self.threads) for name in (WORKER_THREADS_ENV, *NUMERIC_THREADS_ENV)}
        env = {"DAISY_CONTEXT": context.to_env(), **threads}
        scheduler = (context["hostname"], int(context["port"]))
        self.launcher.run_worker(WorkerJob(self.name, self.command, env, self.log_dir, scheduler))
