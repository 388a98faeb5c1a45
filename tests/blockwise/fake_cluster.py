"""Fake `sbatch` and `bsub` executables for the cluster tests, and a slow stage whose jobs can be killed mid-run.

The fakes parse their arguments as the real programs do (options up to the script or command, which with its
arguments follows unchanged), start the job in the background on this machine with the environment the real
program would give it (sbatch: `--export`; bsub: the submitter's whole environment) and its output in the file
`--output`/`-o` names, and wait for it when told to (`sbatch --wait`, `bsub -K`), then exit with the job's code.
Every submission and every started job is appended as a JSON line to `records.jsonl` beside them.
With FAKE_PENDING_AFTER=N in the environment, jobs after the N-th stay queued until `scancel`/`bkill` (fakes
too) cancels them.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from incasem_like.blockwise.stage import BlockwiseStage
from tests.toy_stages import BoxSumStage, SlowBlocks

COMMON = r'''
import fcntl, json, os, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDED_ENV = ("DAISY_CONTEXT", "INCASEM_LIKE_WORKER_THREADS", "INCASEM_TEST_BLOCK_SLEEP")


def record(entry):
    with open(HERE / "records.jsonl", "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps(entry) + "\n")


def next_job_id():
    with open(HERE / "job_counter", "a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        job_id = int(counter.read() or 1000) + 1
        counter.seek(0)
        counter.truncate()
        counter.write(str(job_id))
    return job_id


def parse(argv, flags, valued):
    """Options (`--name=value`, `--name value`, `-x value`, flags) up to the first other argument, as the real
    programs read them; returns the options (repeated ones as lists) and the rest."""
    options, index = {}, 0
    while index < len(argv) and argv[index].startswith("-"):
        name, equals, value = argv[index].partition("=")
        if name in flags and not equals:
            options[name] = True
        elif name in valued:
            if not equals:
                index += 1
                if index == len(argv):
                    sys.exit(f"{PROGRAM}: option {name} requires an argument")
                value = argv[index]
            options[name] = [*options[name], value] if name in options else value
        else:
            sys.exit(f"{PROGRAM}: unrecognized option '{argv[index]}'")
        index += 1
    return options, argv[index:]


def stay_queued(job_id):
    """Past FAKE_PENDING_AFTER jobs the queue is full: wait, never starting, until the job is cancelled."""
    if job_id <= 1000 + int(os.environ.get("FAKE_PENDING_AFTER", 10**9)):
        return
    while not (HERE / f"cancelled_{job_id}").exists():
        time.sleep(0.05)
    record({"event": "cancelled", "program": PROGRAM, "job_id": job_id})
    sys.exit(f"{PROGRAM}: job {job_id} was cancelled while queued")


def start(job_id, command, env, output):
    """Start the job in a session of its own (it outlives a submission that does not wait) and record it."""
    with open(output, "a") as out:
        job = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    record({"event": "started", "program": PROGRAM, "job_id": job_id, "pid": job.pid})
    return job
'''

SBATCH = r'''
PROGRAM = "sbatch"
FLAGS = {"--wait", "-W", "--parsable", "--exclusive", "--no-requeue", "--requeue"}
VALUED = {
    "--job-name", "-J", "--output", "-o", "--error", "-e", "--export", "--ntasks", "-n", "--cpus-per-task", "-c",
    "--gres", "--gpus", "-G", "--mem", "--time", "-t", "--partition", "-p", "--account", "-A", "--qos", "-q",
    "--constraint", "-C", "--chdir", "-D",
}


def job_environment(export):
    """--export: ALL (the default), NONE, or either followed by VAR or VAR=value items."""
    items = export.split(",")
    env = {} if items[0] == "NONE" else dict(os.environ)
    for item in items[1:] if items[0] in ("ALL", "NONE") else items:
        name, has_value, value = item.partition("=")
        if has_value:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def main():
    options, rest = parse(sys.argv[1:], FLAGS, VALUED)
    if not rest:
        sys.exit("sbatch: error: no batch script given (and none on stdin in this fake)")
    script = Path(rest[0])
    if not script.is_file() or not script.read_text().startswith("#!"):
        sys.exit("sbatch: error: This does not look like a batch script.  The first line must start with #!")
    if os.environ.get("FAKE_SBATCH_REFUSE"):  # as sbatch answers a submission the cluster does not accept
        record({"event": "refused", "program": PROGRAM, "argv": sys.argv[1:]})
        sys.exit("sbatch: error: Batch job submission failed: " + os.environ["FAKE_SBATCH_REFUSE"])
    job_id = next_job_id()
    name = options.get("--job-name", options.get("-J", script.name))
    env = job_environment(options.get("--export", os.environ.get("SBATCH_EXPORT", "ALL")))
    env.update(SLURM_JOB_ID=str(job_id), SLURM_CPUS_PER_TASK=options.get("--cpus-per-task", "1"))
    pattern = options.get("--output", options.get("-o", "slurm-%j.out"))
    output = pattern.replace("%%", "\0").replace("%j", str(job_id)).replace("%x", name).replace("\0", "%")
    waits = "--wait" in options or "-W" in options
    record({
        "event": "submitted", "program": PROGRAM, "job_id": job_id, "argv": sys.argv[1:], "options": options,
        "command": rest, "env": {key: env[key] for key in RECORDED_ENV if key in env},
    })
    print(job_id if "--parsable" in options else f"Submitted batch job {job_id}", flush=True)
    stay_queued(job_id)
    job = start(job_id, [str(script), *rest[1:]], env, output)
    if waits:
        code = job.wait()
        sys.exit(code if code >= 0 else 128 - code)


main()
'''

BSUB = r"""
PROGRAM = "bsub"
FLAGS = {"-K", "-I", "-x", "-rn", "-r"}
VALUED = {"-J", "-o", "-e", "-n", "-R", "-M", "-W", "-q", "-P", "-gpu", "-G", "-env", "-cwd"}


def main():
    options, rest = parse(sys.argv[1:], FLAGS, VALUED)
    if not rest:
        sys.exit("bsub: no command given (and none on stdin in this fake)")
    job_id = next_job_id()
    env = dict(os.environ, LSB_JOBID=str(job_id))
    output = options.get("-o", os.devnull).replace("%J", str(job_id))
    record({
        "event": "submitted", "program": PROGRAM, "job_id": job_id, "argv": sys.argv[1:], "options": options,
        "command": rest, "env": {key: env[key] for key in RECORDED_ENV if key in env},
    })
    # LSF stores the command line as one string and runs it through a shell on the execution host
    print(f"Job <{job_id}> is submitted to queue <{options.get('-q', 'normal')}>.", flush=True)
    stay_queued(job_id)
    job = start(job_id, ["/bin/sh", "-c", " ".join(rest)], env, output)
    if "-K" in options:
        print("<<Waiting for dispatch ...>>", flush=True)
        code = job.wait()
        print("<<Job is finished>>" if code == 0 else f"Exited with exit code {code}.", flush=True)
        sys.exit(code if code >= 0 else 128 - code)


main()
"""


CANCEL = r"""
PROGRAM = Path(sys.argv[0]).name
record({"event": "cancel", "program": PROGRAM, "job_id": int(sys.argv[1])})
(HERE / f"cancelled_{sys.argv[1]}").touch()
"""


class FakeCluster:
    """The folder holding the fake `sbatch` and `bsub` (put first on PATH by the test) and what they recorded."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        for name, program in (("sbatch", SBATCH), ("bsub", BSUB), ("scancel", CANCEL), ("bkill", CANCEL)):
            path = folder / name
            path.write_text(f"#!{sys.executable}\n{COMMON}\n{program}")
            path.chmod(0o755)

    def records(self, event: str) -> list[dict]:
        log = self.folder / "records.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [entry for entry in map(json.loads, lines) if entry["event"] == event]

    def submissions(self) -> list[dict]:
        return self.records("submitted")

    def job_pids(self) -> list[int]:
        return [entry["pid"] for entry in self.records("started")]


class SlowBoxSumStage(SlowBlocks, BoxSumStage):
    pass


def done_blocks(stage: BlockwiseStage) -> int:
    """Blocks of `stage`'s run recorded as done so far."""
    done = stage.outputs()[0].run_dir / "tracking" / "done"
    return int(np.count_nonzero(zarr.open_array(done, mode="r")[:])) if done.exists() else 0


def kill_first_job(cluster: FakeCluster, stage: BlockwiseStage, after_blocks: int, killed: list[int]) -> None:
    """SIGKILL the first fake-submitted job once `after_blocks` blocks of `stage` are done (run it in a thread
    beside the run); its pid goes to `killed`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = cluster.job_pids()
        if pids and done_blocks(stage) >= after_blocks:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.02)
