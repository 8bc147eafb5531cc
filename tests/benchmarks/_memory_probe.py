"""Memory probe for ``test_streaming_memory.py``: run in a fresh interpreter per dataset size.

``python _memory_probe.py ROOT --image-size S --workers W`` loads the identity-folder set at
``ROOT`` with :func:`bench.data.folder.load_folder` (train split streamed, aux/test capped and in
memory), trains one epoch of the baseline recognizer on the train split with
:func:`bench.recognition.train_recognizer` (DataLoader workers decoding the files), and prints
one JSON line: peak resident set sizes in KiB (``VmHWM`` of this process and ``ru_maxrss`` of its
largest reaped child, i.e. a DataLoader worker), the RSS peak right after the imports, the split sizes
and the kind of training set. A fresh process per size keeps one measurement's peak out of the
other's.
"""
from __future__ import annotations

import argparse
import json
import resource
import time


def peak_rss_kib() -> int:
    """This process's peak RSS since it exec'd this interpreter: ``VmHWM``, not ``ru_maxrss``,
    which Linux carries across ``execve`` — forked from a test worker holding 1.9 GiB, the probe
    reported 1.9 GiB before loading anything (measured in the parallel suite)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--max-split-images", type=int, default=400)
    parser.add_argument("--in-memory", action="store_true",
                        help="control experiment: decode the train split into memory first")
    args = parser.parse_args()

    import torch

    from bench.config import DataConfig, RecognizerConfig
    from bench.core.context import Context
    from bench.data.folder import load_folder
    from bench.recognition import train_recognizer

    torch.set_num_threads(1)  # 2 CI cores: leave the other to the decoding workers
    after_imports = peak_rss_kib()
    start = time.perf_counter()
    data = load_folder(DataConfig(name="folder", root=args.root, image_size=args.image_size,
                                  channels=args.channels,
                                  workers=args.workers, split=(0.8, 0.1, 0.1), num_pairs=20,
                                  max_aux_images=args.max_split_images,
                                  max_test_images=args.max_split_images), seed=0)
    train_kind = type(data.train).__name__  # what load_folder gives, before --in-memory
    if args.in_memory:
        data.train = data.train.materialise()
    loaded = time.perf_counter()
    cfg = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=1, batch_size=64,
                           milestones=(), warmup_epochs=0, dropout=0.0, channels_last=True)
    model = train_recognizer(data.train, Context(seed=0, progress=False, recognizer=cfg,
                                                 workers=args.workers))
    trained = time.perf_counter()
    assert not model.training  # the precise-BN pass ran and left it in eval mode
    print(json.dumps({
        "maxrss_self_kib": peak_rss_kib(),
        "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "maxrss_after_imports_kib": after_imports,
        "train_kind": train_kind,
        "trained_on": type(data.train).__name__,
        "n_train": len(data.train),
        "n_aux": len(data.aux),
        "n_test": len(data.test),
        "load_s": loaded - start,
        "train_s": trained - loaded,
    }))


if __name__ == "__main__":
    main()
