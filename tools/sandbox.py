"""A sandbox for running a student's code while it is graded: bubblewrap, plus a process-count cgroup.

Used by ``tools/sandboxed_grading.py``. What a sandboxed process gets (see ``book/instructors.md``,
"What the sandbox protects"):

- a new mount namespace that holds only the operating system's program folders (``/usr`` and the
  few files of ``/etc`` that programs need), read-only; the Python environment and the course's
  library, read-only; an empty ``/tmp``; and one writable folder, the submission's private working
  copy. The course folder (instructor notebooks, gradebook, other submissions, feedback) is not in
  it at all, so it can be neither read nor written;
- no network (a new network namespace with no interfaces), its own process and IPC namespaces,
  no capabilities, a new session (so it cannot type into the grader's terminal);
- when the sandbox's first process ends, the kernel kills every process left in its process
  namespace, and the sandbox ends when the grader does (``--die-with-parent``);
- a bound on the number of processes (a ``pids`` cgroup, where the machine lets the grader create
  one); memory and CPU time are bounded per exercise by the runner (``RLIMIT_AS``, ``RLIMIT_CPU``).

Nothing here needs a daemon or root: bubblewrap uses unprivileged user namespaces.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path


# Where the private working copy appears inside the sandbox.
WORKDIR_INSIDE = "/submission"
# Files of /etc that Python, matplotlib and the C library read; the rest of /etc is not exposed.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/fonts", "/etc/localtime",
             "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this machine; the message says why and what to do."""


def bwrap_executable() -> str:
    """The ``bwrap`` program, or SandboxUnavailable saying how to install it."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(
            "grading runs every submission in a bubblewrap sandbox, and `bwrap` is not installed: install "
            "Debian's package (`apt-get install bubblewrap`). Only on a machine where no student code can do "
            "harm, grade without a sandbox with `--no-sandbox` (`make grade ... SANDBOX=no`).")
    return found


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """A bubblewrap sandbox: ``read_only`` paths visible at their own place, ``workdir`` writable.

    ``read_only`` should hold the Python environment and the course library, nothing else; each
    path is bound at the same place, so that installed packages find each other.
    """

    workdir: Path
    read_only: tuple[Path, ...]
    environment: dict[str, str] = dataclasses.field(default_factory=dict)

    def command(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside the sandbox, in the working copy."""
        command = [bwrap_executable(), "--unshare-all", "--die-with-parent", "--new-session",
                   "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
        for directory in SYSTEM_DIRS:
            path = Path(directory)
            if path.is_symlink():
                command += ["--symlink", os.readlink(path), directory]
            elif path.is_dir():
                command += ["--ro-bind", directory, directory]
        for file in ETC_FILES:
            command += ["--ro-bind-try", file, file]
        # The empty /tmp first: a course or Python environment that lives under /tmp is bound over it.
        command += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for path in self.read_only:
            command += ["--ro-bind", str(path), str(path)]
        command += ["--bind", str(self.workdir), WORKDIR_INSIDE, "--chdir", WORKDIR_INSIDE, "--clearenv"]
        for key, value in {"HOME": "/tmp", "PATH": "/usr/bin:/bin", **self.environment}.items():
            command += ["--setenv", key, value]
        return command + ["--", *argv]


def check_sandbox_starts(sandbox: Sandbox, python: str) -> None:
    """Start ``python`` in ``sandbox`` once; raise SandboxUnavailable with bubblewrap's words if it cannot."""
    result = subprocess.run(sandbox.command([python, "-c", "import sys; sys.exit(0)"]),
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"the grading sandbox does not start here (bubblewrap: {result.stderr.strip()[-500:] or 'no message'}). "
            "It needs unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1` on older Debian "
            "kernels; in a container, run it with user namespaces allowed). Only where no student code can do "
            "harm, grade without a sandbox with `--no-sandbox`.")


class ProcessLimit:
    """A ``pids`` cgroup that bounds how many processes (and threads) a sandbox may run.

    ``ProcessLimit.create(n)`` returns None where the machine does not let the grader make one
    (no writable cgroup file system); the caller says so, it is not silent. ``add_me`` is called
    in the child before bubblewrap starts, so everything the sandbox runs is counted.
    """

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, max_processes: int) -> "ProcessLimit | None":
        for parent in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            if not (parent / "cgroup.procs").exists() or not os.access(parent, os.W_OK):
                continue
            if parent == Path("/sys/fs/cgroup") and "pids" not in _read(parent / "cgroup.subtree_control"):
                continue
            path = parent / f"course-grading-{uuid.uuid4().hex[:12]}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_processes))
            except OSError:
                _remove(path)
                continue
            return cls(path)
        return None

    def add_me(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        """Kill whatever is still in the group (nothing, normally) and remove it."""
        for line in _read(self.path / "cgroup.procs").split():
            try:
                os.kill(int(line), 9)
            except (ProcessLookupError, ValueError):
                pass
        _remove(self.path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _remove(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
