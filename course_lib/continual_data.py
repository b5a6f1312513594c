"""Task sequences for continual learning as in-memory tensors, and a fast batch iterator over them (19.7).

A continual-learning run trains on task after task and, after each, tests on every task: for
Split MNIST with an MLP that is about 10,000 small batches and 25 evaluations per method. Every
image is therefore decoded and normalised once, here, into one tensor per task and split, and a
batch is a slice of those tensors (:class:`TensorBatches`): no Python runs per image.

- :class:`ContinualTask`: one task's training and test tensors, its task id and its classes;
- :func:`split_mnist`: Split MNIST, 5 tasks of 2 digits (0/1, 2/3, 4/5, 6/7, 8/9) from the raw files;
- :func:`world_tasks`: the same kind of sequence from the course's offline world
  (:func:`course_lib.world.task_sequence`: ``"class-incremental"`` or ``"domain-incremental"``);
- :class:`TensorBatches`: shuffled, seeded batches of tensors that :func:`~course_lib.training.fit`
  and :func:`~course_lib.training.evaluate` accept as a loader.

Labels are always the *global* class ids, and task ``t`` of a class-split sequence holds the
classes ``t*k ... t*k + k - 1`` (``k`` classes per task). Each scenario of van de Ven, Tuytelaars &
Tolias (2022) reads them its own way (:class:`course_lib.continual.Scenario`): class-incremental
uses them as they are (0-9), task- and domain-incremental use the within-task label ``label % k``
(0/1), and task-incremental also gets the task id, ``label // k``. In a domain sequence every task
has the same classes ``0 ... k-1``; only the images change.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from course_lib.real_datasets import dataset_folder, read_idx
from course_lib.validation import check_non_negative_int, check_positive_int
from course_lib.world import ShapeWorld, normalize, task_sequence

__all__ = [
    "MNIST_MEAN", "MNIST_STD", "ContinualTask", "TensorBatches", "classes_per_task", "split_mnist", "world_tasks",
]

# The usual pixel mean and standard deviation of MNIST's training images (in [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---------------------------------------------------------------------------------------------
# A task, and a sequence's shape


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == gives tensors, not a bool
class ContinualTask:
    """One task of a continual-learning sequence: its tensors, its task id and its classes (19.7).

    ``train_inputs`` and ``test_inputs`` are float32 images (``(N, 784)`` flattened or ``(N, C, H, W)``),
    normalised; ``train_labels`` and ``test_labels`` int64 *global* class ids, all in ``classes``.
    """

    name: str
    task_id: int
    classes: tuple[int, ...]
    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor

    def __repr__(self) -> str:
        return (f"ContinualTask({self.name!r}, task_id={self.task_id}, classes={self.classes}, "
                f"{len(self.train_labels)} train / {len(self.test_labels)} test, "
                f"inputs {tuple(self.train_inputs.shape[1:])})")


def classes_per_task(tasks: list[ContinualTask]) -> int:
    """``k``, the number of classes of every task, after checking the labelling convention of this module (19.7).

    Task ``t`` must hold the classes ``t*k ... t*k + k - 1`` (a class-split sequence such as Split
    MNIST) or every task the classes ``0 ... k-1`` (a domain sequence); the scenarios read the
    task id and the within-task label off the global label, so any other labelling would mislead them.
    """
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, ContinualTask) for t in tasks):
        raise TypeError("tasks must be a non-empty list of ContinualTask (from split_mnist or world_tasks).")
    k = len(tasks[0].classes)
    split = all(task.classes == tuple(range(t * k, t * k + k)) for t, task in enumerate(tasks))
    shared = all(task.classes == tuple(range(k)) for task in tasks)
    if not (split or shared):
        raise ValueError(f"The tasks' classes are {[task.classes for task in tasks]}: task t must hold the classes "
                         "t*k ... t*k+k-1 (class-split) or every task 0 ... k-1 (domain sequence). Relabel them.")
    return k


# ---------------------------------------------------------------------------------------------
# Batches that are slices of tensors


class TensorBatches:
    """``(inputs, labels)`` batches cut from two tensors, for :func:`~course_lib.training.fit` and ``evaluate`` (19.7).

    - ``num_batches=None``: one pass over the data (the last batch may be smaller); else exactly
      ``num_batches`` full batches, with a new shuffle whenever the data runs out (a fixed budget of
      iterations, whatever the task's size).
    - ``shuffle=True``: the order is a random permutation drawn with a generator seeded by ``seed``,
      which advances from pass to pass (as a shuffling DataLoader's does); ``shuffle=False`` yields
      the rows in order, as views (for evaluation).

    Batches are ``index_select``-ed from the tensors, so a batch costs one copy of its rows and no
    Python per example. The tensors stay where they are (pass them on the model's device to save
    fit the copy).
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int, num_batches: int | None = None,
                 shuffle: bool = True, seed: int = 0):
        if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"inputs and labels must be tensors, got {type(inputs).__name__} and "
                            f"{type(labels).__name__}.")
        if labels.ndim != 1 or labels.dtype != torch.int64 or len(labels) != len(inputs) or len(labels) == 0:
            raise ValueError(f"labels must be int64 class ids shaped (N,), one per row of inputs ({len(inputs)} rows), "
                             f"N > 0; got a {labels.dtype} tensor shaped {tuple(labels.shape)}. Convert with .long().")
        self.inputs, self.labels = inputs, labels
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_batches = None if num_batches is None else check_positive_int(num_batches, "num_batches")
        self.shuffle = bool(shuffle)
        self.generator = torch.Generator().manual_seed(check_non_negative_int(seed, "seed"))

    def __len__(self) -> int:
        return self.num_batches if self.num_batches is not None else math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.num_batches is None and not self.shuffle:
            for start in range(0, n, self.batch_size):
                yield self.inputs[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            return
        order = self._order()
        position = 0
        for _ in range(len(self)):
            while self.num_batches is not None and position + self.batch_size > len(order):
                order = torch.cat([order[position:], self._order()])  # the next pass starts here
                position = 0
            rows = order[position:position + self.batch_size].to(self.labels.device)
            position += self.batch_size
            yield self.inputs.index_select(0, rows), self.labels.index_select(0, rows)

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __repr__(self) -> str:
        return (f"TensorBatches({len(self.labels)} examples, batch_size={self.batch_size}, {len(self)} batches, "
                f"shuffle={self.shuffle})")


# ---------------------------------------------------------------------------------------------
# Split MNIST


def _read_mnist(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's images ``(N, 28, 28)`` uint8 and labels ``(N,)`` from the raw IDX files in ``folder``."""
    files = [folder / name for name in _MNIST_FILES[train]]
    missing = [path.name for path in files if not path.exists()]
    if missing:
        variable = os.environ.get("COURSE_DATA_DIR")
        where = f"COURSE_DATA_DIR={variable}" if variable else "COURSE_DATA_DIR is not set, so the default data folder"
        raise FileNotFoundError(
            f"Split MNIST needs the raw MNIST files in {folder} ($COURSE_DATA_DIR/MNIST/raw; {where} was used), "
            f"but it lacks {', '.join(missing)}. To fix this, copy train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (unpacked) there, or set COURSE_DATA_DIR (or pass "
            "root=...) to the folder that holds MNIST/raw, or download them once with "
            "course_lib.real_datasets.load_real_dataset('mnist', download=True) on a machine with internet access. "
            "Without MNIST, world_tasks() builds the same kind of sequence from the course's offline world."
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"The MNIST files in {folder} do not match: images {images.shape}, labels {labels.shape}; "
                         "get them again.")
    return images, labels.astype(np.int64)


def _subset(labels: torch.Tensor, wanted: torch.Tensor, at_most: int | None,
            generator: torch.Generator) -> torch.Tensor:
    """Indices of the examples whose label is in ``wanted``, in a random order, at most ``at_most`` of them."""
    rows = torch.isin(labels, wanted).nonzero().flatten()
    rows = rows[torch.randperm(len(rows), generator=generator)]
    return rows if at_most is None else rows[:at_most]


def split_mnist(root: str | Path | None = None, *, flatten: bool = True, train_per_task: int | None = None,
                test_per_task: int | None = None, seed: int = 0) -> list[ContinualTask]:
    """Split MNIST: 5 tasks of 2 digits each (0/1, 2/3, 4/5, 6/7, 8/9) as in-memory tensors (19.7).

    Reads the raw files from ``root/MNIST/raw`` (``root`` defaults to ``$COURSE_DATA_DIR``, see
    :func:`course_lib.config.default_data_dir`). Images are normalised with :data:`MNIST_MEAN` and
    :data:`MNIST_STD`, flattened to ``(N, 784)`` for an MLP or kept ``(N, 1, 28, 28)`` with
    ``flatten=False``. Labels are the digits 0-9 (task ``t`` has digits ``2t`` and ``2t+1``; see the
    module docstring for how each scenario reads them). ``train_per_task``/``test_per_task`` keep a
    random subset of each task (None: all, about 12,000 and 2,000); ``seed`` fixes the subsets and
    the order of the examples, which is random either way.
    """
    folder = dataset_folder("mnist", root)
    seed = check_non_negative_int(seed, "seed")
    limits = [None if n is None else check_positive_int(n, name) for n, name in
              ((train_per_task, "train_per_task"), (test_per_task, "test_per_task"))]
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for train, at_most in zip((True, False), limits):
        images, labels = _read_mnist(folder, train)
        # Normalised once here, so that a batch is only a slice: no transform runs per image.
        inputs = (torch.from_numpy(images).float().div_(255) - MNIST_MEAN).div_(MNIST_STD)
        inputs = inputs.flatten(1) if flatten else inputs.unsqueeze(1)
        splits.append((inputs, torch.from_numpy(labels), at_most))
    tasks = []
    for t in range(5):
        digits = torch.tensor([2 * t, 2 * t + 1])
        parts = []
        for inputs, labels, at_most in splits:
            rows = _subset(labels, digits, at_most, generator)
            parts += [inputs[rows], labels[rows]]
        tasks.append(ContinualTask(f"task{t + 1}: digits {2 * t} and {2 * t + 1}", t, (2 * t, 2 * t + 1), *parts))
    return tasks


# ---------------------------------------------------------------------------------------------
# The course's world


def _world_tensors(classes: tuple[str, ...], domain: str, n_per_class: int, seed: int, image_size: int,
                   cache_dir: Path | str | None | bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images ``(N, 3, H, W)`` and labels (indices into ``classes``) of one ShapeWorld."""
    world = ShapeWorld(classes=classes, domain=domain, n_per_class=n_per_class, seed=seed, image_size=image_size,
                       cache_dir=cache_dir, progress=False)
    return normalize(world.images.float() / 255), world.labels


def world_tasks(sequence: str = "class-incremental", *, train_per_class: int = 100, test_per_class: int = 50,
                image_size: int = 32, seed: int = 0, flatten: bool = False,
                cache_dir: Path | str | None | bool = None) -> list[ContinualTask]:
    """The course world's continual-learning sequence (:func:`course_lib.world.task_sequence`) as tensors (19.7).

    ``"class-incremental"``: the 10 target classes as 5 tasks of 2 (studio), labelled 0-9 in the
    order the tasks bring them, like Split MNIST. ``"domain-incremental"``: all 10 target classes
    through studio, phone, sketch and night, labelled 0-9 in every task. Images are
    ``ShapeWorld`` images, normalised (:func:`course_lib.world.normalize`), ``(N, 3, H, W)`` or
    flattened; training images are drawn with ``seed``, test images with ``seed + 1`` (never the
    same images). ``image_size`` 64 is the course's source model's own size. ``cache_dir`` is
    ShapeWorld's (None: the default cache, False: none).
    """
    steps = task_sequence(sequence)
    seed = check_non_negative_int(seed, "seed")
    train_per_class, test_per_class = (check_positive_int(n, name) for n, name in
                                       ((train_per_class, "train_per_class"), (test_per_class, "test_per_class")))
    # Global ids in the order the tasks bring the classes: task t gets t*k ... t*k+k-1 in a class split.
    names = list(dict.fromkeys(name for step in steps for name in step.classes))
    tasks = []
    for t, step in enumerate(steps):
        ids = torch.tensor([names.index(name) for name in step.classes])
        parts = []
        for n_per_class, split_seed in ((train_per_class, seed), (test_per_class, seed + 1)):
            images, labels = _world_tensors(step.classes, step.domain, n_per_class, split_seed, image_size, cache_dir)
            parts += [images.flatten(1) if flatten else images, ids[labels]]
        tasks.append(ContinualTask(step.name, t, tuple(ids.tolist()), *parts))
    return tasks
