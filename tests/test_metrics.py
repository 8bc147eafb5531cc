"""Tests for metrics/ (ALGORITHMS §8): image metrics, LPIPS loading, verification, SRRA, scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bench.core.errors import ConfigError
from metrics import identity, image, scores

# --------------------------------------------------------------------------------------------
# image metrics
# --------------------------------------------------------------------------------------------


def _imgs(n=3, c=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g)


def test_identical_images():
    a = _imgs()
    assert torch.all(image.mse(a, a) == 0)
    assert torch.allclose(image.psnr(a, a), torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.allclose(image.ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_mse_psnr_known_values():
    a = torch.zeros(2, 1, 8, 8)
    b = torch.full((2, 1, 8, 8), 0.1)
    b[1] = 0.5
    assert torch.allclose(image.mse(a, b), torch.tensor([0.01, 0.25], dtype=torch.float64))
    assert torch.allclose(image.psnr(a, b), torch.tensor([20.0, 10 * math.log10(4)], dtype=torch.float64))
    # black vs white: MSE 1, PSNR 0 dB
    assert image.psnr(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).item() == pytest.approx(0.0)
    # per-image mean over C·H·W: an error in one channel of one pixel is diluted by C·H·W
    c = a[:1].repeat(1, 3, 1, 1)
    d = c.clone()
    d[0, 2, 3, 3] = 1.0
    assert image.mse(c, d).item() == pytest.approx(1 / (3 * 64))


def test_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        image.mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


@pytest.mark.parametrize("c", [1, 3])
def test_ssim_matches_skimage(c):
    a = _imgs(n=2, c=c, h=32, w=28, seed=1)
    b = (a + 0.1 * _imgs(n=2, c=c, h=32, w=28, seed=2)).clamp(0, 1)
    got = image.ssim(a, b)
    for i in range(2):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03, data_range=1.0)
        if c == 1:
            ref = structural_similarity(x[0], y[0], **kw)
        else:
            ref = structural_similarity(np.moveaxis(x, 0, -1), np.moveaxis(y, 0, -1), channel_axis=-1, **kw)
        assert got[i].item() == pytest.approx(ref, abs=1e-12)
    assert torch.all(got < 1) and torch.all(got > 0)


@pytest.mark.parametrize("side", [1, 2, 5, 7, 10])
def test_ssim_small_images(side):
    a = _imgs(n=2, c=3, h=side, w=side + 3, seed=3)
    assert torch.allclose(image.ssim(a, a), torch.ones(2, dtype=torch.float64))
    s = image.ssim(a, 1 - a)
    assert torch.all(torch.isfinite(s)) and torch.all(s <= 1)


def test_ssim_anticorrelated_is_low():
    a = _imgs(n=1, c=1, h=32, w=32, seed=4)
    assert image.ssim(a, 1 - a).item() < 0


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory):
    """A torchvision AlexNet state_dict with random (but correctly shaped) weights."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = tv.models.alexnet(weights=None).state_dict()
    path = tmp_path_factory.mktemp("alex") / "alexnet.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def lpips_fake(fake_alexnet):
    """LPIPS loaded once from the fake AlexNet file (construction costs seconds)."""
    return image.Lpips.load(str(fake_alexnet[0]), batch_size=2)


def test_lpips_missing_weights_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    lp = image.Lpips.load(None)
    assert lp.available is False
    assert "AlexNet weights not found at" in lp.reason
    assert str(tmp_path / "no_torch_home") in lp.reason
    assert "--set metrics.lpips_weights=PATH" in lp.reason
    with pytest.raises(RuntimeError):
        lp(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    missing = image.Lpips.load(str(tmp_path / "nope.pth"))
    assert missing.available is False and "nope.pth" in missing.reason


def test_lpips_loads_backbone_from_file(fake_alexnet, lpips_fake):
    _, state = fake_alexnet
    lp = lpips_fake
    assert lp.available, lp.reason
    net = lp.model.net
    slices = {0: net.slice1, 3: net.slice2, 6: net.slice3, 8: net.slice4, 10: net.slice5}
    for i, sl in slices.items():
        conv = getattr(sl, str(i))
        assert torch.equal(conv.weight, state[f"features.{i}.weight"]), i
        assert torch.equal(conv.bias, state[f"features.{i}.bias"]), i
    # every backbone tensor of lpips came from the file (none left random)
    n_backbone = sum(1 for k in lp.model.state_dict() if k.startswith("net."))
    assert n_backbone == 10
    # the calibration layers are the ones shipped inside the lpips package
    import os

    import lpips

    shipped = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth"),
                         map_location="cpu", weights_only=True)
    assert torch.equal(lp.model.lin0.model[1].weight, shipped["lin0.model.1.weight"])


def test_lpips_default_path_uses_torch_home(fake_alexnet, tmp_path, monkeypatch):
    path, _ = fake_alexnet
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / image.ALEXNET_FILENAME
    assert image.default_alexnet_path() == str(target)
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    assert image.Lpips.load(None).available


def test_lpips_values_and_perceptual_distance(lpips_fake):
    lp = lpips_fake
    a = _imgs(n=3, c=3, h=32, w=32, seed=5)
    b = _imgs(n=3, c=3, h=32, w=32, seed=6)
    d_same = lp(a, a)
    d = lp(a, b)
    assert d.shape == (3,)
    assert torch.allclose(d_same, torch.zeros(3), atol=1e-6)
    assert torch.all(d > 0)
    # gray and tiny images work (repeated to RGB; upsampled below 32 px)
    g = lp(a[:, :1, :16, :16], b[:, :1, :16, :16])
    assert g.shape == (3,) and torch.all(torch.isfinite(g))
    v, name = image.perceptual_distance(a, b, lp)
    assert name == "lpips" and torch.allclose(v, d)


def test_lpips_rejects_wrong_file(tmp_path):
    p = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(3)}, p)
    with pytest.raises(ConfigError):
        image.Lpips.load(str(p))


def test_perceptual_distance_fallback():
    a = _imgs(n=2, c=3, h=16, w=16, seed=7)
    b = _imgs(n=2, c=3, h=16, w=16, seed=8)
    for lp in (None, image.Lpips(available=False, reason="x")):
        v, name = image.perceptual_distance(a, b, lp)
        assert name == "dssim (LPIPS unavailable)"
        assert torch.allclose(v.double(), 1 - image.ssim(a, b), atol=1e-6)


# --------------------------------------------------------------------------------------------
# identity metrics
# --------------------------------------------------------------------------------------------


def test_cosine_rowwise():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    assert torch.allclose(identity.cosine(a, b), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))


def _pairs(n_pairs, d=64, seed=0, separable=True):
    rng = np.random.default_rng(seed)
    e1 = rng.standard_normal((n_pairs, d))
    issame = np.tile([True, False], n_pairs // 2)[:n_pairs]  # LFW-like interleaving
    rng.shuffle(issame)
    if separable:
        e2 = np.where(issame[:, None], e1 + 0.01 * rng.standard_normal((n_pairs, d)), rng.standard_normal((n_pairs, d)))
    else:
        e2 = rng.standard_normal((n_pairs, d))
    return torch.from_numpy(e1).float(), torch.from_numpy(e2).float(), issame


def test_verification_separable():
    e1, e2, same = _pairs(600, seed=1)
    r = identity.verification_accuracy(e1, e2, same)
    assert r["accuracy_mean"] == 1.0 and r["accuracy_std"] == 0.0
    assert 0 < r["threshold_mean"] < 2  # genuine dist ≈ 0, impostors ≈ 2
    assert r["val_at_far"] == pytest.approx(1.0)
    assert r["far"] <= 0.01


def test_verification_random():
    e1, e2, same = _pairs(6000, seed=2, separable=False)
    r = identity.verification_accuracy(e1, e2, same)
    assert abs(r["accuracy_mean"] - 0.5) < 0.1
    assert set(r) == {"accuracy_mean", "accuracy_std", "threshold_mean", "val_at_far", "val_std", "far",
                      "correct"}
    assert len(r["correct"]) == 6000 and np.mean(r["correct"]) == pytest.approx(r["accuracy_mean"])
    # at FAR 1e-3 random embeddings accept about as many genuines as impostors
    assert 0 <= r["val_at_far"] < 0.02 and 0 <= r["far"] < 0.01


def test_verification_noisy_val_monotone_in_far():
    rng = np.random.default_rng(3)
    n = 2000
    same = np.tile([True, False], n // 2)
    e1 = rng.standard_normal((n, 32))
    e2 = np.where(same[:, None], e1 + 0.9 * rng.standard_normal((n, 32)), rng.standard_normal((n, 32)))
    lo = identity.verification_accuracy(e1, e2, same, far_target=1e-3)
    hi = identity.verification_accuracy(e1, e2, same, far_target=1e-1)
    assert 0.5 < lo["accuracy_mean"] < 1.0
    assert lo["val_at_far"] <= hi["val_at_far"]
    assert lo["far"] < 0.01 and abs(hi["far"] - 0.1) < 0.05


def _pair_at(d):
    """Two unit vectors in the plane at squared-L2 distance ``d``."""
    theta = math.acos(1 - d / 2)
    return [1.0, 0.0], [math.cos(theta), math.sin(theta)]


def test_the_threshold_is_never_chosen_on_the_held_out_fold():
    """20 pairs, 10 contiguous folds of (genuine, impostor). Folds 1–9: genuine at distance
    .455, impostors at 1.555. Fold 0: a genuine at 1.005 and an impostor at 1.605. Trained on
    folds 1–9 the first best threshold is .46, which rejects fold 0's genuine: fold 0 scores 1/2.
    Every other fold is trained with fold 0 inside, picks 1.01 and is right on both pairs. So the
    cross-validated accuracy is (0.5 + 9)/10 = .95; a threshold chosen on the held-out fold (or
    on all pairs) would put fold 0 at 1/1 and the mean at 1.0."""
    dists = [1.005, 1.605] + [0.455, 1.555] * 9
    e1, e2 = map(torch.tensor, zip(*[_pair_at(d) for d in dists]))
    same = np.array([True, False] * 10)
    r = identity.verification_accuracy(e1.double(), e2.double(), same)
    assert r["accuracy_mean"] == pytest.approx(0.95, abs=1e-12)
    assert r["accuracy_std"] == pytest.approx(np.std([0.5] + [1.0] * 9), abs=1e-12)
    assert r["threshold_mean"] == pytest.approx((0.46 + 9 * 1.01) / 10, abs=1e-9)
    assert r["correct"] == [0] + [1] * 19


def test_folds_match_sklearn_kfold():
    folds = identity._folds(23, 10)
    sizes = [len(t) for _, t in folds]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]  # KFold: first n % k folds get one more
    assert np.array_equal(np.concatenate([t for _, t in folds]), np.arange(23))
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 23


def test_cosine_threshold_from_distance():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 16))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = float(np.sum((a - b) ** 2))
    assert identity.cosine_threshold_from_distance(d) == pytest.approx(float(a @ b))


def test_threshold_at_far():
    imp = np.linspace(-1, 1, 1000)
    gen = np.ones(10)
    t = identity.threshold_at_far(gen, imp, 1e-2)
    assert np.mean(imp >= t) <= 1e-2
    assert np.mean(imp >= t) == pytest.approx(1e-2)  # smallest threshold reaching the budget
    t0 = identity.threshold_at_far(gen, imp, 0.0)
    assert t0 > imp.max()


def test_srra():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 128, generator=g)
    assert identity.srra(x, x, 0.99) == 1.0
    y = torch.randn(200, 128, generator=g)
    assert identity.srra(y, x, 0.5) == 0.0
    assert identity.srra(-x, x, 0.0) == 0.0


# --------------------------------------------------------------------------------------------
# scores — `[H]` Table 2 (ALGORITHMS §10)
# --------------------------------------------------------------------------------------------

# method: (Score, Score_pp, Score_cls, LFW acc) — the 12 protected rows; 'ArcFace (no mask)' left out
TABLE2 = {
    "Masking+AdaMixUp(k:2-6)": (0.968, 0.979, 0.957, 96.15),
    "Masking+AdaMixUp(k:2-5)": (0.981, 0.975, 0.987, 98.20),
    "Masking+AdaMixUp(k:2-4)": (0.959, 0.925, 0.992, 98.43),
    "Masking+MixUp(k=2)": (0.912, 0.825, 0.999, 98.92),
    "Masking+MixUp(k=3)": (0.940, 0.892, 0.989, 98.20),
    "Masking+MixUp(k=4)": (0.877, 0.975, 0.779, 84.62),
    "Masking+MixUp(k=5)": (0.796, 0.988, 0.605, 73.31),
    "Masking+MixUp(k=6)": (0.750, 1.000, 0.500, 66.53),
    "MixUp-FD(k=2)": (0.749, 0.500, 0.997, 98.76),
    "PPFR-FD": (0.806, 0.613, 1.000, 98.93),
    "DP (PEEP, ε=3)": (0.753, 0.917, 0.590, 72.36),
    "InstaHide-FD(k=2)": (0.733, 0.713, 0.753, 82.93),
}


def test_score_cls_reproduces_table2():
    cls = scores.score_cls({m: row[3] for m, row in TABLE2.items()})
    ok = [m for m, row in TABLE2.items() if abs(cls[m] - row[2]) <= 0.001]
    assert len(ok) >= 11, {m: (round(cls[m], 4), TABLE2[m][2]) for m in TABLE2}
    # the known outlier (ALGORITHMS §8): AdaMixUp 2–5 computes to 0.9887, printed .987
    bad = set(TABLE2) - set(ok)
    assert bad <= {"Masking+AdaMixUp(k:2-5)"}
    assert cls["Masking+AdaMixUp(k:2-5)"] == pytest.approx(0.9887, abs=1e-4)


def test_score_is_mean_of_printed_columns():
    for m, (s, pp, cls, _) in TABLE2.items():
        assert abs(scores.score(pp, cls) - s) <= 0.0005 + 1e-12, m


def test_score_table_against_hand_computed_values():
    """Independent inputs, every number worked out by hand (ALGORITHMS §8): each mapping is
    min-max normalised to [0.5, 1] over its own methods; Score is the mean; a method missing
    from one mapping gets NaN there (and in Score)."""
    raw = {"a": 0.2, "b": 0.6, "c": 0.5}
    acc = {"a": 0.9, "b": 0.7, "c": 0.8, "d": 0.6}
    t = scores.score_table(raw, acc)
    want = {  # score_pp: 0.5 + 0.5·(raw − 0.2)/0.4; score_cls: 0.5 + 0.5·(acc − 0.6)/0.3
        "a": (0.5, 1.0, 0.75),
        "b": (1.0, 0.5 + 0.5 / 3, (1.0 + 0.5 + 0.5 / 3) / 2),
        "c": (0.875, 0.5 + 1 / 3, (0.875 + 0.5 + 1 / 3) / 2),
    }
    assert list(t) == ["a", "b", "c", "d"]
    for m, (pp, cls, sc) in want.items():
        assert t[m]["raw_pp"] == raw[m] and t[m]["acc"] == acc[m]
        assert t[m]["score_pp"] == pytest.approx(pp, abs=1e-12), m
        assert t[m]["score_cls"] == pytest.approx(cls, abs=1e-12), m
        assert t[m]["score"] == pytest.approx(sc, abs=1e-12), m
    assert t["d"]["score_cls"] == 0.5 and math.isnan(t["d"]["score_pp"])
    assert math.isnan(t["d"]["raw_pp"]) and math.isnan(t["d"]["score"])
    # the normalisation is relative to the methods passed: one more method moves the others
    with_base = scores.score_cls({**acc, "none": 1.0})
    assert with_base["a"] == pytest.approx(0.5 + 0.5 * 0.3 / 0.4) and with_base["none"] == 1.0


def test_minmax_edge_cases():
    assert all(math.isnan(v) for v in scores.minmax_to_half({"a": 0.3}).values())
    assert all(math.isnan(v) for v in scores.minmax_to_half({"a": 0.3, "b": 0.3}).values())
    assert all(math.isnan(v) for v in scores.minmax_to_half({"a": 0.3, "b": math.nan}).values())
    assert scores.minmax_to_half({}) == {}
    r = scores.minmax_to_half({"a": 1.0, "b": math.nan, "c": 3.0, "d": 2.0, "e": math.inf})
    assert r["a"] == 0.5 and r["c"] == 1.0 and r["d"] == 0.75
    assert math.isnan(r["b"]) and math.isnan(r["e"])


def test_s_scores_and_raw_pp():
    dist = torch.tensor([0.2, 0.4])
    cos = torch.tensor([0.9, 0.7])
    assert scores.s_perceptual(dist) == pytest.approx(0.3)
    assert scores.s_identity(cos) == pytest.approx(0.2)
    s = scores.s_scores(dist, cos, dist * 2, cos / 2)
    assert s == pytest.approx({"s1": 0.3, "s2": 0.2, "s3": 0.6, "s4": 0.6})
    assert scores.raw_pp(**s) == pytest.approx(0.4 * 0.5 + 0.6 * 1.2)
    none = scores.s_scores(None, None, dist, cos)
    assert math.isnan(none["s1"]) and math.isnan(scores.raw_pp(**none))


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)), max_size=12))
def test_minmax_property(values):
    out = scores.minmax_to_half(values)
    assert out.keys() == values.keys()
    finite = {v for v in values.values() if math.isfinite(v)}
    for k, v in out.items():
        if len(finite) >= 2 and math.isfinite(values[k]):
            assert 0.5 - 1e-12 <= v <= 1.0 + 1e-12
        else:
            assert math.isnan(v)
    if len(finite) >= 2:
        assert min(v for v in out.values() if math.isfinite(v)) == pytest.approx(0.5)
        assert max(v for v in out.values() if math.isfinite(v)) == pytest.approx(1.0)
