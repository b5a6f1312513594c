"""The student's own copy of the lessons: ``make lab`` opens ``my-lessons/``, never ``lessons/``.

``lessons/`` belongs to the course: ``make lessons`` regenerates it and a ``git pull`` updates it,
so answers written there would be overwritten or collide. Before JupyterLab starts, ``make lab``
runs::

    python tools/student_copy.py lessons my-lessons

The first run copies ``lessons/`` to ``my-lessons/``. Later runs bring what changed in
``lessons/`` *beside* the student's work, never over it:

* a file that is new in the release (a new chapter, say) is copied in;
* a released file the student has not changed is replaced by the new release in place;
* a released file the student has changed stays exactly as it is, and the new release arrives
  next to it as ``<name>.updated-YYYY-MM-DD.ipynb`` (a free name: an existing file is never
  overwritten), with a message saying so;
* files the student added, and released files the student removed, are left alone: a removed
  one is not re-created (a student who renamed a notebook would get a blank one under the graded
  name) but named in the output with the command that brings it back.

How "the student changed it" is told from "it is an old release": ``my-lessons/.release.json``
records, for each released file, the SHA-256 of the release last copied into that path and of
the release last delivered (in place or beside). A file whose bytes equal one of those is an
untouched release. Anything else, including a notebook that was only opened and run (its outputs
changed), counts as the student's: outputs can hold the results of long runs, and keeping a file
is never wrong, while replacing it could lose work. Without the record (deleted, or a folder made
by hand), every existing file that differs from the release counts as the student's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

RECORD_NAME = ".release.json"
# Never part of a release: editor and Python leftovers (hidden names are skipped as well).
SKIPPED_NAMES = frozenset({"__pycache__", ".ipynb_checkpoints"})


class StudentCopyError(ValueError):
    """A path or record problem that stops the copy; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the record knows about one released file (SHA-256 hex digests).

    ``in_copy``: the release last copied to the student's path (None when unknown);
    ``latest``: the release last delivered, in place or beside.
    """

    in_copy: str | None
    latest: str


@dataclasses.dataclass
class Report:
    """What one run did, as paths relative to the copy (``beside`` pairs: student's file, update)."""

    copy_dir: Path
    created: bool = False
    copied: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    beside: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def lines(self, release: Path) -> list[str]:
        """The messages a student reads before JupyterLab opens."""
        where = shown(self.copy_dir)
        if self.created:
            out = [f"Created {where}/: your own copy of the lessons. Work there; "
                   "`make lessons` and lesson updates never overwrite it."]
        else:
            out = [f"Your work: {where}/ (lesson updates arrive beside your files, never over them)."]
        if not self.created:
            out += [f"  new lesson file: {where}/{rel}" for rel in self.copied]
        out += [f"  updated (you had not changed it): {where}/{rel}" for rel in self.updated]
        for rel, update in self.beside:
            out.append(f"  UPDATE BESIDE YOUR WORK: {shown(release)}/{rel} has changed, and so has your "
                       f"{where}/{rel}, which is kept as it is. The new version is {where}/{update}: "
                       "compare them and copy what you need into your file.")
        out += [f"  missing: {where}/{rel} (you removed it; a fresh copy: "
                f"cp {shown(release)}/{rel} {where}/{rel})" for rel in self.missing]
        return out


def shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (shorter messages), else absolute."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return Path(path).resolve().as_posix()


def file_hash(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def released_files(release: Path) -> dict[str, Path]:
    """Every file of the release, keyed by its path relative to ``release`` (posix, sorted)."""
    files = {}
    for path in sorted(Path(release).rglob("*")):
        parts = path.relative_to(release).parts
        if path.is_file() and not any(p.startswith(".") or p in SKIPPED_NAMES for p in parts):
            files["/".join(parts)] = path
    return files


def check_paths(release: Path, copy_dir: Path) -> None:
    """Raise StudentCopyError unless ``release`` is a folder of lessons and ``copy_dir`` can hold a copy."""
    release, copy_dir = Path(release), Path(copy_dir)
    if not release.exists():
        raise StudentCopyError(f"{release} does not exist: run `make lab` in the course folder "
                               "(the one holding lessons/).")
    if not release.is_dir():
        raise StudentCopyError(f"{release} is not a folder: pass the course's lessons/ folder.")
    if not released_files(release):
        raise StudentCopyError(f"{release} holds no lessons: regenerate them with `make lessons`.")
    if copy_dir.exists() and not copy_dir.is_dir():
        raise StudentCopyError(f"{copy_dir} is a file, not a folder: move it away (it may hold your "
                               "work) and run `make lab` again.")
    outer, inner = release.resolve(), copy_dir.resolve()
    if inner == outer or outer in inner.parents:
        raise StudentCopyError(f"{copy_dir} is inside {release}, which `make lessons` regenerates: "
                               "keep your copy outside it (the default is my-lessons/).")
    if inner in outer.parents:
        raise StudentCopyError(f"{release} is inside {copy_dir}: the copy would contain its own source; "
                               "choose a copy folder beside lessons/, not above it.")


def read_record(copy_dir: Path) -> dict[str, Entry]:
    """The record of released files in ``copy_dir`` (empty when there is none yet)."""
    path = Path(copy_dir) / RECORD_NAME
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {rel: Entry(item["in_copy"], item["latest"]) for rel, item in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StudentCopyError(f"{path} is damaged ({error!r}): delete it and run `make lab` again. "
                               "Your files are kept; lessons that differ from the release will then "
                               "arrive beside them.") from error


def write_record(copy_dir: Path, record: dict[str, Entry]) -> None:
    """Write the record atomically (a crash leaves the old one), only when it changed."""
    path = Path(copy_dir) / RECORD_NAME
    text = json.dumps({"about": "released lesson files (SHA-256), written by tools/student_copy.py",
                       "files": {rel: dataclasses.asdict(e) for rel, e in sorted(record.items())}},
                      indent=1) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        _atomic_write(path, text.encode("utf-8"))


def _atomic_write(target: Path, data: bytes) -> None:
    # Written beside the target and renamed over it: a half-written notebook is never left behind.
    # The temporary name is hidden, so released_files() and JupyterLab never list it.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def updated_name(target: Path, today: datetime.date) -> Path:
    """A free path beside ``target`` for a new release: ``a.updated-2026-05-01.ipynb``, then ``...-2``."""
    stem, suffix = target.stem, target.suffix
    candidate, number = target.with_name(f"{stem}.updated-{today.isoformat()}{suffix}"), 2
    while candidate.exists():
        candidate = target.with_name(f"{stem}.updated-{today.isoformat()}-{number}{suffix}")
        number += 1
    return candidate


def sync_file(rel: str, source: Path, copy_dir: Path, entry: Entry | None, today: datetime.date,
              report: Report) -> Entry | None:
    """Bring one released file into the copy without overwriting the student's work; return its entry."""
    new, target = file_hash(source), Path(copy_dir) / rel
    if not target.exists():
        if entry is not None:  # delivered before, then removed by the student: respect that
            report.missing.append(rel)
            return entry
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, source.read_bytes())
        report.copied.append(rel)
        return Entry(new, new)
    current = file_hash(target) if target.is_file() else None
    if current == new:
        return Entry(new, new)
    if entry is not None and entry.latest == new:
        return entry  # this release was delivered already; the file is the student's
    if entry is not None and current in (entry.in_copy, entry.latest):
        _atomic_write(target, source.read_bytes())
        report.updated.append(rel)
        return Entry(new, new)
    update = updated_name(target, today)
    shutil.copyfile(source, update)
    report.beside.append((rel, update.relative_to(copy_dir).as_posix()))
    return Entry(entry.in_copy if entry else None, new)


def sync(release: Path, copy_dir: Path, today: datetime.date | None = None) -> Report:
    """Create or update the student's copy ``copy_dir`` of ``release`` (see the module docstring)."""
    release, copy_dir = Path(release), Path(copy_dir)
    check_paths(release, copy_dir)
    report = Report(copy_dir=copy_dir, created=not copy_dir.exists())
    copy_dir.mkdir(parents=True, exist_ok=True)
    record, today = read_record(copy_dir), today or datetime.date.today()
    for rel, source in released_files(release).items():
        record[rel] = sync_file(rel, source, copy_dir, record.get(rel), today, report)
    write_record(copy_dir, record)
    return report


def submission_lines(release: Path, copy_dir: Path) -> list[str]:
    """Which file to submit for each chapter (the chapter folders of ``release`` that hold notebooks)."""
    out = ["What to submit: for each chapter, the notebook in your copy (your instructor collects it "
           "as submitted/<student>/<chapter>/<notebook>.ipynb; only that name is graded):"]
    for rel in released_files(release):
        chapter, _, name = rel.partition("/")
        if not name or "/" in name or not name.endswith(".ipynb"):
            continue
        mine = Path(copy_dir) / rel
        line = f"  {chapter}: {shown(mine)}"
        if not mine.exists():
            line += "  (missing: nbgrader collects this name; rename your notebook back to it)"
        updates = sorted(p.name for p in mine.parent.glob(f"{mine.stem}.updated-*"))
        if updates:
            line += f"  (copy what you need from {', '.join(updates)} into it)"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``student_copy.py [RELEASE] [COPY]``; exit 2 with a message on a bad path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", nargs="?", type=Path, default=Path("lessons"),
                        help="the course's lessons (default: lessons)")
    parser.add_argument("copy", nargs="?", type=Path, default=Path("my-lessons"),
                        help="the student's own copy (default: my-lessons)")
    parser.add_argument("--date", type=datetime.date.fromisoformat, default=None,
                        help="the date in the names of updates delivered beside (default: today)")
    args = parser.parse_args(argv)
    try:
        report = sync(args.release, args.copy, args.date)
    except StudentCopyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines(args.release) + submission_lines(args.release, args.copy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
