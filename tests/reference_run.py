"""The committed reference run (``results/reference/``) that CI re-creates and compares against
with ``bench compare --fail-on-regression`` (issue "regression gates", part 4).

Regenerate it after an intended change of numbers (and say why in the commit)::

    python -m tests.reference_run

It is a tiny matrix on the embedded ORL faces (three defenses × one decoder attack, plus every
registered attack on ``none`` — the attack-strength gate of ALGORITHMS §15; a few epochs each)
run with one torch thread, so it is bit-reproducible on any machine with the same library
versions. The gate is ``bench compare``'s: a metric regresses when
it gets worse *significantly* (Holm-adjusted p < 0.05 in a bootstrap test over the same
verification pairs / reconstruction targets), so float noise from another CPU or BLAS build
passes and a real loss of accuracy or privacy does not.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
SETTINGS = [
    "data.image_size=32", "data.limit_identities=16", "data.split=[0.5,0.25,0.25]",
    "data.num_pairs=100", "recognizer.widths=[8,16,16,32]", "recognizer.embedding_dim=32",
    "recognizer.epochs=4", "recognizer.batch_size=16", "recognizer.milestones=[]",
    "recognizer.warmup_epochs=0", "attacks.resrec.epochs=3",
    # every attack on `none` (ALGORITHMS §15): a few epochs, narrow networks
    "attacks.urec.epochs=3", "attacks.urec.width=8", "attacks.transrec.epochs=3",
    "attacks.transrec.width=8", "attacks.token_rec.epochs=3", "attacks.token_rec.width=8",
    "attacks.cgan.epochs=3", "attacks.cgan.ngf=8", "attacks.cgan.ndf=8",
    "attacks.linkage.epochs=6", "attacks.linkage.translator_width=8",
    "attacks.template_inversion.epochs=6", "attacks.template_inversion.width=8",
]
COMMON = ["--jobs", "1", "--threads", "1", "--no-progress", *[x for s in SETTINGS for x in ("--set", s)]]
#: two matrices into one run folder: defenses × the decoder, then every attack on `none`
#: (attacks that do not apply to it are recorded n/a at no cost)
RUNS = [["run", "--defenses", "none,ppfr_fd,mixup_fd", "--attacks", "resrec", *COMMON],
        ["run", "--defenses", "none", "--attacks", "all", *COMMON]]
ARGS = RUNS[0]  # the first matrix (kept for callers of the single-command form)


def run_reference(results: Path, run_id: str) -> Path:
    """Run the reference matrix into ``results/runs/<run_id>`` (``--threads 1``: before, the
    default of cores / jobs made the numbers depend on the machine's core count)."""
    from bench.cli import main

    for args in RUNS:
        rc = main(args + ["--results", str(results), "--run-id", run_id])
        if rc != 0:
            raise RuntimeError(f"reference run exited {rc}: {' '.join(args)}")
    return results / "runs" / run_id


def regenerate() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = run_reference(Path(tmp), "reference")
        if REFERENCE.exists():
            shutil.rmtree(REFERENCE)
        (REFERENCE / "cells").mkdir(parents=True)
        shutil.copy(run / "config.json", REFERENCE / "config.json")
        for cell in sorted((run / "cells").glob("*.json")):
            shutil.copy(cell, REFERENCE / "cells" / cell.name)
    (REFERENCE / "README.md").write_text(
        "Reference run for the CI regression gate; regenerate with `python -m tests.reference_run`.\n"
        "Commands (one run folder):\n"
        + "".join(f"  python -m bench {' '.join(args)}\n" for args in RUNS))
    print(f"wrote {REFERENCE}: {len(list((REFERENCE / 'cells').glob('*.json')))} cells "
          f"(config {json.loads((REFERENCE / 'config.json').read_text())['run_id']})")


if __name__ == "__main__":
    sys.exit(regenerate())
