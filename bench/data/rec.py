"""insightface training records as a dataset: ``--dataset rec --data-root <folder with train.rec,
train.idx[, property]>`` (faces_webface_112x112, MS1M-ArcFace, Glint360K as distributed).

Only the index and the identity records are read when the set opens (:mod:`bench.data.recordio`);
the training split streams its faces from the records through DataLoader workers, and aux/test
are decoded into memory under the ``data.max_*_images`` caps (:func:`assemble_streaming`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bench.config import DataConfig
from bench.core.errors import DatasetError
from bench.core.registry import DATASETS
from bench.data.assemble import assemble_streaming
from bench.data.facedata import FaceData
from bench.data.images import decode_image_bytes_uint8
from bench.data.recordio import InsightfaceRecords, open_insightface_records


class RecordReader:
    """Item ``i`` → the uint8 face of image ``i`` of the records (the open file is per process)."""

    def __init__(self, records: InsightfaceRecords, size: int, channels: int) -> None:
        self.records, self.size, self.channels = records, size, channels

    def __call__(self, i: int) -> Tensor:
        what = f"{self.records.records.rec_path.name} image {i}"
        return decode_image_bytes_uint8(self.records.read_image_bytes(i), self.size, self.channels, what)


def _check_tail(records: InsightfaceRecords) -> None:
    """A download cut short loses the file's tail: read the record stored last, so a truncated
    file fails here, before training, with the reader's one-line message (file and offset)."""
    key = records.records.tail_key()
    if key is not None:
        records.records.read_record(key)


@DATASETS.register("rec")
def load_rec(cfg: DataConfig, seed: int) -> FaceData:
    """insightface ``train.rec``/``train.idx`` at ``cfg.root``, split by identity for ``seed``."""
    if not cfg.root:
        raise DatasetError("dataset 'rec' needs a path; pass --data-root <folder with train.rec and train.idx>")
    records = open_insightface_records(Path(cfg.root).expanduser())
    _check_tail(records)
    labels = torch.as_tensor(records.labels, dtype=torch.int64)
    name = Path(cfg.root).expanduser().resolve().name or "rec"
    return assemble_streaming(name, RecordReader(records, cfg.image_size, cfg.channels), labels, cfg, seed)
