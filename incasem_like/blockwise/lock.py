"""One run at a time per output: a lock file naming the run that holds it.

The lock is a small JSON file (host, pid, start time, command) put in place atomically: written aside, then
hard-linked to its name, which fails if the name exists (also on NFS). A second run on the same output refuses
with a message naming the holder. A lock whose pid is gone on this same host was left by a run that died: it is
stale and taken over with a warning. A lock held from another host cannot be checked and is never taken over.
"""

import json
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from incasem_like.core.errors import UserError

logger = logging.getLogger(__name__)

#: the lock's name inside a run folder
LOCK = "lock"


def read_holder(path: Path) -> dict | None:
    """What a lock file says about its holder; None if there is none, `{}` if it cannot be read."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def is_alive(holder: dict) -> bool:
    """Whether the holder may still run: always for another host or an unreadable lock."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def describe(holder: dict) -> str:
    if not holder:
        return "a run that left no readable details"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}: {holder.get('command')}"


#: the locks this thread holds (resolved paths): a command holds its outputs while its stages take them again
_held = threading.local()


def _held_here() -> set[Path]:
    if not hasattr(_held, "paths"):
        _held.paths = set()
    return _held.paths


def refuse_if_locked(path: Path, subject: str) -> None:
    """`UserError` naming the holder if another live run holds the lock at `path` (reads only)."""
    if Path(path).resolve() in _held_here():
        return
    holder = read_holder(path)
    if holder is not None and is_alive(holder):
        raise UserError(
            f"{subject} is locked by another run ({describe(holder)}); wait for it to end, or if that run is gone "
            f"(its machine crashed), delete {path} and rerun"
        )


def remove_all_but_lock(folder: Path, lock: Path) -> None:
    """Delete everything in `folder` except the file `lock` inside it (and the folders leading to it)."""
    for entry in folder.iterdir():
        if entry == lock:
            continue
        if lock.is_relative_to(entry):
            remove_all_but_lock(entry, lock)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunLock:
    """Held while a run writes `subject`: `with RunLock(path, subject): ...`.

    Folders it creates for the lock are removed again on release if they are left empty, so a run refused after
    taking the lock leaves nothing behind. A folder that cannot be written is a `UserError` naming it. A lock this
    thread already holds is entered again without taking it (and left to its first holder to release).
    """

    def __init__(self, path: Path, subject: str):
        self.path, self.subject = Path(path), subject
        self.token = uuid.uuid4().hex
        self.created: list[Path] = []

    def __enter__(self) -> "RunLock":
        self.nested = self.path.resolve() in _held_here()
        if self.nested:
            return self
        try:
            self._make_folders()
            self._acquire()
            _held_here().add(self.path.resolve())
        except BaseException as error:
            self._remove_created_folders()
            if isinstance(error, OSError):
                raise UserError(
                    f"{self.subject}: cannot write there ({error.strerror or error}: {error.filename}); "
                    "choose a writable location"
                ) from None
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.nested:
            return
        _held_here().discard(self.path.resolve())
        if (read_holder(self.path) or {}).get("token") == self.token:
            self.path.unlink()
        self._remove_created_folders()

    def _acquire(self) -> None:
        mine = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(sys.argv),
            "token": self.token,
        }
        aside = self.path.with_name(f"{self.path.name}.{self.token}")
        aside.write_text(json.dumps(mine))
        try:
            while True:
                try:
                    os.link(aside, self.path)
                    return
                except FileExistsError:
                    holder = read_holder(self.path)
                    if holder is not None:
                        refuse_if_locked(self.path, self.subject)
                        self._take_over(holder)
        finally:
            aside.unlink()

    def _take_over(self, stale: dict) -> None:
        """Remove a dead run's lock; a lock that another run put there meanwhile is put back."""
        moved = self.path.with_name(f"{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:  # another run removed it first
            return
        if read_holder(moved) != stale:
            os.link(moved, self.path)
        else:
            logger.warning("%s: taking over the lock of a run that is gone (%s)", self.subject, describe(stale))
        moved.unlink()

    def _make_folders(self) -> None:
        missing = [folder for folder in self.path.parents if not folder.exists()]
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made by a run starting beside this one
                continue
            self.created.append(folder)

    def _remove_created_folders(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                return
        self.created.clear()
