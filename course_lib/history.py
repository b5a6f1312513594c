"""The record of a training run: :class:`History`, what :func:`course_lib.training.fit` returns.

One dict per epoch (``epoch``, ``lr``, ``train_loss``, ``train_<metric>``, ``val_<metric>``,
``seconds``, and whatever callbacks add), with the small conveniences a lesson needs:
``history["val_accuracy"]`` (one value per epoch, ready to plot), ``history.best(...)``, and JSON
so that a long run can be saved next to its checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["History", "is_number", "metric_mode"]


class History:
    """Per-epoch records of a training run, one dict per epoch.

    Each record holds ``epoch``, ``lr`` (a list: one learning rate per parameter group, as it was
    at the start of the epoch), ``train_loss``, ``train_accuracy``, ``val_loss`` and
    ``val_accuracy`` (when ``fit`` had a ``val_loader``), ``seconds``, and whatever callbacks such
    as :class:`TrackMetric` added. ``history["val_accuracy"]`` is the list of one value per epoch,
    ready to plot; ``history.last`` is the final record; ``history.best("val_accuracy")`` the best.
    """

    def __init__(self, records: Iterable[dict] = ()):
        self.records: list[dict] = [dict(record) for record in records]

    def append(self, record: dict) -> None:
        """Add the record of one epoch."""
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key: str | int) -> list | dict:
        """``history["val_loss"]`` -> one value per epoch (None where missing); ``history[-1]`` -> a record."""
        if isinstance(key, int):
            return self.records[key]
        if key not in self.metrics():
            raise KeyError(f"The history has no {key!r}; it records {self.metrics()}.")
        return [record.get(key) for record in self.records]

    def metrics(self) -> list[str]:
        """The names recorded in at least one epoch, in the order they first appeared."""
        names: dict[str, None] = {}
        for record in self.records:
            names.update(dict.fromkeys(record))
        return list(names)

    @property
    def last(self) -> dict:
        """The record of the final epoch."""
        if not self.records:
            raise ValueError("The history is empty: fit has not completed an epoch yet.")
        return self.records[-1]

    def best(self, metric: str, mode: str | None = None) -> dict:
        """The record of the epoch with the best ``metric``.

        ``mode`` is ``"min"`` or ``"max"``; by default ``"min"`` for names containing "loss" and
        ``"max"`` otherwise. Epochs without a value for ``metric`` are skipped.
        """
        mode = metric_mode(metric, mode)
        values = [(value, i) for i, value in enumerate(self[metric]) if is_number(value)]
        if not values:
            raise ValueError(f"No epoch recorded a number for {metric!r}.")
        pick = min if mode == "min" else max
        return self.records[pick(values)[1]]

    def as_dict(self) -> dict[str, list]:
        """``{metric: [value per epoch]}``, the form ``course_lib.plots.plot_history`` accepts."""
        return {name: self[name] for name in self.metrics()}

    def to_json(self, path: str | Path | None = None) -> str:
        """The records as JSON text (NaN written as null); also written to ``path`` if given."""
        text = json.dumps([_json_safe(record) for record in self.records], indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> History:
        """Read a history written by :meth:`to_json` (JSON text or a path to it)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("["):
            text = Path(text_or_path).read_text()
        return cls(json.loads(text))

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={_short(v)}" for k, v in self.records[-1].items()) if self.records else "empty"
        return f"History({len(self)} epochs; last: {last})"


def metric_mode(metric: str, mode: str | None) -> str:
    """``"min"`` or ``"max"``: ``mode`` checked, or guessed from the name (min for losses, max otherwise)."""
    if mode is None:
        return "min" if "loss" in metric else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None (guess from the name), got {mode!r}.")
    return mode


def is_number(value: Any) -> bool:
    """True for an int or float that is not NaN (and not a bool): a value worth comparing."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
