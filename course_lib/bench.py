"""Benchmarks that print the course's headline figures (``make bench``).

1. how fast the world draws images (one CPU thread);
2. the shipped source model's held-out accuracy, per domain;
3. how fast features are extracted from the backbone;
4. the per-epoch speed-up of training a linear head on cached features over running the frozen
   backbone in every epoch (the reason chapter 19.2 caches features);
5. chapter 19.1's headline: linear-probe accuracy on the target classes from each stage,
   pretrained weights against random ones.

Nothing here is a pass/fail test: targets are printed next to the measured figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from course_lib.features import FeatureCache, extract_features, feature_loader
from course_lib.models import load_backbone
from course_lib.representations import transferability_curve
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


def _time_epoch(head: nn.Module, loader: DataLoader, backbone: nn.Module | None) -> float:
    """Seconds for one training epoch of ``head``; with a backbone, it runs frozen on every batch."""
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    started = time.perf_counter()
    for inputs, labels in loader:
        if backbone is not None:
            with torch.no_grad():
                inputs = backbone.forward_features(inputs)
        loss = nn.functional.cross_entropy(head(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def bench_features(train_per_class: int) -> dict[str, float]:
    """Feature-extraction speed and the per-epoch time of a head with and without caching."""
    backbone = load_backbone("course-resnet")
    images = ShapeWorld("target", n_per_class=train_per_class, seed=0, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        features, labels = extract_features(backbone, images, layer="pool", cache=FeatureCache(folder), progress=False)
        extraction_seconds = time.perf_counter() - started
    head = nn.Linear(features.shape[1], len(TARGET_CLASSES))
    cached_epoch = min(_time_epoch(head, feature_loader(features, labels, batch_size=128), None) for _ in range(3))
    image_loader = DataLoader(images, batch_size=128, shuffle=True)
    backbone_epoch = _time_epoch(head, image_loader, backbone)
    return {
        "images": len(images),
        "extraction_images_per_s": len(images) / extraction_seconds,
        "cached_epoch_s": cached_epoch,
        "backbone_epoch_s": backbone_epoch,
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


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print its figures (``python -m course_lib.bench``)."""
    parser = argparse.ArgumentParser(description="Print the course's benchmark figures.")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests)")
    args = parser.parse_args(argv)
    world_n, test_per_class, train_per_class = (200, 5, 10) if args.quick else (4000, 100, 200)
    probe_train, probe_test, probe_seeds = (4, 4, 1) if args.quick else (50, 30, 3)

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
        f"one epoch of a linear head: {figures['cached_epoch_s'] * 1000:.1f} ms on cached features, "
        f"{figures['backbone_epoch_s'] * 1000:.0f} ms running the frozen backbone: "
        f"{figures['speedup']:.0f}x faster with the cache"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
