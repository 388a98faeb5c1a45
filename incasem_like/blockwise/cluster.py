"""Cluster settings of the blockwise commands: `--cluster local|slurm|lsf`, the resources of each worker job and
`--cluster-config FILE` (YAML with the same settings; command-line options override it) -> a launcher.

The scheduler runs where the command is started and workers connect back to it over TCP, so for cluster jobs it
listens on an address the compute nodes can reach: this machine's name if it resolves to a non-loopback address,
else the address of the interface of its default route (`--scheduler-host` overrides either).
"""

import ipaddress
import re
import shlex
import shutil
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from incasem_like.blockwise.launchers import (
    DEFAULT_MAX_RESTARTS,
    JobResources,
    Launcher,
    LocalLauncher,
    LsfLauncher,
    SlurmLauncher,
)
from incasem_like.core.bounds import STRICT
from incasem_like.core.config_files import read_yaml_mapping
from incasem_like.core.errors import FieldError, UserError, describe_validation_error

SUBMIT_PROGRAMS = {"slurm": "sbatch", "lsf": "bsub"}
#: settings that only cluster jobs have
JOB_SETTINGS = ("gpus", "cpus", "memory", "time_limit", "queue", "account", "scheduler_args")
MEMORY_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
#: where the default-route probe points (TEST-NET-3; connecting a UDP socket sends nothing)
ROUTE_PROBE = ("203.0.113.1", 9)


class ClusterSettings(BaseModel):
    """Where workers run and what each worker job asks for (memory in MB, time limit in minutes)."""

    model_config = STRICT

    cluster: Literal["local", "slurm", "lsf"] = "local"
    gpus: int | None = Field(None, ge=0, le=1024)
    cpus: int | None = Field(None, ge=1, le=4096)
    memory: int | None = Field(None, ge=1, le=2**30)
    time_limit: int | None = Field(None, ge=1, le=10**7)
    queue: str | None = Field(None, min_length=1)
    account: str | None = Field(None, min_length=1)
    scheduler_args: list[str] | None = None
    scheduler_host: str | None = Field(None, min_length=1)
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0, le=10**6)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_mb(cls, value):
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", value, re.IGNORECASE)
        if not match:
            raise ValueError("give a size such as 16G, 4000M or 4000 (MB)")
        return max(1, round(int(match[1]) * MEMORY_UNITS_MB[match[2].upper() or "M"]))

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_minutes(cls, value):
        if not isinstance(value, str) or value.strip().isdigit():
            return value
        match = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):(\d\d):(\d\d)\s*", value)
        if not match:
            raise ValueError("give minutes (90) or [D-]H:MM:SS (1:30:00, 2-00:00:00)")
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return days * 1440 + hours * 60 + minutes + (seconds > 0)

    @field_validator("scheduler_args", mode="before")
    @classmethod
    def _split(cls, value):
        if not isinstance(value, str):
            return value
        try:
            return shlex.split(value)
        except ValueError as error:
            raise ValueError(f"cannot split it into arguments ({error})") from None

    def launcher(self) -> Launcher:
        if self.cluster == "local":
            return LocalLauncher(self.scheduler_host or LocalLauncher.scheduler_host, self.max_restarts)
        program = SUBMIT_PROGRAMS[self.cluster]
        if shutil.which(program) is None:
            raise FieldError(
                f"{{cluster}} {self.cluster}: {program} is not on PATH; start the command on a submit host of the "
                f"cluster (or load its {self.cluster} module)"
            )
        resources = JobResources(
            cpus=self.cpus or 1,
            gpus=self.gpus,
            memory_mb=self.memory,
            time_minutes=self.time_limit,
            queue=self.queue,
            account=self.account,
            extra_args=tuple(self.scheduler_args or ()),
        )
        launcher_class = SlurmLauncher if self.cluster == "slurm" else LsfLauncher
        return launcher_class(self.scheduler_host or reachable_host(), resources, self.max_restarts)


def reachable_host() -> str:
    """This machine's name if it resolves to a non-loopback address, else the address of the interface of the
    default route (what other machines reach it by)."""
    name = socket.getfqdn()
    try:
        if not ipaddress.ip_address(socket.gethostbyname(name)).is_loopback:
            return name
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(ROUTE_PROBE)
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        raise UserError(
            f"this machine ({name}) has no non-loopback address that compute nodes could reach the scheduler by; "
            "pass --scheduler-host HOST"
        )
    return address


def load_cluster_config(path: Path) -> dict:
    """The settings of a cluster config file, keys checked (values are validated with the command line's)."""
    if not path.is_file():
        raise FieldError(f"{{cluster_config}} {path}: no such file")
    keys = ", ".join(ClusterSettings.model_fields)
    content = read_yaml_mapping(path, f"cluster settings ({keys})")
    for key in content:
        if key not in ClusterSettings.model_fields:
            raise UserError(f"{path}: unknown key {key!r}; the keys are {keys}")
    return content


def cluster_settings(options: dict, config_file: str | None = None) -> ClusterSettings:
    """Validate the cluster `options` (None = not given) over those of `config_file`; every error is one line
    naming the option (a `FieldError`) or the file's key."""
    path = Path(config_file) if config_file else None
    from_file = load_cluster_config(path) if path else {}
    given = {key: value for key, value in options.items() if value is not None}

    def source(key: str) -> str:
        return f"{{{key}}}" if key in given else f"{path}: {key}"

    try:
        settings = ClusterSettings.model_validate({**from_file, **given})
    except ValidationError as error:
        flags = {key: source(key) for key in ClusterSettings.model_fields}
        raise FieldError(describe_validation_error(error, ClusterSettings, flags)) from None
    if settings.cluster == "local":
        for key in JOB_SETTINGS:
            if getattr(settings, key) is not None:
                raise FieldError(
                    f"{source(key)} applies to cluster jobs only; add {{cluster}} slurm or {{cluster}} lsf"
                )
    return settings
