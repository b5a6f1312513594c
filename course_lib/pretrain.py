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
from course_lib.core import file_sha256
from course_lib.finetuning import pretraining_optimizer
from course_lib.models import CourseResNet
from course_lib.training import evaluate, fit
from course_lib.world import DOMAINS, SOURCE_CLASSES, ShapeWorld, normalize

DEFAULTS = dict(epochs=10, train_per_class=600, test_per_class=200, batch_size=128, lr=0.05, weight_decay=5e-4, seed=0)


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly recolour, flip, blur and add noise to a batch of images in [0, 1], shaped (B, 3, H, W).

    Pretraining with such augmentation, as ImageNet models are trained, makes the features depend
    less on the exact colours and sharpness of the studio domain, and so transfer better.
    """
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(b, 1, 1, 1, generator=generator) < p

    x = torch.where(chance(0.5), images.flip(-1), images)
    channel_order = torch.argsort(torch.rand(b, 3, generator=generator), dim=1)
    x = x[torch.arange(b)[:, None], channel_order]
    x = torch.where(chance(0.2), x.mean(1, keepdim=True).expand_as(x), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * uniform(0.6, 1.4) + mean) * uniform(0.6, 1.4)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 256).expand(3, 1, 5, 5)
    blurred = torch.nn.functional.conv2d(x, kernel, padding=2, groups=3)
    x = torch.where(chance(0.3), blurred, x)
    x = x + uniform(0.0, 0.06) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


class AugmentedLoader:
    """A DataLoader whose image batches pass through :func:`augment_batch` and then ``normalize``."""

    def __init__(self, loader: DataLoader, seed: int):
        self.loader = loader
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield normalize(augment_batch(images, self.generator)), labels


def make_source_data(train_per_class: int, test_per_class: int, domain: str = "studio") -> tuple[ShapeWorld, ShapeWorld]:
    """Training (seed 0, in [0, 1] for augmentation) and held-out (seed 1, normalised) images of the source classes."""
    train = ShapeWorld("source", domain=domain, n_per_class=train_per_class, seed=0, transform=torch.nn.Identity())
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
    train_loader = AugmentedLoader(train_loader, seed)
    test_loader = DataLoader(test, batch_size=256)

    if epochs * len(train_loader) < 8:
        raise ValueError(
            f"{epochs} epoch(s) of {len(train_loader)} batch(es) are too few steps for the one-cycle schedule; "
            "raise --epochs or --train-per-class, or lower --batch-size."
        )
    model = CourseResNet(num_classes=len(SOURCE_CLASSES))
    optimizer, scheduler = pretraining_optimizer(model, lr=lr, weight_decay=weight_decay,
                                                 total_steps=epochs * len(train_loader))
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


def save_weights(model: CourseResNet, out_dir: Path, settings: dict, report: dict, command: str) -> Path:
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
        "command": command,
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    if (args.out / "course_resnet.safetensors").exists() and not args.force:
        print(f"{args.out / 'course_resnet.safetensors'} exists; pass --force to overwrite it.", file=sys.stderr)
        return 2
    settings = {name: getattr(args, name) for name in DEFAULTS}
    model, report = pretrain_source_model(**settings)
    path = save_weights(model, args.out, settings, report, command="python -m course_lib.pretrain " + shlex.join(argv))
    print(f"saved {path} in {report['train_seconds']} s; held-out accuracy:")
    for domain, accuracy in report["held_out_accuracy"].items():
        print(f"  {domain:8s} {accuracy:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
