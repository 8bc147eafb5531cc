"""Feature-domain defenses (ALGORITHMS §4.2, §4.3, §6): the E/Ψ split, the noise baselines, the
threat model's leak, the decoders on features, SRRA (§8) and the optional dlib evaluator."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import context_with_random_baseline

from bench.backbones.decoders import DECODERS, build_decoder
from bench.config import DataConfig, RecognizerConfig, RunConfig
from bench.core.contract import Leak, Reconstruction
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from bench.data.orl import load_orl
from bench.plugins import load_plugins
from bench.recognition import Recognizer
from defenses.feature_split import SPLIT_POINTS, split_aux, split_recognizer

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=12, batch_size=16, lr=0.05,
                        milestones=(), warmup_epochs=1, dropout=0.0, arcface_s=16.0)


@pytest.fixture(scope="module")
def data():
    """The embedded ORL faces, 12 identities at 32×32: 6 train, 3 aux, 3 test."""
    return load_orl(DataConfig(image_size=32, limit_identities=12, num_pairs=60), 0)


@pytest.fixture(scope="module")
def ctx(data):
    return context_with_random_baseline(data, TINY)


@pytest.mark.parametrize("split_at", SPLIT_POINTS)
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 16)])
def test_split_composes_to_the_whole_network(split_at, shape):
    torch.manual_seed(0)
    model = Recognizer(TINY, shape, num_classes=5).eval()
    x = torch.rand(4, *shape)
    extractor, psi = split_recognizer(model, split_at)
    with torch.no_grad():
        torch.testing.assert_close(psi(extractor(x)), model(x))
    assert psi.in_shape == tuple(extractor(x).shape[1:])
    assert psi.head.weight.shape == model.head.weight.shape
    assert psi.loss(extractor(x), torch.tensor([0, 1, 2, 3])).ndim == 0


def test_split_copies_and_rejects_unknown_points():
    model = Recognizer(TINY, (1, 32, 32), num_classes=3)
    extractor, _ = split_recognizer(model)
    assert extractor[0] is not model.backbone.conv1  # deep copies: fine-tuning Ψ leaves F1 alone
    assert [name for name, _ in extractor.named_children()] == ["conv1", "bn1", "act1", "maxpool"]
    with pytest.raises(ConfigError, match="split_at"):
        split_recognizer(model, "layer4")


def test_aux_halves_are_identity_disjoint_and_cover_aux(data):
    shadow, public = split_aux(data.aux, seed=0)
    assert set(shadow.labels.tolist()).isdisjoint(public.labels.tolist())
    assert len(shadow) + len(public) == len(data.aux)
    again, _ = split_aux(data.aux, seed=0)
    assert torch.equal(again.labels, shadow.labels)


def test_plain_feature_is_the_deployed_network(data, ctx):
    d = DEFENSES.create("plain_feature")
    d.fit(data, ctx)
    assert d.domain == "feature" and d.protected is False
    model = d.train_recognizer(data, ctx)
    x = data.test.images[:6]
    with torch.no_grad():
        torch.testing.assert_close(model(d.test_encode(x, torch.Generator())), ctx.baseline.eval()(x))


def test_leak_gives_clean_public_pairs_and_stolen_test_features(data, ctx):
    d = DEFENSES.create("random_feature")
    d.fit(data, ctx)
    leak = d.leak(data, ctx)
    _, public = split_aux(data.aux, ctx.seed)
    assert torch.equal(leak.train_targets, public.images)
    torch.testing.assert_close(leak.train_inputs, d.features(public.images))  # (E(x_pub), x_pub)
    assert leak.inputs.shape[0] == len(data.test) and leak.views is None
    assert not torch.allclose(leak.inputs, d.features(data.test.images))  # stored = perturbed


def test_noise_baselines_have_the_specified_distributions(data, ctx):
    z = torch.zeros(64, 16, 8, 8)
    rnd, dp = DEFENSES.create("random_feature"), DEFENSES.create("dp_feature")
    r = rnd.perturb(z, torch.Generator().manual_seed(0))
    # sum of 40 U(-0.2, 0.2): std 0.2·sqrt(40/3), bounded by 8
    assert r.std().item() == pytest.approx(0.2 * (40 / 3) ** 0.5, rel=0.05)
    assert r.abs().max() <= 40 * 0.2
    n = dp.perturb(z, torch.Generator().manual_seed(0))
    assert n.abs().mean().item() == pytest.approx(0.2, rel=0.05)  # Laplace(0, Δ/ε = 0.2)
    assert torch.equal(n, dp.perturb(z, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("kind", sorted(DECODERS))
@pytest.mark.parametrize("in_shape,out_shape", [((64, 8, 8), (1, 32, 32)), ((64, 16, 16), (1, 64, 64)),
                                                ((162, 8, 8), (3, 64, 64)), ((16, 4, 4), (1, 32, 32))])
def test_each_decoder_maps_its_input_shape_to_the_image_shape(kind, in_shape, out_shape):
    net = build_decoder(kind, in_shape, out_shape, width=4)
    out = net(torch.randn(2, *in_shape))
    assert out.shape == (2, *out_shape) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_decoders_reconstruct_plain_features_far_better_than_noise(data, ctx, kind):
    """A decoder trained on (E(x), x) reconstructs held-out faces from E(x); one trained on
    (noise, x) can only output a mean face."""
    d = DEFENSES.create("plain_feature")
    d.fit(data, ctx)
    x_train, x_test = torch.cat([data.train.images, data.aux.images]), data.test.images[:20]
    feats, feats_test = d.features(x_train), d.features(x_test)
    gen = torch.Generator().manual_seed(0)
    noise, noise_test = torch.randn(feats.shape, generator=gen), torch.randn(feats_test.shape, generator=gen)

    def fit_and_score(inputs, test_inputs):
        torch.manual_seed(0)
        net = build_decoder(kind, tuple(inputs.shape[1:]), tuple(x_train.shape[1:]), width=8)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(60):
            idx = torch.randperm(len(inputs))[:16]
            loss = F.l1_loss(net(inputs[idx]), x_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return F.l1_loss(net.eval()(test_inputs), x_test).item()

    plain, rand = fit_and_score(feats, feats_test), fit_and_score(noise, noise_test)
    assert plain < 0.8 * rand, (plain, rand)


class PixelEmbedder(torch.nn.Module):
    """A training-free stand-in for F1: mean-centred pixels through a fixed Gaussian projection
    (cosines preserved, Johnson–Lindenstrauss), so SRRA's plumbing is tested without depending
    on how well a tiny recognizer separates 3 test identities."""

    def __init__(self, mean_face: torch.Tensor, dim: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean_face", mean_face)
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(mean_face.numel(), dim, generator=gen), requires_grad=False)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_face).flatten(1) @ self.proj


def _privacy(data, recon: torch.Tensor) -> dict:
    from bench.pipeline import Pipeline, measure_privacy

    f1 = PixelEmbedder(data.train.images.mean(0))
    base = {"model": f1, **Pipeline._thresholds(f1, data)}
    leak = Leak(data.aux.images, data.aux.images, data.test.images, data.test.images, data.test.labels)
    return measure_privacy(leak, Reconstruction(recon), base, RunConfig())["privacy"]


def test_srra_is_one_for_perfect_reconstructions_and_near_zero_for_noise(data):
    perfect = _privacy(data, data.test.images.clone())
    assert perfect["SRRA"] == 1.0 and perfect["SRRA_far1e-3"] == 1.0
    noise = _privacy(data, torch.rand(data.test.images.shape, generator=torch.Generator().manual_seed(0)))
    assert noise["SRRA"] <= 0.05 and noise["SRRA_far1e-3"] <= 0.05
    # another person's face is not a successful reconstruction either (mostly)
    other = _privacy(data, data.test.images.roll(10, dims=0))  # 10 images per ORL identity
    assert other["SRRA_far1e-3"] <= 0.2


def test_dlib_evaluator_absent_gives_one_clear_error(monkeypatch):
    from metrics import dlib_evaluator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("dlib", "face_recognition_models") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'faceprivbench\[dlib\]'") as err:
        dlib_evaluator.independent_scores(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None
                    or importlib.util.find_spec("face_recognition_models") is None,
                    reason="dlib extra not installed")
def test_dlib_evaluator_scores_identical_faces_as_the_same_person(data):
    from metrics.dlib_evaluator import independent_scores

    x = data.test.images[:3]
    same = independent_scores(x, x.clone())
    assert same["SRRA"] == 1.0 and same["similarity"] == pytest.approx(1.0)
    assert independent_scores(x, torch.zeros_like(x))["similarity"] < 1.0
