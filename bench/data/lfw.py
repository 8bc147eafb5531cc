"""LFW verification pairs from the standard ``pairs.txt`` (view 2, or the dev-view files).

Format: a header ``N_sets N_pairs`` (``10 300`` in view 2) or ``N`` (dev views), then one pair per
line: ``name i j`` (same person) or ``name1 i name2 j`` (different people). Image ``i`` of
``name`` is ``root/name/name_{i:04d}.jpg``. Pairs keep the file order, so consecutive tenths of
the set are LFW's own ten folds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.core.errors import DatasetError
from bench.data.facedata import VerificationSet
from bench.data.images import load_images


def _parse_pairs(pairs_file: Path) -> list[tuple[str, int, str, int, bool]]:
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"LFW pairs file {pairs_file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"LFW pairs file {pairs_file} is unreadable ({type(exc).__name__})") from None
    numbered = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DatasetError(f"LFW pairs file {pairs_file} is empty")
    n, header = numbered[0]
    if not (1 <= len(header) <= 2 and all(t.isdigit() for t in header)):
        raise DatasetError(f"{pairs_file} line {n}: expected a header 'N_sets N_pairs' or 'N', got {lines[n - 1]!r}")
    # '10 300' = ten sets of 300 same + 300 different; 'N' = N same + N different.
    expected = int(header[0]) * int(header[1]) * 2 if len(header) == 2 else int(header[0]) * 2
    pairs: list[tuple[str, int, str, int, bool]] = []
    for n, tok in numbered[1:]:
        try:
            if len(tok) == 3:
                pairs.append((tok[0], int(tok[1]), tok[0], int(tok[2]), True))
            elif len(tok) == 4:
                pairs.append((tok[0], int(tok[1]), tok[2], int(tok[3]), False))
            else:
                raise ValueError
        except ValueError:
            raise DatasetError(
                f"{pairs_file} line {n}: expected 'name i j' or 'name1 i name2 j', got {lines[n - 1]!r}"
            ) from None
    if len(pairs) != expected:
        raise DatasetError(f"{pairs_file}: header promises {expected} pairs but the file lists {len(pairs)}")
    return pairs


def load_lfw_pairs(pairs_file: str | Path, image_root: str | Path, size: int, channels: int) -> VerificationSet:
    """Parse ``pairs.txt`` and load its images from ``image_root/<name>/<name>_<i:04d>.jpg``."""
    pairs_file, root = Path(pairs_file), Path(image_root)
    pairs = _parse_pairs(pairs_file)
    # LFW reuses images across pairs: decode each file once, then index.
    index: dict[Path, int] = {}
    order: list[int] = []
    for a, i, b, j, _ in pairs:
        for name, k in ((a, i), (b, j)):
            path = root / name / f"{name}_{k:04d}.jpg"
            order.append(index.setdefault(path, len(index)))
    unique = list(index)
    missing = next((p for p in unique if not p.is_file()), None)
    if missing is not None:
        raise DatasetError(f"LFW image {missing} (listed in {pairs_file}) does not exist; check the image folder")
    images = load_images(unique, size, channels)[torch.tensor(order, dtype=torch.int64)]
    issame = torch.tensor([p[4] for p in pairs], dtype=torch.bool)
    return VerificationSet("lfw", images, issame)
