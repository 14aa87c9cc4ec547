"""Process lifetime: workers die with their parent; one sweep's processes per folder.

A sweep's worker processes (the ``spawn`` pool, Ray tasks) write into the sweep
folder. Two guarantees keep a folder consistent after ``kill -9``:

* **Workers die with their driver.** :func:`worker_init` (the pool's
  ``initializer``) asks the Linux kernel to send the worker ``SIGKILL`` when its
  parent dies (``prctl(PR_SET_PDEATHSIG)``), and starts a watchdog thread that
  ends the worker within a second once the driver is gone (other systems, and
  Ray workers whose parent is the raylet). The pool's resource tracker exits by
  itself once the driver and the workers are gone (its pipe closes).
* **No sweep starts beside the processes of another one.** Every process that
  writes runs into a folder holds a shared ``flock`` on ``DIR/.sweep.workers``
  and records ``<pid> <start time>`` in it (:func:`hold_folder`). A sweep
  starting in ``DIR`` takes the exclusive flock for a moment
  (:func:`check_no_workers`): while a process of an earlier sweep lives, that
  fails, and the error names the live processes (a pid is live only if its
  start time matches, so a reused pid never blocks). The kernel drops a dead
  process's lock, so no stale lock survives a crash.
* **A local Ray instance ends with its driver.** :func:`ray_loopback` (around
  ``ray.init``) binds every Ray process to 127.0.0.1 and starts a reaper: a
  small process in its own session that records the driver's new descendants
  and, when the driver dies (or :func:`ray_cleanup` asks after
  ``ray.shutdown()``), kills those left orphaned (Ray's agents outlive their
  raylet otherwise). :func:`ray_local_kwargs` keeps the session folder under
  the project cache, private to the user.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import ReproError

WORKERS_FILE = ".sweep.workers"
_PR_SET_PDEATHSIG = 1
_watched: set[int] = set()
_watch_lock = threading.Lock()
_held: dict[str, Any] = {}


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or ``None``
    when no such process runs (or the system has no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # Field 2 (the name) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` runs and, when ``started`` is given, is the same process."""
    if started is not None and start_time(pid) is not None:
        return start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid: int | None = None, interval: float = 0.5) -> None:
    """End this process when ``parent_pid`` (default: the current parent) dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. Everywhere (and for processes
    whose direct parent is not the driver, e.g. Ray workers): a daemon thread
    that checks every ``interval`` seconds and calls ``os._exit(1)``.
    Idempotent per watched pid.
    """
    direct = parent_pid is None or parent_pid == os.getppid()
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    if direct and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    started = start_time(parent_pid)
    if (direct and os.getppid() != parent_pid) or not is_alive(parent_pid, started):
        os._exit(1)   # the parent died before we could watch it
    with _watch_lock:
        if parent_pid in _watched:
            return
        _watched.add(parent_pid)

    def watch():
        while True:
            time.sleep(interval)
            gone = (os.getppid() != parent_pid) if direct else not is_alive(parent_pid, started)
            if gone:
                os._exit(1)

    threading.Thread(target=watch, name=f"reprolib-watch-{parent_pid}", daemon=True).start()


def worker_init(parent_pid: int, folder: str | None = None) -> None:
    """``ProcessPoolExecutor(initializer=worker_init, initargs=(os.getpid(), DIR))``:
    die with the driver and hold ``DIR``'s worker lock for the worker's life."""
    die_with_parent(parent_pid)
    if folder is not None:
        hold_folder(folder)


def hold_folder(folder: str | os.PathLike):
    """Hold a shared lock on ``folder``'s worker file until this process ends
    (or the returned file is closed), and record ``<pid> <start time>`` in it.
    Idempotent for the life of the process."""
    import fcntl

    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held and not _held[key].closed:
        return _held[key]
    fh = open(folder / WORKERS_FILE, "a+")
    fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
    fh.write(f"{os.getpid()} {start_time(os.getpid()) or '-'}\n")
    fh.flush()
    _held[key] = fh   # kept open: the kernel releases the lock when we exit
    return fh


@contextlib.contextmanager
def holding_folder(folder: str | os.PathLike):
    """:func:`hold_folder` for the duration of a block (a Ray task: Ray's worker
    processes outlive the task)."""
    fh = hold_folder(folder)
    try:
        yield
    finally:
        _held.pop(str(Path(folder).resolve()), None)
        fh.close()


def check_no_workers(folder: str | os.PathLike) -> None:
    """Raise :class:`ReproError` while any process of an earlier sweep holds
    ``folder``'s worker lock; else reset the worker file. Call it under the
    folder's sweep lock, before starting workers."""
    import fcntl

    folder = Path(folder)
    path = folder / WORKERS_FILE
    if not path.exists():
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            live = []
            for line in fh.read().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit() and parts[0] != str(os.getpid()):
                    pid, started = int(parts[0]), (None if parts[1] == "-" else parts[1])
                    if is_alive(pid, started):
                        live.append(pid)
            pids = f" (pid {', '.join(map(str, live))})" if live else ""
            raise ReproError(f"processes of an earlier sweep still run in {folder}{pids}; wait "
                             "for them to end (or end them) before resuming this sweep") from None
        fh.truncate(0)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def sweep_lock(folder: str | os.PathLike):
    """One sweep per folder: an exclusive ``flock`` on ``DIR/.sweep.lock`` (the
    kernel drops it when the holder dies) that records the holder's pid and start
    time; then no process of an earlier sweep may still run there
    (:func:`check_no_workers`), and the temporary files that a killed sweep left
    are removed."""
    import fcntl

    from .io import remove_stale_temps

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".sweep.lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().split()
            who = f" (pid {holder[0]})" if holder[:1] and holder[0].isdigit() else ""
            raise ReproError(f"another sweep is writing to {folder}{who}; wait for it to "
                             "finish or choose another --out folder") from None
        fh.seek(0)
        fh.truncate(0)
        fh.write(f"{os.getpid()} {start_time(os.getpid()) or '-'}\n")
        fh.flush()
        check_no_workers(folder)
        for sub in (folder, folder / "runs"):
            remove_stale_temps(sub)
        if (folder / "runs").is_dir():
            for run in (folder / "runs").iterdir():
                if run.is_dir():
                    remove_stale_temps(run)
        yield
    finally:
        fh.close()


def ray_local_kwargs(workers: int, num_gpus: int = 0) -> dict[str, Any]:
    """``ray.init`` arguments for a private local instance: every listener on
    127.0.0.1 (node IP, GCS, raylet, agents), no dashboard, the session folder
    under the project cache (private to the user) instead of the system temp
    folder."""
    import tempfile

    from .io import cache_root

    base = cache_root() / "ray"
    # Ray puts Unix sockets (at most 107 bytes) in its session folder, whose name
    # adds about 70: a long cache path falls back to a short private folder.
    if len(str(base)) > 36:
        base = Path(tempfile.gettempdir()) / f"reprolib-ray-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = base.lstat()
    if base.is_symlink() or st.st_uid != os.getuid():
        raise ReproError(f"{base} (Ray's session folder) is not a folder of yours; remove it or "
                         "set REPROLIB_CACHE to a short path of yours")
    os.chmod(base, 0o700)
    return dict(address="local", num_cpus=workers, num_gpus=num_gpus, include_dashboard=False,
                _node_ip_address="127.0.0.1", _temp_dir=str(base))


def ray_local_env() -> dict[str, str]:
    """Environment for the local Ray processes: bind to loopback only."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # Ray: node IP = loopback (any OS)
            "RAY_NODE_IP_ADDRESS": "127.0.0.1", "RAY_BIND_ADDRESS": "127.0.0.1",
            "RAY_DASHBOARD_AGENT_LISTEN_HOST": "127.0.0.1",
            "RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def ray_loopback():
    """Around ``ray.init`` of a private local instance: every Ray process binds to
    127.0.0.1. Ray replaces a loopback node IP by the machine's address unless
    its "cluster" mode is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by
    the processes it starts and, at import, by the driver: patched here)."""
    try:
        import ray._private.ray_constants as ray_constants
    except ImportError:  # pragma: no cover - another Ray layout: the env still applies
        ray_constants = None
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    token = _ray_reaper()   # every process Ray starts inherits the token and is reaped with us
    with env(dict(ray_local_env(), **{RAY_TOKEN_VAR: token})):
        if ray_constants is not None:
            ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            yield
        finally:
            if ray_constants is not None:
                ray_constants.ENABLE_RAY_CLUSTER = before


RAY_TOKEN_VAR = "REPROLIB_RAY_TOKEN"
_reaper: dict[str, Any] = {}

# The reaper: a process of its own session that outlives a killed driver. It
# records the driver's descendants (Ray's agents are reparented when the raylet
# dies, so it remembers them) and, once the driver is gone, ends them.
_REAPER = r"""
import os, signal, sys, time
driver, started, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mark = ("%s=%s" % ("REPROLIB_RAY_TOKEN", token)).encode()
known = {}   # pid -> start time: every descendant of the driver seen so far
before = set()   # descendants that existed when we started: never ours to end

def stat(pid):
    try:
        text = open("/proc/%s/stat" % pid).read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19]

def survey():
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            st = stat(name)
            if st:
                table[int(name)] = st
    frontier, seen = [driver], set()
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in seen:
                seen.add(pid)
                if (pid, start) not in before:
                    known[pid] = start
                frontier.append(pid)
    return table, seen

def reap():
    for _ in range(3):
        table, tree = survey()
        for pid, start in list(known.items()):
            # Only orphans: a process still under a live driver is not Ray's leftover.
            if pid in table and table[pid][1] == start and pid not in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in table:   # and whatever still carries our token in its environment
            try:
                with open("/proc/%d/environ" % pid, "rb") as fh:
                    if mark in fh.read().split(b"\0"):
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)

table, tree = survey()
before = {(pid, table[pid][1]) for pid in tree}
known.clear()
signal.signal(signal.SIGUSR1, lambda *a: (reap(), os._exit(0)))
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    st = stat(driver)
    if st is None or st[1] != started:
        break
    survey()
    time.sleep(0.5)
reap()
"""


def _ray_reaper() -> str:
    """Start (once per driver) the reaper of the local Ray instance's processes;
    return the token they inherit. Linux only (reads /proc); elsewhere a token
    without a reaper."""
    import subprocess
    import uuid

    proc = _reaper.get("proc")
    if proc is not None and proc.poll() is None:
        return _reaper["token"]
    token = uuid.uuid4().hex
    _reaper["token"] = token
    if sys.platform.startswith("linux") and start_time(os.getpid()):
        _reaper["proc"] = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), start_time(os.getpid()), token],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
    return token


def ray_cleanup() -> None:
    """After ``ray.shutdown()`` of a local instance: end any Ray process it left
    (the agents sometimes outlive it), then the reaper."""
    import signal

    proc = _reaper.pop("proc", None)
    _reaper.pop("token", None)
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGUSR1)   # reap now, then exit
    try:
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - never block the sweep's exit on it
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


@contextlib.contextmanager
def env(values: dict[str, str]):
    """Set environment variables for the duration of a block."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
