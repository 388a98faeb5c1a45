"""Launchers start worker processes; the scheduler does not care where they run.

A worker is always the same command, `python -m incasem_like.blockwise.worker SPEC.json`, with the daisy
connection in the `DAISY_CONTEXT` environment variable. The local launcher runs it as a child process; cluster
launchers (SLURM, LSF) submit the same command as a batch job.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalLauncher:
    """Runs each worker as a separate OS process on this machine."""

    #: address workers use to reach the scheduler; loopback keeps it private to this machine
    scheduler_host: str = "127.0.0.1"

    def run_worker(self, command: list[str], env: dict[str, str]) -> int:
        """Run one worker to completion and return its exit code (its output goes to the daisy worker log)."""
        return subprocess.run(command, env={**os.environ, **env}, stdin=subprocess.DEVNULL).returncode


#: environment variable telling a worker how many threads its compute may use (the machine's cores / workers)
WORKER_THREADS_ENV = "INCASEM_LIKE_WORKER_THREADS"


def worker_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "incasem_like.blockwise.worker", str(spec_path)]


@dataclass(frozen=True)
class WorkerSpawner:
    """daisy's worker function: starts one worker through the launcher and waits for it.

    daisy runs it in a process of its own; it lives in this light module so that process starts fast.
    """

    launcher: LocalLauncher
    command: tuple[str, ...]
    threads: int

    def __call__(self, *, context) -> None:
        env = {"DAISY_CONTEXT": context.to_env(), WORKER_THREADS_ENV: str(self.threads)}
        returncode = self.launcher.run_worker(list(self.command), env)
        if returncode != 0:
            raise RuntimeError(f"worker exited with code {returncode}")
