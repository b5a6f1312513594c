"""Benchmarks that print the course's headline figures (``make bench``).

Library-level figures, measured here:

1. how fast the world draws images (one CPU thread), per domain;
2. the shipped source model's held-out accuracy, per domain;
3. how fast features are extracted from the backbone, and the per-epoch cost of training a linear
   head on cached features, on the frozen backbone run in every epoch, and of full training (the
   reason chapter 19.2 caches features);
4. what the input resolution costs the lite world: a converged linear probe on EfficientNet-Lite0's
   frozen features of Fashion-MNIST, with the 28-px images upsampled to 32 ... 224 px, and how
   fast each size is extracted (the lite profile's size, in the size table of :mod:`course_lib.config`,
   is a compromise between the two);
5. 19.2's from-scratch baseline in the lite world: EfficientNet-Lite0 and the course's small ResNet,
   each trained from random weights with its pretraining recipe on Fashion-MNIST at the lite size,
   their accuracy at two budgets and their time (why the lite world's baseline is the small ResNet);
6. Split MNIST, class-incremental (19.7): every continual-learning method with the usual protocol, its
   accuracy next to the published one and its time next to the Avalanche library's.

Chapter headlines, measured by the chapters themselves: every instructor notebook
``solutions/<chapter>/*.ipynb`` is executed in the ``standard`` profile (the course's world) and
in the ``lite`` profile (real data and EfficientNet-Lite0, offline), or in ``smoke`` only with
``--quick``, and the lines it prints that start with ``HEADLINE [`` are shown with the time each
run took: each chapter's world headline next to its real-data one. Each experiment is defined
once, in its notebook; the bench only runs it.

Nothing here is a pass/fail test: targets are printed next to the measured figures. The command
exits with 1 only when a chapter notebook fails or prints no ``HEADLINE`` line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from course_lib.config import size_settings, world_settings
from course_lib.continual_runs import (AVALANCHE_SECONDS, PUBLISHED_CLASS_INCREMENTAL, bench_split_mnist,
                                       summary_table)
from course_lib.data import backbone_statistics, imagenet_transform, subset_per_class
from course_lib.experiments import scratch_accuracy
from course_lib.feature_cache import FeatureCache
from course_lib.features import extract_features, feature_loader
from course_lib.finetuning import pretraining_rate, probe_head
from course_lib.freezing import FrozenBackbone
from course_lib.models import feature_layer, load_backbone, replace_head
from course_lib.real_datasets import load_real_dataset
from course_lib.training import evaluate
from course_lib.world import DOMAINS, TARGET_CLASSES, ShapeWorld, world_generation_speed

# The instructor notebooks, when the course is used from a clone (course_lib is installed editable).
SOLUTIONS_DIR = Path(__file__).resolve().parents[1] / "solutions"
HEADLINE_PREFIX = "HEADLINE ["


def bench_world(n: int) -> dict[str, float]:
    """Images per second drawn by the world generator on one thread, per domain (target: >= 2,000)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {domain: world_generation_speed(n=n, image_size=64, domain=domain) for domain in DOMAINS}
    finally:
        torch.set_num_threads(threads)


def bench_source_accuracy(test_per_class: int) -> dict[str, float]:
    """Held-out accuracy of the shipped source model on its 24 classes, in every domain."""
    model = load_backbone("course-resnet")
    accuracy = {}
    for domain in DOMAINS:
        held_out = ShapeWorld("source", domain=domain, n_per_class=test_per_class, seed=1, progress=False)
        accuracy[domain] = evaluate(model, DataLoader(held_out, batch_size=256))["accuracy"]
    return accuracy


def _time_epoch(model: nn.Module, loader: DataLoader) -> float:
    """Seconds for one training epoch of ``model`` (SGD on its trainable parameters) over ``loader``."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    started = time.perf_counter()
    for inputs, labels in loader:
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def bench_features(train_per_class: int) -> dict[str, float]:
    """Feature-extraction speed and the per-epoch time of (a) a head on cached features, (b) a head
    on the frozen backbone run every epoch, (c) full training (chapter 19.2's cost comparison)."""
    backbone = load_backbone("course-resnet")
    images = ShapeWorld("target", n_per_class=train_per_class, seed=0, progress=False)
    extractor = FrozenBackbone(backbone)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        features, labels = extract_features(extractor, images, cache=FeatureCache(folder), progress=False)
        extraction_seconds = time.perf_counter() - started
    num_classes = len(TARGET_CLASSES)
    image_loader = DataLoader(images, batch_size=128, shuffle=True)
    cached_epoch = min(_time_epoch(nn.Linear(features.shape[1], num_classes), feature_loader(features, labels, batch_size=128))
                       for _ in range(3))
    backbone_epoch = _time_epoch(nn.Sequential(extractor, nn.Linear(features.shape[1], num_classes)), image_loader)
    full_epoch = _time_epoch(replace_head(copy.deepcopy(backbone), num_classes), image_loader)
    return {
        "images": len(images),
        "extraction_images_per_s": len(images) / extraction_seconds,
        "cached_epoch_s": cached_epoch,
        "backbone_epoch_s": backbone_epoch,
        "full_epoch_s": full_epoch,
        "speedup": backbone_epoch / cached_epoch,
    }


RESOLUTIONS = (32, 48, 64, 96, 128, 224)


def bench_resolution(train_per_class: int, test_per_class: int,
                     sizes: Sequence[int] = RESOLUTIONS) -> dict[int, dict[str, float]]:
    """What the input size costs in accuracy and time, in the lite world: ``{size: figures}``.

    For each size, Fashion-MNIST's 28-px images are upsampled to ``size`` pixels (as the lite
    profile does), EfficientNet-Lite0's frozen ImageNet features are extracted at
    :func:`~course_lib.models.feature_layer`, and a converged linear probe
    (:func:`~course_lib.finetuning.probe_head`) is scored on held-out images. Figures:
    ``accuracy`` and ``images_per_s`` (extraction speed on this machine).
    """
    backbone = load_backbone("efficientnet-lite0")
    layer = feature_layer(backbone)
    mean, std = backbone_statistics("efficientnet-lite0")
    figures = {}
    for size in sizes:
        transform = imagenet_transform(size, mean=mean, std=std, crop=False)
        train = subset_per_class(load_real_dataset("fashion-mnist", train=True, transform=transform),
                                 train_per_class, seed=0)
        test = subset_per_class(load_real_dataset("fashion-mnist", train=False, transform=transform),
                                test_per_class, seed=1)
        started = time.perf_counter()
        train_features, train_labels = extract_features(backbone, train, layer, progress=False)
        test_features, test_labels = extract_features(backbone, test, layer, progress=False)
        seconds = time.perf_counter() - started
        head = probe_head(train_features, train_labels, num_classes=int(train_labels.max()) + 1)
        with torch.no_grad():
            accuracy = (head(test_features).argmax(dim=1) == test_labels).float().mean().item()
        figures[size] = {"accuracy": accuracy, "images_per_s": (len(train) + len(test)) / seconds}
    return figures


SCRATCH_ARCHITECTURES = ("efficientnet-lite0", "course-resnet")


def bench_scratch_architectures(train_per_class: int, test_per_class: int, budgets: Sequence[int],
                                architectures: Sequence[str] = SCRATCH_ARCHITECTURES
                                ) -> dict[str, dict[int, dict[str, float]]]:
    """19.2's from-scratch baseline in the lite world, per architecture: ``{name: {epochs: figures}}``.

    Each architecture is trained from random weights (seed 0) on ``train_per_class`` Fashion-MNIST
    images per class, upsampled to the lite profile's size and normalised as for EfficientNet-Lite0
    (the images 19.2's baseline gets), with the pretraining recipe at the architecture's own
    pretraining rate, once per budget (a one-cycle run of each length). Figures: ``accuracy`` on
    ``test_per_class`` held-out images per class and ``seconds`` of training on this machine.
    """
    size = size_settings("lite", "standard")["image_size"]
    mean, std = backbone_statistics("efficientnet-lite0")
    transform = imagenet_transform(size, mean=mean, std=std, crop=False)
    train = subset_per_class(load_real_dataset("fashion-mnist", train=True, transform=transform),
                             train_per_class, seed=0)
    test = subset_per_class(load_real_dataset("fashion-mnist", train=False, transform=transform),
                            test_per_class, seed=1)
    figures: dict[str, dict[int, dict[str, float]]] = {}
    for name in architectures:
        lr, _ = pretraining_rate(name)
        figures[name] = {}
        for epochs in budgets:
            started = time.perf_counter()
            accuracy = scratch_accuracy(lambda: replace_head(load_backbone(name, pretrained=False), 10),
                                        train, test, epochs=epochs, recipe="pretraining", lr=lr, seed=0)
            figures[name][epochs] = {"accuracy": accuracy, "seconds": time.perf_counter() - started}
    return figures


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    """One chapter notebook executed by the bench: its ``HEADLINE`` lines, how long it took, and
    the error that stopped it (``None`` when it ran to the end)."""

    path: Path
    seconds: float
    headlines: list[str]
    error: str | None = None


def chapter_notebooks(solutions_dir: Path = SOLUTIONS_DIR) -> list[Path]:
    """The instructor notebooks ``solutions_dir/<chapter>/*.ipynb``, in chapter order."""
    notebooks = sorted(Path(solutions_dir).glob("*/*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"No chapter notebooks in {solutions_dir}/<chapter>/: run the bench from a clone of the course "
            f"(`make bench`), or pass --solutions with the folder that holds them."
        )
    return notebooks


def headline_lines(notebook: dict) -> list[str]:
    """The lines starting with ``HEADLINE [`` that an executed notebook printed (its stream outputs),
    each once: a notebook may repeat its headline in its summary."""
    lines: list[str] = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = output.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                lines += [line.strip() for line in text.splitlines()
                          if line.strip().startswith(HEADLINE_PREFIX) and line.strip() not in lines]
    return lines


def run_notebook(path: Path, profile: str, cell_timeout_s: int = 3600) -> NotebookRun:
    """Execute the notebook at ``path`` top to bottom in a fresh kernel with ``COURSE_PROFILE=profile``,
    in the notebook's own folder, and return what it printed as headline and how long it took."""
    try:  # nbclient comes with the course's Jupyter stack (the `course` extra), not with the library
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError as error:
        raise ImportError("The bench runs the chapter notebooks with nbclient: install the course's "
                          "Jupyter stack with `make venv` (pip's `.[course]` extra).") from error
    notebook = nbformat.read(path, as_version=4)
    # log_level=ERROR: the kernel's warning about local TCP without encryption would fill the figures.
    client = NotebookClient(notebook, timeout=cell_timeout_s, extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(Path(path).parent)}})
    error = None
    started = time.perf_counter()
    try:
        # The kernel inherits this environment (PYTHONPATH, COURSE_CACHE_DIR, ...) with the profile set.
        client.execute(env=dict(os.environ, COURSE_PROFILE=profile))
    except CellExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"
    except (CellTimeoutError, DeadKernelError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    return NotebookRun(Path(path), time.perf_counter() - started, headline_lines(notebook), error)


def print_chapter_headlines(notebooks: list[Path], profiles: str | Sequence[str]) -> bool:
    """Run every chapter notebook in each of ``profiles`` and print, chapter by chapter, each run's time
    and ``HEADLINE`` lines; return True when every run went to the end and printed at least one."""
    profiles = [profiles] if isinstance(profiles, str) else list(profiles)
    print(f"chapter notebooks, executed in the {' and '.join(profiles)} profile(s) "
          "(each experiment is defined in its notebook):")
    all_good = True
    for path in notebooks:
        print(f"  {path.parent.name}/{path.name}")
        for profile in profiles:
            run = run_notebook(path, profile)
            if run.error is not None:
                print(f"    {profile}: FAILED after {run.seconds:.0f} s: {run.error}")
            else:
                print(f"    {profile}: {run.seconds:.0f} s")
            for line in run.headlines:
                print(f"      {line}")
            if run.error is None and not run.headlines:
                print(f"      (no line starting with {HEADLINE_PREFIX!r}: every chapter notebook prints its headline)")
            all_good = all_good and run.error is None and bool(run.headlines)
    return all_good


def print_library_figures(quick: bool) -> None:
    """Print the library-level figures: world speed, source-model accuracy, feature and epoch cost."""
    world_n, test_per_class, train_per_class = (200, 5, 10) if quick else (4000, 100, 200)
    resolutions, resolution_images = ((32, 48), (5, 5)) if quick else (RESOLUTIONS, (100, 100))
    print("world generation, 64x64, one thread, images/s (target >= 2,000):")
    for domain, speed in bench_world(world_n).items():
        print(f"  {domain:8s} {speed:7,.0f}")
    print("source model, held-out accuracy on its 24 classes (pretrained on 'studio'; target >= 95% there):")
    for domain, accuracy in bench_source_accuracy(test_per_class).items():
        print(f"  {domain:8s} {accuracy:7.2%}")
    figures = bench_features(train_per_class)
    print(f"feature extraction ({figures['images']} target images): {figures['extraction_images_per_s']:,.0f} images/s")
    print(
        f"one training epoch over them (chapter 19.2): (a) linear head on cached features "
        f"{figures['cached_epoch_s'] * 1000:.1f} ms, (b) head + frozen backbone {figures['backbone_epoch_s'] * 1000:.0f} ms, "
        f"(c) full training {figures['full_epoch_s'] * 1000:.0f} ms: the cache is {figures['speedup']:.0f}x faster "
        f"than (b) and {figures['full_epoch_s'] / figures['cached_epoch_s']:.0f}x faster than (c)"
    )
    print(f"lite world, input size (Fashion-MNIST, {resolution_images[0]} train / {resolution_images[1]} test images "
          "per class, EfficientNet-Lite0 frozen, converged linear probe; the lite profile uses "
          f"{size_settings('lite', 'standard')['image_size']} px):")
    for size, result in bench_resolution(*resolution_images, sizes=resolutions).items():
        print(f"  {size:3d} px  accuracy {result['accuracy']:6.2%}  extraction {result['images_per_s']:7,.0f} images/s")
    print_scratch_architectures(quick)
    print_split_mnist(quick)


def print_scratch_architectures(quick: bool) -> None:
    """Print :func:`bench_scratch_architectures` at 19.2's lite size (50 images per class, its budget
    and twice it; a few images and epochs with ``quick``). Skipped, with the reason, without Fashion-MNIST."""
    lite = size_settings("lite", "standard")
    per_class, budgets = (2, (2, 4)) if quick else (lite["train_per_class"], (lite["scratch_budget"],
                                                                              2 * lite["scratch_budget"]))
    print(f"19.2's from-scratch baseline in the lite world (Fashion-MNIST, {per_class} images per class, "
          f"{lite['image_size']} px, random weights, pretraining recipe, seed 0; the lite profile trains "
          f"{world_settings('lite')['scratch_backbone']}):")
    try:
        figures = bench_scratch_architectures(per_class, 50 if not quick else 2, budgets)
    except FileNotFoundError as error:
        print(f"  skipped: {error}")
        return
    for name, runs in figures.items():
        print(f"  {name:20s}" + "".join(f"  {epochs:3d} epochs {run['accuracy']:6.1%} in {run['seconds']:5.0f} s"
                                        for epochs, run in runs.items()))


def print_split_mnist(quick: bool) -> None:
    """Split MNIST, class-incremental, every method of 19.7 with the usual protocol (MLP 784-400-400, Adam 1e-3,
    batches of 128, 2,000 iterations a task; 20 with ``quick``), next to the published accuracies and the
    seconds the Avalanche library takes for the same runs on 2 cores. Skipped, with the reason, without MNIST."""
    iterations = 20 if quick else 2000
    print(f"Split MNIST, class-incremental, {iterations} iterations a task, seed 0 (chapter 19.7; published: "
          "van de Ven & Tolias 2019; reference seconds: Avalanche on 2 cores):")
    try:
        started = time.perf_counter()
        summaries = bench_split_mnist(seeds=(0,), iterations=iterations)
    except FileNotFoundError as error:
        print(f"  skipped: {error}")
        return
    print(summary_table(summaries, PUBLISHED_CLASS_INCREMENTAL, AVALANCHE_SECONDS))
    print(f"  the whole comparison: {time.perf_counter() - started:.0f} s "
          f"(Avalanche: {sum(AVALANCHE_SECONDS.values()):.0f} s; the goal: under 300 s on 2 cores)")


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print its figures (``python -m course_lib.bench``); 1 if a chapter failed."""
    parser = argparse.ArgumentParser(description="Print the course's benchmark figures.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, and the chapter notebooks in the smoke profile (a minute or two, for tests)")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR,
                        help=f"the folder of chapter notebooks, <chapter>/*.ipynb (default: {SOLUTIONS_DIR})")
    args = parser.parse_args(argv)
    notebooks = chapter_notebooks(args.solutions)  # before the library figures: a wrong folder fails at once

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_library_figures(args.quick)
    return 0 if print_chapter_headlines(notebooks, ["smoke"] if args.quick else ["standard", "lite"]) else 1


if __name__ == "__main__":
    sys.exit(main())
