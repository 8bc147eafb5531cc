"""Peak memory of training on a streamed identity-folder set must not grow with the set's size.

What is measured: two synthetic identity-folder trees with the same 100 identities, 20 and 200
real PNG faces each (2,000 and 20,000 files; 20 distinct faces per identity, the larger tree
repeats their bytes), are loaded with :func:`bench.data.folder.load_folder`
(the train split — 80 % of the identities, 1,600 and 16,000 images — is a
:class:`StreamingFaceSet`; aux and test are in memory, capped at 400 images) and the baseline
recognizer trains one epoch on each train split with :func:`bench.recognition.train_recognizer`
and two DataLoader workers. Each size runs in a fresh interpreter (``_memory_probe.py``) which
reports its own peak RSS (``VmHWM``) and ``ru_maxrss`` of its largest reaped child (a DataLoader
worker). The test asserts, as ratios measured in this run, that the larger set's peaks (the
process, and process + worker) are at most 1.2× the smaller's, and prints both figures in MiB.

Why: a streamed training set keeps only labels and file positions in memory, so a 500k-image
CASIA/MS1M run fits where an in-memory float32 copy would not (ARCHITECTURE "Sources of faces").

Sizes are chosen so the bound can fail: the peak of a torch process is ~0.8 GiB before any
data (libraries, model, autograd, workers), so a regression must add more than 20 % of that to
show. Faces are 40×40 RGB: the large train split decoded into a float32 ``FaceSet`` is 307 MB
(twice that at the peak of :meth:`StreamingFaceSet.materialise`), and 32×32 gray faces would
have been only 65 MB, invisible under the bound. Measured control, with the train split decoded
into memory first (``_memory_probe.py ROOT --image-size 40 --channels 3 --in-memory``): peak
1.46–1.79× (process) and 1.55–1.91× (process + worker) the small streamed run, against
1.08× streamed (two runs each). ``test_in_memory_alternative_would_grow`` records that
arithmetic beside the measurement. The probe's recognizer runs channels-last: torch 2.14's NCHW
max-pool on the CPU is ~10× slower than its NHWC one, and the data path, not the layout, is
measured (the large epoch 28 s → 17.5 s).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.facedata import identity_groups
from bench.data.folder import list_identity_folders
from ratio import injected

PROBE = Path(__file__).with_name("_memory_probe.py")
REPO = Path(__file__).resolve().parents[2]
IDENTITIES = 100
PER_IDENTITY = {"small": 20, "large": 200}  # 2,000 and 20,000 files
SIDE, CHANNELS = 40, 3
SPLIT = (0.8, 0.1, 0.1)
BOUND = 1.2  # peak RSS of the large run ≤ 1.2 × the small run's
MIB = 1024  # the probe reports KiB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status, ru_maxrss in KiB, fork workers: Linux")


#: distinct images per identity; a larger folder repeats their files' bytes (streaming reads and
#: decodes every file alike, and encoding 20,000 PNGs took most of this module's set-up)
DISTINCT = 20


def write_identity_folders(root: Path, identities: int, per_identity: int, seed: int = 0) -> None:
    """``root/idNNNN/NNNN.png``: per identity a bright blob face (its own centre, size and
    tint), per image a different slice of a shared noise bank plus a brightness offset (image
    ``j`` is image ``j % DISTINCT``'s bytes). Real PNG files (fast zlib level), decodable by PIL
    like any dataset's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    noise = rng.normal(0, 12, (64, SIDE, SIDE, CHANNELS)).astype(np.float32)
    for k in range(identities):
        folder = root / f"id{k:04d}"
        folder.mkdir(parents=True)
        cx, cy = rng.uniform(0.4, 0.6, 2)
        radius = rng.uniform(0.25, 0.4)
        blob = 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / radius ** 2) + 20
        base = (blob[..., None] * rng.uniform(0.6, 1.0, CHANNELS)).astype(np.float32)
        encoded: list[bytes] = []
        for j in range(per_identity):
            if j < DISTINCT:
                img = np.clip(base + noise[(7 * j + k) % len(noise)] + j % 11, 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG", compress_level=1)
                encoded.append(buf.getvalue())
            (folder / f"{j:04d}.png").write_bytes(encoded[j % DISTINCT])


@pytest.fixture(scope="module")
def folder_sets(tmp_path_factory):
    """The two trees (~110 MB of small files; removed afterwards, pytest keeps old tmp dirs)."""
    base = tmp_path_factory.mktemp("identity_folders")
    roots = {}
    for name, per in PER_IDENTITY.items():
        write_identity_folders(base / name, IDENTITIES, per)
        roots[name] = base / name
    yield roots
    shutil.rmtree(base, ignore_errors=True)


def run_probe(root: Path) -> dict:
    """Load + one training epoch in a fresh interpreter; its JSON report (plus its wall time)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    start = time.perf_counter()
    # hog_check.py's regression: the train split decoded into memory (the control experiment)
    in_memory = ["--in-memory"] if injected("memory") else []
    done = subprocess.run([sys.executable, str(PROBE), str(root), "--image-size", str(SIDE),
                           "--channels", str(CHANNELS), "--workers", "2", "--max-split-images", "400",
                           *in_memory],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"memory probe failed on {root}:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall_s"] = time.perf_counter() - start
    return report


@pytest.fixture(scope="module")
def probes(folder_sets) -> dict[str, dict]:
    return {name: run_probe(root) for name, root in folder_sets.items()}


def test_peak_rss_does_not_grow_with_streamed_set_size(probes):
    small, large = probes["small"], probes["large"]
    for name, report, n in (("small", small, 1600), ("large", large, 16000)):
        assert report["train_kind"] == "StreamingFaceSet", report
        assert report["n_train"] == n, (name, report)
        assert report["n_aux"] <= 400 and report["n_test"] <= 400, (name, report)

    both = {name: r["maxrss_self_kib"] + r["maxrss_children_kib"] for name, r in probes.items()}
    self_ratio = large["maxrss_self_kib"] / small["maxrss_self_kib"]
    both_ratio = both["large"] / both["small"]
    def figures(r: dict) -> str:
        return (f"{r['n_train']} train images {r['maxrss_self_kib'] / MIB:.0f} MiB "
                f"(+ worker {r['maxrss_children_kib'] / MIB:.0f} MiB, {r['wall_s']:.1f} s)")

    summary = (f"peak RSS, one epoch on a streamed set: {figures(small)}, {figures(large)}; "
               f"large/small: process {self_ratio:.3f} (bound {BOUND:g}), process + worker "
               f"{both_ratio:.3f} (bound {BOUND:g})")
    print("\n" + summary)
    assert self_ratio <= BOUND, summary
    assert both_ratio <= BOUND, summary


def train_split_size(root: Path) -> int:
    """Images in ``load_folder``'s train split for seed 0, from the folder listing alone."""
    import torch

    identities = list_identity_folders(root)
    labels = torch.tensor([k for k, (_, files) in enumerate(identities) for _ in files])
    train_ids = identity_groups(labels, SPLIT, seed=0)[0]
    return int(torch.isin(labels, train_ids).sum())


def test_in_memory_alternative_would_grow(folder_sets, probes):
    """What streaming saves, by arithmetic (nothing allocated): the large train split as an
    in-memory float32 ``FaceSet`` needs ≥ 5× the small one's bytes, and its extra bytes alone
    exceed the 20 % the bound above allows over the small run's measured peak — so the RSS test
    would fail if the train split were held in memory."""
    per_image = CHANNELS * SIDE * SIDE * 4  # float32 [C, S, S]
    need = {name: train_split_size(root) * per_image for name, root in folder_sets.items()}
    growth = need["large"] / need["small"]
    allowed = (BOUND - 1) * probes["small"]["maxrss_self_kib"] * 1024
    summary = (f"in-memory float32 train split: {need['small'] / 2**20:.0f} MiB vs "
               f"{need['large'] / 2**20:.0f} MiB ({growth:.1f}×); the RSS bound allows "
               f"{allowed / 2**20:.0f} MiB of growth, an in-memory split would add "
               f"{(need['large'] - need['small']) / 2**20:.0f} MiB")
    print("\n" + summary)
    assert growth >= 5, summary
    assert need["large"] - need["small"] > allowed, summary
