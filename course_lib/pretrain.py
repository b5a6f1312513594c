"""Pretrain the course's source model on the shape world: the recipe behind the shipped weights.

    python -m course_lib.pretrain --out course_lib/weights --force   # re-create the shipped weights
    python -m course_lib.pretrain --out /tmp/my-weights               # reproduce them elsewhere

The model (:class:`course_lib.models.CourseResNet`) learns the 24 *source* classes of the world in
the clean ``studio`` domain. Training images use seed 0 and the held-out images seed 1, so the
two sets never share an image. The command writes ``course_resnet.safetensors`` and a recipe file
``course_resnet.json`` (settings, command, held-out accuracy per domain, SHA-256 of the weights)
that :func:`course_lib.models.load_course_resnet` checks on every load. It refuses to overwrite
existing weights unless given ``--force``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from course_lib.config import seed_everything
from course_lib.models import CourseResNet, file_sha256
from course_lib.training import evaluate, fit
from course_lib.world import DOMAINS, SOURCE_CLASSES, ShapeWorld

DEFAULTS = dict(epochs=8, train_per_class=500, test_per_class=200, batch_size=128, lr=0.05, weight_decay=5e-4, seed=0)


def make_source_data(train_per_class: int, test_per_class: int, domain: str = "studio") -> tuple[ShapeWorld, ShapeWorld]:
    """Training (seed 0) and held-out (seed 1) images of the source classes in one domain."""
    train = ShapeWorld("source", domain=domain, n_per_class=train_per_class, seed=0)
    test = ShapeWorld("source", domain=domain, n_per_class=test_per_class, seed=1)
    return train, test


def pretrain_source_model(
    epochs: int, train_per_class: int, test_per_class: int, batch_size: int, lr: float, weight_decay: float, seed: int
) -> tuple[CourseResNet, dict]:
    """Train a CourseResNet on the studio source split; return it and a report of how it did."""
    seed_everything(seed)
    train, test = make_source_data(train_per_class, test_per_class)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True)
    test_loader = DataLoader(test, batch_size=256)

    model = CourseResNet(num_classes=len(SOURCE_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    # One-cycle: warm up, then anneal to almost zero; reliable for short schedules.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=len(train_loader), pct_start=0.25
    )
    started = time.perf_counter()
    history = fit(
        model, train_loader, epochs=epochs, optimizer=optimizer, scheduler=scheduler, val_loader=test_loader,
        channels_last=True,  # faster convolutions on CPUs too
    )
    seconds = time.perf_counter() - started

    held_out = {"studio": history.last["val_accuracy"]}
    for domain in DOMAINS:
        if domain != "studio":
            shifted = ShapeWorld("source", domain=domain, n_per_class=test_per_class, seed=1)
            held_out[domain] = evaluate(model, DataLoader(shifted, batch_size=256))["accuracy"]
    report = {
        "train_seconds": round(seconds, 1),
        "held_out_accuracy": {domain: round(acc, 4) for domain, acc in held_out.items()},
        "history": history.as_dict(),
    }
    return model, report


def save_weights(model: CourseResNet, out_dir: Path, settings: dict, report: dict) -> Path:
    """Write the weights (safetensors) and their recipe (JSON with the checksum)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "course_resnet.safetensors"
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights_path))
    recipe = {
        "model": "CourseResNet",
        "widths": list(model.widths),
        "classes": list(SOURCE_CLASSES),
        "domain": "studio",
        "command": "python -m course_lib.pretrain " + shlex.join(sys.argv[1:]),
        "settings": settings,
        "train_seconds": report["train_seconds"],
        "held_out_accuracy": report["held_out_accuracy"],
        "final_epoch": {k: v for k, v in report["history"].items() if k != "lr"},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "sha256": file_sha256(weights_path),
    }
    (out_dir / "course_resnet.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return weights_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m course_lib.pretrain`` or ``course-pretrain``)."""
    parser = argparse.ArgumentParser(description="Pretrain the course's source model on the shape world.")
    parser.add_argument("--out", type=Path, default=Path("pretrained"), help="folder for the weights and recipe")
    parser.add_argument("--force", action="store_true", help="overwrite weights already in --out")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)

    if (args.out / "course_resnet.safetensors").exists() and not args.force:
        print(f"{args.out / 'course_resnet.safetensors'} exists; pass --force to overwrite it.", file=sys.stderr)
        return 2
    settings = {name: getattr(args, name) for name in DEFAULTS}
    model, report = pretrain_source_model(**settings)
    path = save_weights(model, args.out, settings, report)
    print(f"saved {path} in {report['train_seconds']} s; held-out accuracy:")
    for domain, accuracy in report["held_out_accuracy"].items():
        print(f"  {domain:8s} {accuracy:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
