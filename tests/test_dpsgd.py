"""DP-SGD with Opacus (ALGORITHMS §4.4) at the image and identity levels (issue 20): the accountant
recomputed from the record, per-sample and per-identity clipping, GroupNorm, the leak's targets,
the level next to ε in the tables."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from bench.config import RecognizerConfig, resolve
from bench.pipeline import Pipeline
from bench.store import ArtifactStore
from conftest import TINY_SETTINGS
from defenses.dpsgd import (CosineNet, detach_inplace, epsilon_for, group_privacy,
                             identity_clipped_sums)

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


def test_dpsgd_cell_accounts_every_epoch_at_opacus_rate_and_leaks_training_faces(tmp_path):
    """ε is recomputed from the record with Opacus's RDP accountant and matches the reported one;
    two epochs, so ε accounted for one epoch only (or at ``batch/N``) would show."""
    cfg = resolve("quick", TINY_SETTINGS + ["recognizer.epochs=2"])
    pipe = Pipeline(cfg, ArtifactStore(tmp_path), progress=False)
    out = pipe.defense_recognizer(0, "dpsgd")
    rec = out["record"]
    n_train, batch = len(pipe.data(0).train), cfg.recognizer.batch_size
    per_epoch = math.ceil(n_train / batch)
    assert rec["dp_level"] == "image" and rec["units"] == n_train
    assert rec["delta"] == pytest.approx(1 / n_train)
    # Opacus samples at 1/len(loader), which is not batch/N here (60 faces, batch 16: .25 ≠ .267)
    assert rec["sample_rate"] == pytest.approx(1 / per_epoch)
    assert 1 / per_epoch != pytest.approx(batch / n_train)
    assert rec["steps"] == 2 * per_epoch  # both epochs, empty Poisson batches included
    recomputed = epsilon_for(rec["noise_multiplier"], rec["sample_rate"], rec["steps"], rec["delta"])
    assert rec["epsilon"] == pytest.approx(recomputed, rel=1e-9)
    # σ was solved for the whole run: ε lands just under the target (Opacus's tolerance 0.01) …
    assert 8.0 - 0.02 <= rec["epsilon"] <= 8.0
    # … and is far from what one epoch or the batch/N rate would account
    one_epoch = epsilon_for(rec["noise_multiplier"], rec["sample_rate"], per_epoch, rec["delta"])
    wrong_rate = epsilon_for(rec["noise_multiplier"], batch / n_train, rec["steps"], rec["delta"])
    assert one_epoch < rec["epsilon"] - 1.0 and abs(wrong_rate - rec["epsilon"]) > 0.1
    # a person with 10 training images is protected only by group privacy at the image level
    assert rec["person_epsilon"] == pytest.approx(rec["max_images_per_identity"] * rec["epsilon"])
    model = out["model"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                   for p in model.parameters())  # Opacus let go of it
    leak = pipe.leak(0, "dpsgd")
    data = pipe.data(0)
    # the reconstruction targets are training faces: §4.4 reports privacy on training identities
    assert set(leak.labels.tolist()) <= set(data.train.labels.tolist())
    assert leak.inputs.shape[0] == leak.targets.shape[0] and leak.inputs.ndim == 4
    assert leak.train_inputs.shape[1:] == leak.inputs.shape[1:]


# -- the identity level (issue 20) --------------------------------------------------------------
def test_identity_clipping_bounds_each_identitys_summed_gradient():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(12, 5, 3, generator=g) * 4, torch.randn(12, 7, generator=g) * 4]
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 0, 1])
    grads[0][9], grads[1][9] = 1e-3, 1e-3  # identity 3: one small gradient, below the bound
    clip = 1.0
    clipped, norms = identity_clipped_sums(grads, groups, 4, clip)
    after = torch.sqrt(sum(c.flatten(1).pow(2).sum(1) for c in clipped))
    assert (after <= clip * (1 + 1e-5)).all(), after
    for u in range(4):  # the *sum* of the identity's gradients is what is clipped
        raw = [gr[groups == u].sum(0) for gr in grads]
        raw_norm = torch.sqrt(sum(r.pow(2).sum() for r in raw))
        assert norms[u] == pytest.approx(float(raw_norm), rel=1e-5)
        scale = min(1.0, clip / (float(raw_norm) + 1e-6))
        for c, r in zip(clipped, raw):
            assert torch.allclose(c[u], r * scale, atol=1e-6)  # same direction, shrunk
    assert after[3] == pytest.approx(float(norms[3]), rel=1e-5)  # small sums pass unchanged
    # contrast: clipping each image instead lets one identity move the sum by (its images) × C
    per_sample = [gr / torch.sqrt(sum(x.flatten(1).pow(2).sum(1) for x in grads)).clamp_min(1)
                  .view(-1, *[1] * (gr.ndim - 1)) for gr in grads]
    ident2 = torch.sqrt(sum(ps[groups == 2].sum(0).pow(2).sum() for ps in per_sample))
    assert ident2 > 2 * clip


def test_group_privacy_bound():
    assert group_privacy(8.0, 1e-5, 1) == (8.0, 1e-5)
    eps, delta = group_privacy(0.1, 1e-6, 10)
    assert eps == pytest.approx(1.0) and delta == pytest.approx(10 * math.exp(0.9) * 1e-6)
    assert group_privacy(8.0, 1 / 60, 10) == (80.0, 1.0)  # vacuous: δ would exceed 1


TINY_RECOGNIZER = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=2,
                                   batch_size=16, milestones=(), warmup_epochs=0)


@pytest.fixture(scope="module")
def slice_faces():
    from bench.config import DataConfig
    from bench.data.orl import load_orl

    return load_orl(DataConfig(image_size=32, limit_identities=12, num_pairs=60), 0)


def _trained(name: str, faces, **options):
    from bench.core.context import Context
    from bench.core.registry import DEFENSES
    from bench.plugins import load_plugins

    load_plugins()
    d = DEFENSES.create(name, **options)
    d.name = name
    torch.manual_seed(0)
    d.train_recognizer(faces, Context(seed=0, progress=False, recognizer=TINY_RECOGNIZER))
    return d


def test_both_levels_and_the_true_relation_of_their_epsilons(slice_faces, monkeypatch):
    """Same σ, steps and per-step sampling rate → the same ε from the accountant at both levels
    (it sees only (σ, q, steps)); what differs is the unit: a person at the image level has only
    the group-privacy bound. The identity level's batches hold whole identities and it clips one
    sum per identity."""
    import defenses.dpsgd as dp

    n = len(slice_faces.train)  # 60 faces of 6 identities, 10 each
    ids = slice_faces.train.num_identities
    per_epoch = math.ceil(n / TINY_RECOGNIZER.batch_size)  # image level: q = 1/4, 4 steps/epoch
    seen: list[tuple[torch.Tensor, int]] = []
    real = dp.identity_clipped_sums

    def spy(grad_samples, groups, n_groups, max_norm):
        seen.append((torch.bincount(groups, minlength=n_groups), n_groups))
        out = real(grad_samples, groups, n_groups, max_norm)
        after = torch.sqrt(sum(c.flatten(1).pow(2).sum(1) for c in out[0]))
        assert (after <= max_norm * (1 + 1e-5)).all()
        return out

    monkeypatch.setattr(dp, "identity_clipped_sums", spy)
    common = {"noise_multiplier": 1.1, "delta": 1e-3}
    image = _trained("dpsgd", slice_faces, **common).record
    ident = _trained("dpsgd.identity", slice_faces, identities_per_batch=ids / per_epoch,
                     **common).record
    assert (image["dp_level"], ident["dp_level"]) == ("image", "identity")
    assert (image["units"], ident["units"]) == (n, ids)
    assert image["sample_rate"] == pytest.approx(ident["sample_rate"]) == pytest.approx(1 / per_epoch)
    assert image["steps"] == ident["steps"] == 2 * per_epoch
    assert ident["expected_batch_units"] == pytest.approx(ids / per_epoch)
    for r in (image, ident):
        assert r["epsilon"] == pytest.approx(epsilon_for(1.1, r["sample_rate"], r["steps"], 1e-3),
                                             rel=1e-9)
    assert ident["epsilon"] == pytest.approx(image["epsilon"], rel=1e-9)
    assert ident["person_epsilon"] == ident["epsilon"]
    assert image["person_epsilon"] == pytest.approx(10 * image["epsilon"])
    # identity batches: every identity present brought all 10 of its images; one clip per identity
    assert seen and all((counts == 10).all() for counts, _ in seen)
    assert len(seen) <= ident["steps"]  # the rest were empty batches (noise only)


def test_identity_level_solves_sigma_for_its_own_units(slice_faces):
    ident = _trained("dpsgd.identity", slice_faces).record
    assert ident["delta"] == pytest.approx(1 / 6)  # δ = 1 / protected units (identities)
    # default: as many images per batch as the image level (16 of 60 → 1.6 of 6 identities)
    assert ident["sample_rate"] == pytest.approx(16 / 60)
    assert ident["steps"] == 2 * round(60 / 16)
    assert 8.0 - 0.02 <= ident["epsilon"] <= 8.0
    assert ident["epsilon"] == pytest.approx(epsilon_for(ident["noise_multiplier"],
                                                         ident["sample_rate"], ident["steps"],
                                                         ident["delta"]), rel=1e-9)


@pytest.mark.parametrize("bad, match", [({"level": "person"}, "dpsgd.level"),
                                        ({"identities_per_batch": -1.0}, "identities_per_batch")])
def test_bad_level_options_fail_with_one_line(bad, match):
    from bench.core.errors import ConfigError
    from bench.core.registry import DEFENSES
    from bench.plugins import load_plugins

    load_plugins()
    with pytest.raises(ConfigError, match=match):
        DEFENSES.create("dpsgd", **bad)


def test_too_many_identities_per_batch_fails_before_training(slice_faces, monkeypatch):
    from bench.core.errors import ConfigError
    import bench.recognition as recognition

    monkeypatch.setattr(recognition, "build_seeded", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match=r"identities_per_batch must lie in \(0, 6\]"):
        _trained("dpsgd.identity", slice_faces, identities_per_batch=7)


def test_tables_show_the_level_next_to_epsilon():
    from bench.reporting.tables import table2, table5
    from tests.item_records import item_record

    recs = []
    for name, level in (("dpsgd", "image"), ("dpsgd.identity", "identity")):
        for attack in ("resrec", "ppfr_whitebox"):
            r = item_record(name, attack, 0, acc=0.6, ssim=0.3)
            r["record"] = {"epsilon": 7.99, "delta": 0.01, "dp_level": level}
            recs.append(r)
    old = item_record("dpsgd", "resrec", 1, acc=0.6, ssim=0.3)
    old["record"] = {"epsilon": 7.9, "delta": 0.01}  # written before the level existed: image
    plain = item_record("plain_feature", "resrec", 0, acc=0.8, ssim=0.6)
    for table in (table2(recs + [old, plain]), table5(recs + [old, plain])):
        cols = list(table.columns)
        assert cols[cols.index("epsilon") + 2] == "dp_level"  # epsilon, delta, dp_level
        t = table.drop_duplicates("Method").set_index("Method")
        assert t.loc["dpsgd", "dp_level"] == "image"
        assert t.loc["dpsgd.identity", "dp_level"] == "identity"
        assert pd.isna(t.loc["plain_feature", "dp_level"])
