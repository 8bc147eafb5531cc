"""DP-SGD with Opacus (ALGORITHMS §4.4): accountant, clipping, GroupNorm, the leak's targets."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.config import RecognizerConfig, resolve
from bench.pipeline import Pipeline
from bench.store import ArtifactStore
from conftest import TINY_SETTINGS
from defenses.dpsgd import CosineNet, detach_inplace, epsilon_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
opacus = pytest.importorskip("opacus")


def test_epsilon_is_finite_and_falls_as_the_noise_rises():
    eps = [epsilon_for(sigma, sample_rate=0.05, steps=400, delta=1e-3) for sigma in (0.6, 1.0, 2.0, 4.0)]
    assert all(0 < e < float("inf") for e in eps)
    assert eps == sorted(eps, reverse=True) and eps[0] > 3 * eps[-1]


def _tiny_model() -> nn.Module:
    from opacus.validators import ModuleValidator

    from bench.recognition import Recognizer

    cfg = RecognizerConfig(backbone="resnet18", widths=(8, 8, 16, 16), embedding_dim=16)
    torch.manual_seed(0)
    model = ModuleValidator.fix(Recognizer(cfg, (1, 32, 32), 4))
    detach_inplace(model)
    return model


def test_model_has_no_batchnorm_and_the_inplace_fix_keeps_the_function():
    model = _tiny_model().eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    ref = copy.deepcopy(model)
    for m in ref.modules():  # undo the copies: the same function without them
        for name, child in list(m.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[0], nn.GroupNorm):
                setattr(m, name, child[0])
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model(x), ref(x))


def test_per_sample_clipping_bounds_each_update():
    from opacus import PrivacyEngine

    model = _tiny_model()
    net = CosineNet(model)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    x, y = torch.rand(16, 1, 32, 32), torch.arange(4).repeat(4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    clip = 1e-3
    dp_net, dp_opt, _ = PrivacyEngine().make_private(module=net, optimizer=opt, data_loader=loader,
                                                     noise_multiplier=0.0, max_grad_norm=clip,
                                                     poisson_sampling=False)
    loss = nn.functional.cross_entropy(30 * dp_net(x), y)  # large per-sample gradients
    loss.backward()
    raw = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in net.parameters()))
    assert raw > 100 * clip  # without clipping the step would be far larger
    dp_opt.step()
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    assert step <= clip * (1 + 1e-4)  # mean of per-sample gradients each clipped to norm ≤ clip


def test_dpsgd_cell_reports_epsilon_and_leaks_training_faces(tmp_path):
    cfg = resolve("quick", TINY_SETTINGS + ["recognizer.epochs=1"])
    pipe = Pipeline(cfg, ArtifactStore(tmp_path), progress=False)
    out = pipe.defense_recognizer(0, "dpsgd")
    rec = out["record"]
    n_train = len(pipe.data(0).train)
    assert rec["delta"] == pytest.approx(1 / n_train)
    assert 0 < rec["epsilon"] <= 8.0 * 1.01 and rec["noise_multiplier"] > 0 and rec["steps"] >= 1
    model = out["model"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus let go of it
    leak = pipe.leak(0, "dpsgd")
    data = pipe.data(0)
    # the reconstruction targets are training faces: §4.4 reports privacy on training identities
    assert set(leak.labels.tolist()) <= set(data.train.labels.tolist())
    assert leak.inputs.shape[0] == leak.targets.shape[0] and leak.inputs.ndim == 4
    assert leak.train_inputs.shape[1:] == leak.inputs.shape[1:]
