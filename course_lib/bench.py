"""Benchmarks that print the course's headline figures (``make bench``).

1. how fast the world draws images (one CPU thread);
2. the shipped source model's held-out accuracy, per domain;
3. how fast features are extracted from the backbone;
4. the per-epoch speed-up of training a linear head on cached features over running the frozen
   backbone in every epoch (the reason chapter 19.2 caches features);
5. chapter 19.1's headline: linear-probe accuracy on the target classes from each stage,
   pretrained weights against random ones;
6. chapter 19.2's headline: with few labelled images per class, frozen features and a linear
   head (or k-NN) against the same architecture trained from scratch, over several draws;
7. chapter 19.3's headline: fine-tuning strategies on a near and a far target at three data
   sizes, and where the size rule of thumb picked the best one.

Nothing here is a pass/fail test: targets are printed next to the measured figures.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from course_lib.data import FAR_DOMAIN, dataset_targets
from course_lib.experiments import compare_with_rule, data_efficiency_curve, fine_tune_copy, scratch_accuracy
from course_lib.feature_cache import FeatureCache
from course_lib.features import extract_features, feature_loader
from course_lib.freezing import FrozenBackbone
from course_lib.heads import knn_accuracy
from course_lib.models import load_backbone, replace_head
from course_lib.probes import linear_probe_accuracy, transferability_curve
from course_lib.training import evaluate
from course_lib.world import DOMAINS, TARGET_CLASSES, ShapeWorld, world_generation_speed


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


def bench_transferability(train_per_class: int, test_per_class: int, seeds: int) -> dict[str, tuple[float, float, float]]:
    """Chapter 19.1's curve: per stage, (pretrained accuracy, mean and std over random inits)."""
    train = ShapeWorld("target", n_per_class=train_per_class, seed=0, progress=False)
    test = ShapeWorld("target", n_per_class=test_per_class, seed=1, progress=False)
    pretrained = transferability_curve(load_backbone("course-resnet"), train, test)
    random_curves = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        random_curves.append(transferability_curve(load_backbone("course-resnet", pretrained=False), train, test))
    curve = {}
    for stage, accuracy in pretrained.items():
        random_accuracy = torch.tensor([c[stage] for c in random_curves])
        spread = random_accuracy.std().item() if seeds > 1 else 0.0
        curve[stage] = (accuracy, random_accuracy.mean().item(), spread)
    return curve


def bench_data_efficiency(train_per_class: int, test_per_class: int, shots: list[int], seeds: int) -> dict[str, np.ndarray]:
    """Chapter 19.2's curve: test accuracy ``{method: (len(shots), seeds)}`` on the 10 target classes
    for training from scratch, frozen features + linear head, and frozen features + k-NN."""
    train = ShapeWorld("target", n_per_class=train_per_class, seed=0, progress=False)
    test = ShapeWorld("target", n_per_class=test_per_class, seed=1, progress=False)
    extractor = FrozenBackbone(load_backbone("course-resnet"))
    train_features, train_labels = extract_features(extractor, train, progress=False)
    test_features, test_labels = extract_features(extractor, test, progress=False)
    num_classes = len(TARGET_CLASSES)

    def from_scratch(indices: torch.Tensor, seed: int) -> float:
        def new_model() -> nn.Module:
            return replace_head(load_backbone("course-resnet", pretrained=False), num_classes)
        return scratch_accuracy(new_model, Subset(train, indices.tolist()), test, seed=seed)

    def frozen_linear(indices: torch.Tensor, seed: int) -> float:
        return linear_probe_accuracy(train_features[indices], train_labels[indices], test_features, test_labels, seed=seed)

    def frozen_knn(indices: torch.Tensor, seed: int) -> float:
        k = min(5, len(indices) // num_classes)
        return knn_accuracy(train_features[indices], train_labels[indices], test_features, test_labels, k=k)

    methods = {"from scratch": from_scratch, "frozen + linear head": frozen_linear, "frozen + k-NN": frozen_knn}
    return data_efficiency_curve(methods, train_labels, shots, seeds=seeds, progress=False)


# Chapter 19.3's strategies (a subset of the notebook's seven), set up as in the notebook.
FINE_TUNING_STRATEGIES = {
    "linear probe": dict(strategy="linear probe", lr=1e-3),
    "full, 10x lower lr": dict(strategy="full", lr=1e-3),
    "partial (last stage)": dict(strategy="partial", lr=1e-3, k=1),
    "LP-FT": dict(strategy="LP-FT", lr=1e-3),
}
RULE_PICKS = {"linear probe": "linear probe", "partial": "partial (last stage)", "full": "full, 10x lower lr"}


def bench_fine_tuning(sizes: list[int], test_per_class: int, seeds: int, epochs: int,
                      batches_per_epoch: int) -> dict[str, dict[str, np.ndarray]]:
    """Chapter 19.3's grid: test accuracy ``{target: {strategy: (len(sizes), seeds)}}`` on the 10 target
    classes in the studio domain (near) and in the night domain (far), each run on the same budget."""
    pretrained = load_backbone("course-resnet")
    grid = {}
    for target, domain in (("near", "studio"), ("far", FAR_DOMAIN)):
        train = ShapeWorld("target", domain=domain, n_per_class=max(sizes), seed=0, progress=False)
        test_loader = DataLoader(ShapeWorld("target", domain=domain, n_per_class=test_per_class, seed=1, progress=False),
                                 batch_size=256)

        def method(settings: dict, train=train, test_loader=test_loader):
            def run(indices: torch.Tensor, seed: int) -> float:
                model, _ = fine_tune_copy(pretrained, train, indices, num_classes=len(TARGET_CLASSES), seed=seed,
                                          epochs=epochs, batches_per_epoch=batches_per_epoch, head_lr=1e-2, **settings)
                return evaluate(model, test_loader)["accuracy"]
            return run

        methods = {name: method(settings) for name, settings in FINE_TUNING_STRATEGIES.items()}
        grid[target] = data_efficiency_curve(methods, dataset_targets(train), sizes, seeds=seeds, progress=False)
    return grid


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print its figures (``python -m course_lib.bench``)."""
    parser = argparse.ArgumentParser(description="Print the course's benchmark figures.")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests)")
    args = parser.parse_args(argv)
    world_n, test_per_class, train_per_class = (200, 5, 10) if args.quick else (4000, 100, 200)
    probe_train, probe_test, probe_seeds = (4, 4, 1) if args.quick else (50, 30, 3)
    shots, efficiency_seeds = ([1, 2], 1) if args.quick else ([1, 2, 5, 10], 3)
    # (sizes per class, test images per class, seeds, epochs, batches per epoch): the notebook's standard profile
    fine_tuning = ([1, 2], 2, 1, 2, 1) if args.quick else ([5, 25, 100], 25, 2, 5, 6)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
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
    print(
        f"chapter 19.1, linear probe on the 10 target classes ({probe_train} train / {probe_test} test "
        f"images per class), pretrained vs {probe_seeds} random init(s):"
    )
    curve = bench_transferability(probe_train, probe_test, probe_seeds)
    for stage, (pretrained, random_mean, random_std) in curve.items():
        print(f"  {stage:8s} pretrained {pretrained:7.1%}   random {random_mean:6.1%} ± {random_std:.1%}")
    gaps = {stage: pretrained - random_mean for stage, (pretrained, random_mean, _) in curve.items()}
    print(f"  smallest gap {min(gaps.values()) * 100:+.1f} points; biggest at {max(gaps, key=gaps.get)}")
    efficiency_train, efficiency_test = (max(shots), 4) if args.quick else (100, 50)
    print(
        f"chapter 19.2, data efficiency on the 10 target classes ({efficiency_test} test images per class, "
        f"{efficiency_seeds} draw(s) per size; target: frozen beats scratch by >= 20 points at <= 10 per class):"
    )
    curve = bench_data_efficiency(efficiency_train, efficiency_test, shots, efficiency_seeds)
    for row, n in enumerate(shots):
        cells = "   ".join(f"{name} {acc[row].mean():6.1%} ± {acc[row].std():4.1%}" for name, acc in curve.items())
        print(f"  {n:3d} per class   {cells}")
    gap = curve["frozen + linear head"].mean(axis=1) - curve["from scratch"].mean(axis=1)
    print(f"  frozen + linear head beats scratch by at least {gap.min() * 100:+.1f} points (at {shots[int(gap.argmin())]} per class)")
    sizes, ft_test, ft_seeds, ft_epochs, ft_batches = fine_tuning
    print(
        f"chapter 19.3, fine-tuning strategies on the 10 target classes ({ft_test} test images per class, {ft_seeds} "
        f"draw(s), {ft_epochs} epochs of {ft_batches} batches of 32 per run), near = studio, far = {FAR_DOMAIN}:"
    )
    grid = bench_fine_tuning(sizes, ft_test, ft_seeds, ft_epochs, ft_batches)
    num_classes = len(TARGET_CLASSES)
    print(f"  {'':22s}" + "".join(f"{t + ' ' + str(n * num_classes):>16s}" for t in grid for n in sizes))
    for name in FINE_TUNING_STRATEGIES:
        print(f"  {name:22s}" + "".join(f"{grid[t][name][row].mean():10.1%} ±{grid[t][name][row].std():4.1%}"
                                        for t in grid for row in range(len(sizes))))
    rows = [(t, r) for t in grid for r in compare_with_rule(grid[t], sizes, num_classes, RULE_PICKS)]
    held = sum(r["held"] for _, r in rows)
    target, worst = max(rows, key=lambda item: item[1]["gap"])
    print(f"  the size rule's pick was within 2 points of the best of these strategies in {held} of {len(rows)} cells; "
          f"largest miss {100 * worst['gap']:.1f} points ({target}, {worst['images']} images: {worst['pick']} vs {worst['best']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
