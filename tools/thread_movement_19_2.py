"""How much chapter 19.2's headline numbers move with the torch thread count (19.2).

Recomputes the frozen features (no cache), then the linear probe, the MLP head and the
from-scratch baseline (the notebook's recipe) at 1 and 10 labelled images per class over 3
draws, with the thread count given, and writes them to a JSON file. Run it once per thread
count, each in its own process, and compare the files:

    COURSE_PROFILE=standard python tools/thread_movement_19_2.py 1 /tmp/threads_1.json
    COURSE_PROFILE=standard python tools/thread_movement_19_2.py 2 /tmp/threads_2.json
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(threads: int, path: str) -> None:
    torch.set_num_threads(threads)
    from torch.utils.data import Subset

    import course_lib
    from course_lib.data import lesson_data, sample_per_class
    from course_lib.experiments import scratch_accuracy
    from course_lib.features import extract_features
    from course_lib.finetuning import pretraining_rate
    from course_lib.freezing import FrozenBackbone
    from course_lib.heads import mlp_head_accuracy
    from course_lib.models import load_backbone, replace_head
    from course_lib.probes import linear_probe_accuracy

    cfg = course_lib.setup()
    torch.set_num_threads(threads)  # setup() may have chosen its own
    task = lesson_data(cfg)
    extractor = FrozenBackbone(load_backbone(cfg.backbone))
    train_x, train_y = extract_features(extractor, task.train, progress=False)
    test_x, test_y = extract_features(extractor, task.test, progress=False)
    out = {"threads": torch.get_num_threads(), "features_sum": float(train_x.double().sum())}
    started = time.time()
    for n in (1, 10):
        for seed in range(3):
            rows = sample_per_class(train_y, n, seed=seed)
            data = (train_x[rows], train_y[rows], test_x, test_y)
            out[f"probe_{n}_{seed}"] = linear_probe_accuracy(*data, seed=seed)
            out[f"mlp_{n}_{seed}"] = mlp_head_accuracy(*data, seed=seed)
            out[f"scratch_{n}_{seed}"] = scratch_accuracy(
                lambda: replace_head(load_backbone(cfg.backbone, pretrained=False), task.num_classes),
                Subset(task.train, rows.tolist()), task.test, recipe="pretraining",
                lr=pretraining_rate(cfg.backbone)[0], seed=seed)
    out["seconds"] = time.time() - started
    with open(path, "w") as file:
        json.dump(out, file, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
