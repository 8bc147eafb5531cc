"""`recognizer.bn_recalibration`: the precise-BN pass after training runs only when it is true,
in the harness's training loop (`train_recognizer`) and in `fit_arcface` (AdvFace, DuetFace)."""
import dataclasses

import pytest
import torch
from torch import nn

import bench.recognition as recognition
import defenses.training as training
from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.data.facedata import FaceSet

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=2, batch_size=8,
                        lr=0.05, milestones=(), arcface_s=16.0, arcface_m=0.3, dropout=0.0)


def _faces(n_id=3, per=6):
    g = torch.Generator().manual_seed(0)
    return FaceSet(torch.rand(n_id * per, 1, 16, 16, generator=g),
                   torch.arange(n_id).repeat_interleave(per))


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    return [t.detach().clone() for m in norms for t in (m.running_mean, m.running_var)]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _spy_on_training(monkeypatch, module, get_model):
    """Snapshot the BN statistics the training loop leaves (right after ``sgd_epochs``) and count
    calls of ``recalibrate_batchnorm``."""
    after_loop, calls = [], []
    real_loop, real_recal = module.sgd_epochs, module.recalibrate_batchnorm

    def loop(*args, **kwargs):
        real_loop(*args, **kwargs)
        after_loop.append(_bn_stats(get_model()))

    def recal(*args, **kwargs):
        calls.append(1)
        return real_recal(*args, **kwargs)

    monkeypatch.setattr(module, "sgd_epochs", loop)
    monkeypatch.setattr(module, "recalibrate_batchnorm", recal)
    return after_loop, calls


@pytest.mark.parametrize("on", [False, True])
def test_train_recognizer_recalibrates_only_when_asked(monkeypatch, on):
    made = []

    class Spied(recognition.Recognizer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(recognition, "Recognizer", Spied)
    after_loop, calls = _spy_on_training(monkeypatch, recognition, lambda: made[-1])
    cfg = dataclasses.replace(TINY, bn_recalibration=on)
    model = recognition.train_recognizer(_faces(), Context(seed=0, progress=False, recognizer=cfg))
    assert not model.training
    assert len(calls) == int(on)
    assert _same(_bn_stats(model), after_loop[0]) is (not on)


@pytest.mark.parametrize("on", [False, True])
def test_fit_arcface_recalibrates_only_when_asked(monkeypatch, on):
    faces = _faces()
    model = recognition.Recognizer(TINY, (1, 16, 16), faces.num_identities)
    after_loop, calls = _spy_on_training(monkeypatch, training, lambda: model)
    cfg = dataclasses.replace(TINY, bn_recalibration=on)
    images = faces.images

    def batch(idx, flip, x):
        return torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])

    training.fit_arcface(model, batch, faces.labels, Context(seed=0, progress=False, recognizer=cfg),
                         cfg, desc="toy")
    assert not model.training
    assert len(calls) == int(on)
    assert _same(_bn_stats(model), after_loop[0]) is (not on)


def test_the_option_is_on_by_default():
    assert RecognizerConfig().bn_recalibration is True
