"""End-to-end: the on-disk training formats and the paper preset through `python -m bench run`
(issue "Paper scale"): insightface records, a truncated record file, and IR-SE-50 at 112 px on
the CPU."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.recordio import write_records
from test_cli import assert_one_line_error, bench_here


def _faces(n_ids: int, per_id: int, side: int, rgb: bool = False) -> tuple[list[bytes], list[int]]:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n_ids):
        base = rng.random((side // 4, side // 4, 3) if rgb else (side // 4, side // 4))
        for _ in range(per_id):
            img = np.kron(base, np.ones((4, 4, 1) if rgb else (4, 4))) + 0.1 * rng.random(base.shape[:1] * 2 + base.shape[2:]).repeat(4, 0).repeat(4, 1)
            buf = io.BytesIO()
            Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8")).save(buf, "JPEG", quality=95)
            images.append(buf.getvalue())
            labels.append(i)
    return images, labels


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces_rec")
    write_records(root / "train", *_faces(12, 6, 40))
    return root


def test_insightface_records_run_end_to_end(records, tmp_path):
    proc = bench_here("run", "--dataset", "rec", "--data-root", str(records), "--defenses", "none,ppfr_fd",
                 "--attacks", "resrec", "--set", "data.limit_identities=0", "--set", "attacks.resrec.epochs=1",
                 results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cells = sorted((tmp_path / "runs").glob("*/cells/*.json"))
    assert len(cells) == 2
    rec = json.loads(cells[0].read_text())
    assert rec["dataset"] == "rec" and set(rec["accuracy"]) == {records.name}


def test_truncated_records_are_one_line_and_exit_2_before_training(records, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (records / "train.rec").read_bytes()
    (cut / "train.rec").write_bytes(data[: len(data) - 300])  # the last record loses its tail
    (cut / "train.idx").write_bytes((records / "train.idx").read_bytes())
    proc = bench_here("run", "--dataset", "rec", "--data-root", str(cut), results=tmp_path / "results")
    assert_one_line_error(proc, "train.rec")
    assert not list((tmp_path / "results").glob("cache/baseline/*"))  # nothing was trained


@pytest.mark.slow
def test_paper_preset_trains_ir_se_50_at_112px_on_the_cpu(tmp_path):
    """The paper recipe, shrunk only in epochs and data: IR-SE-50 on 112 px RGB, bf16 autocast,
    channels-last, streamed folder data with DataLoader workers (23 s on one core of the
    parallel suite)."""
    root = tmp_path / "casia_like"
    images, labels = _faces(5, 4, 120, rgb=True)  # 2 train, 1 aux and 2 test identities
    for k, (img, y) in enumerate(zip(images, labels)):
        (root / f"id{y:02d}").mkdir(parents=True, exist_ok=True)
        (root / f"id{y:02d}" / f"{k}.jpg").write_bytes(img)
    out = tmp_path / "results"
    args = ["run", "--preset", "paper", "--dataset", "folder", "--data-root", str(root),
            "--defenses", "none", "--attacks", "resrec", "--seeds", "0", "--results", str(out),
            "--no-progress", "--set", "recognizer.epochs=1", "--set", "attacks.resrec.epochs=1",
            "--set", "data.split=[0.4,0.2,0.4]", "--set", "data.num_pairs=10", "--set", "data.workers=2"]
    plan = bench_here(*args, "--dry-run")  # cost before compute: the plan names IR-SE-50, trains nothing
    assert plan.returncode == 0, plan.stderr
    assert "ir_se_50" in plan.stdout and "112" in plan.stdout and "43.8 M" in plan.stdout, plan.stdout
    assert not out.exists()
    proc = bench_here(*args)
    assert proc.returncode == 0, proc.stderr
    import torch

    from bench.store import ArtifactStore

    stored = next((out / "cache" / "baseline").glob("*.safetensors"))
    model = ArtifactStore(out / "cache").load("baseline", stored.stem)["model"]
    assert type(model.backbone).__name__ == "IRNet" and model.precision == "bf16"
    assert model.in_shape == (3, 112, 112)
    assert sum(p.numel() for p in model.parameters()) - model.head.weight.numel() == 43_797_696
    cell = json.loads(next((out / "runs").glob("*/cells/*.json")).read_text())
    assert cell["preset"] == "paper" and 0.0 <= cell["accuracy"]["casia_like"]["accuracy_mean"] <= 1.0
    assert torch.isfinite(torch.tensor(cell["privacy"]["SSIM"]))
