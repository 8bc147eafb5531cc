"""The frequency-domain defenses of 2022–2025 (ALGORITHMS §13): PartialFace, MinusFace, DCTDP and
SlerpFace — each mechanism pinned by a small exact test, then a tiny fit → recognizer → leak →
attack per defense on quick-preset shapes (32 px gray ORL faces, ×8-upsampled maps)."""
from __future__ import annotations

import itertools
import math

import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from conftest import context_with_random_baseline

from bench.config import DataConfig, RecognizerConfig
from bench.core.errors import ConfigError
from bench.core.registry import ATTACKS, DEFENSES
from bench.data.orl import load_orl
from bench.plugins import load_plugins
from bench.recognition import verify
from defenses import partialface as pf
from defenses.dctdp import LaplaceNoise, drop_dc, standard_laplace
from defenses.minusface import MinusUNet
from defenses.slerpface import drop_counts, protect, slerp
from defenses.tface_dct import front_end, inverse_front_end

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=2, batch_size=16, lr=0.05,
                        milestones=(), warmup_epochs=0, dropout=0.0, arcface_s=16.0)


# -- the shared front end ----------------------------------------------------------------------------
def test_front_end_is_tface_ycbcr_bdct_of_the_upsampled_image():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    c = front_end(x)
    assert c.shape == (2, 3, 64, 4, 4)
    up = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=True) * 255
    r, g, b = up[1].double().unbind(0)
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b  # torchjpeg's +128, then TFace's −128
    block = cb[8:16, 16:24].numpy()
    ref = scipy.fft.dctn(block, norm="ortho").reshape(-1)  # channel 8u + v
    assert abs(ref - c[1, 1, :, 1, 2].double().numpy()).max() < 1e-3  # 255-scale coefficients
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128
    assert abs(scipy.fft.dctn(y[:8, :8].numpy(), norm="ortho")[0, 0] - c[1, 0, 0, 0, 0].item()) < 1e-3


def test_gray_faces_are_replicated_and_the_inverse_round_trips():
    gray = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    c = front_end(gray)
    assert c.shape == (2, 3, 64, 16, 16)
    assert c[:, 1:].abs().max() == 0  # R = G = B: both centred chroma planes are exactly zero
    torch.testing.assert_close(c, front_end(gray.expand(-1, 3, -1, -1)), atol=2e-3, rtol=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    exact = inverse_front_end(front_end(x, upsample=False), upsampled=False)
    assert (exact - x).abs().max() < 1e-4
    smooth = F.interpolate(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)),
                           size=(16, 16), mode="bilinear", align_corners=True)
    assert (inverse_front_end(front_end(smooth)) - smooth).abs().max() < 0.02  # ×8, ×1/8 resampling


# -- PartialFace -------------------------------------------------------------------------------------
def test_partialface_prunes_the_ten_low_frequencies_and_splits_the_rest_into_six_subsets():
    assert pf.PRUNED == (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)
    assert len(pf.KEPT) == 54 and not set(pf.KEPT) & set(pf.PRUNED) and list(pf.KEPT) == sorted(pf.KEPT)
    for selection in (torch.tensor(pf.TFACE_SELECTION), pf.PartialFace().selection):
        assert selection.shape == (6, 9)
        assert sorted(selection.flatten().tolist()) == list(range(54))  # disjoint, covering all 54
    seeded, other = pf.PartialFace(key_seed=0).selection, pf.PartialFace(key_seed=1).selection
    assert torch.equal(seeded, pf.PartialFace(key_seed=0).selection) and not torch.equal(seeded, other)
    assert pf.PartialFace(table="tface").permutations.tolist()[1] == [7, 3, 0, 6, 5, 4, 1, 2, 8]


def test_allowed_triple_is_label_mod_20_and_every_member_is_drawn():
    assert pf.TRIPLES == tuple(itertools.combinations(range(6), 3)) and len(pf.TRIPLES) == 20
    assert pf.TRIPLES[12] == (1, 2, 5)  # TFace's example: label 15232 % 20 = 12 → subsets 1, 2, 5
    labels = torch.tensor([15232, 3, 23, 40] * 50)
    subsets = pf.training_subsets(labels, torch.Generator().manual_seed(0))
    for y in labels.unique():
        drawn = set(subsets[labels == y].tolist())
        assert drawn == set(pf.TRIPLES[int(y) % 20])


def test_subset_selection_and_per_image_permutation_are_exact():
    # coefficient maps whose value is their own index 64·colour + frequency
    coeff = torch.arange(192.0).view(1, 3, 64, 1, 1).expand(2, 3, 64, 2, 2).contiguous()
    selection, perms = torch.tensor(pf.TFACE_SELECTION), torch.tensor(pf.TFACE_PERMUTATIONS)
    subset, perm = torch.tensor([2, 2]), torch.tensor([0, 1])
    out = pf.select_subsets(coeff, selection, perms, subset, perm)
    assert out.shape == (2, 27, 2, 2)
    for b in range(2):
        freqs = [pf.KEPT[selection[2, perms[perm[b], k]]] for k in range(9)]
        expected = [64 * colour + f for colour in range(3) for f in freqs]
        assert out[b, :, 0, 0].tolist() == expected
    assert out[0, :9, 0, 0].tolist() != out[1, :9, 0, 0].tolist()  # the permutation is per image


def test_partialface_train_step_binds_each_identity_to_its_triple():
    d = pf.PartialFace(table="tface", standardize=False)
    d.fit(_Faces(torch.rand(4, 1, 8, 8)), None)
    seen = []

    class Capture:
        def loss(self, r, y):
            seen.append(r)
            return r.sum()

    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 12, 19, 20, 39])
    d.train_step(Capture(), x, y, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    subset, perm = d.draw(6, g, labels=y)
    assert all(int(s) in pf.TRIPLES[int(l) % 20] for s, l in zip(subset, y))
    assert torch.equal(seen[0], d.encode_with(x, subset, perm))
    assert d.encode(x, torch.Generator()).shape == (6, 27, 8, 8)
    assert pf.PartialFace(test_subset=4).draw(3, torch.Generator())[0].tolist() == [4, 4, 4]
    with pytest.raises(ConfigError):
        pf.PartialFace(test_subset=6)


class _Faces:
    """A face source stand-in for channel statistics."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def train(self) -> "_Faces":
        return self


# -- DCTDP -------------------------------------------------------------------------------------------
def test_dctdp_drops_the_three_dc_channels():
    coeff = torch.arange(192.0).view(1, 3, 64, 1, 1)
    kept = drop_dc(coeff).flatten().tolist()
    assert len(kept) == 189 and not {0.0, 64.0, 128.0} & set(kept)


def test_dctdp_noise_scale_from_rho_and_budget():
    noise = LaplaceNoise((3, 2, 2), budget_mean=4.0, sensitivity=1.0)
    assert torch.allclose(noise.scales(), torch.full((3, 2, 2), 0.25))  # 1 / budget_mean at ρ = 0
    with torch.no_grad():
        noise.rhos.copy_(torch.linspace(-2, 2, 12).view(3, 2, 2))
    p = torch.softmax(noise.rhos.flatten(), 0).view(3, 2, 2)
    expected = 1.0 / (p * 4.0 * 12)
    torch.testing.assert_close(noise.scales(), expected)
    torch.testing.assert_close(noise.aux_loss(), -torch.log(expected.mean()))
    noise2 = LaplaceNoise((3, 2, 2), budget_mean=2.0, sensitivity=3.0)
    assert torch.allclose(noise2.scales(), torch.full((3, 2, 2), 1.5))  # sensitivity / budget_mean


def test_dctdp_noise_is_laplace_per_element_and_per_sample():
    eps = standard_laplace((200_000,), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs(eps.abs().mean().item() - 1.0) < 0.02 and abs(eps.mean().item()) < 0.02
    noise = LaplaceNoise((1, 4, 4), budget_mean=1.0)
    x = torch.zeros(2, 1, 4, 4)
    per_sample = noise(x, torch.Generator().manual_seed(0), per_sample=True)
    per_batch = noise(x, torch.Generator().manual_seed(0), per_sample=False)
    assert not torch.equal(per_sample[0], per_sample[1]) and torch.equal(per_batch[0], per_batch[1])


def test_dctdp_publishes_x_plus_noise_in_raw_coefficient_units():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    d = DEFENSES.create("dctdp", budget_mean=1e9)  # scale 1e-9: the published X + noise ≈ X
    d.fit(_Faces(x), None)
    assert d.noise.rhos.shape == (189, 8, 8)
    torch.testing.assert_close(d.encode(x, torch.Generator()), drop_dc(front_end(x)), atol=1e-4, rtol=0)
    with torch.no_grad():
        d.noise.locs.fill_(2.0)
    torch.testing.assert_close(d.encode(x, torch.Generator()), drop_dc(front_end(x)) + 2.0,
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_dctdp_recognizer_learns_on_raw_coefficients(data):
    """Guards the measured failure of per-channel standardisation (the Adam-trained loc blown up on
    the high-frequency channels kept the recognizer at chance, training top-1 0.08)."""
    cfg = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=10, batch_size=16, lr=0.05,
                           milestones=(), warmup_epochs=0, dropout=0.0, arcface_s=16.0)
    from bench.core.context import Context

    ctx = Context(seed=0, progress=False, recognizer=cfg)
    d = DEFENSES.create("dctdp")
    d.name = "dctdp"
    d.fit(data, ctx)
    model = d.train_recognizer(data, ctx)
    faces = data.train.relabelled()
    with torch.no_grad():
        pred = model.head.cosine(model(d.encode(faces.images, torch.Generator()))).argmax(1)
    assert (pred == faces.labels).float().mean() >= 0.9  # measured .983 (10 epochs), 1.0 (20)
    assert d.record["noise_scale_median"] > d.record["noise_scale_initial"]  # the aux loss pushed


def test_dctdp_budget_sweep_variants_are_registered():
    names = DEFENSES.names("dctdp.budget*")
    assert names == sorted(f"dctdp.budget{b:g}" for b in (0.5, 1, 2, 4, 8))
    assert DEFENSES.create("dctdp.budget0.5").options.budget_mean == 0.5
    with pytest.raises(ConfigError):
        DEFENSES.create("dctdp", budget_mean=0)


# -- MinusFace ---------------------------------------------------------------------------------------
def tface_unet_parameters(channels: int = 192) -> int:
    """Parameters of TFace's ``UNet(channels, channels)`` (minusface/utils.py), by hand."""
    def block(i, m, o):  # ConvBlock: conv3×3(i→m) + conv3×3(m→o), with biases
        return i * m * 9 + m + m * o * 9 + o

    w = [64, 128, 256, 512, 1024]
    return (block(channels, 64, 64) + sum(block(w[i], w[i + 1], w[i + 1]) for i in range(4))
            + sum(w[i + 1] * w[i] * 9 + w[i] for i in range(4))  # ConvTranspose 3×3
            + sum(block(2 * w[i], w[i], w[i]) for i in range(4)) + 64 * channels + channels)


def test_minusface_unet_keeps_the_shape_and_matches_tface_parameter_count():
    net = MinusUNet(192, width=4)
    for side in (16, 20):  # 20: padded to 32 for the four pools, cropped back
        assert net(torch.randn(1, 192, side, side)).shape == (1, 192, side, side)
    assert sum(p.numel() for p in MinusUNet(192, 64).parameters()) == tface_unet_parameters()


def test_minusface_residue_and_its_permuted_inverse(data):
    d = DEFENSES.create("minusface", generator_width=4)
    d.mean, d.std = torch.zeros(1, 192, 1, 1), torch.ones(1, 192, 1, 1)
    d.generator = _Scale(0.0)  # g(X) = 0: the residue is X itself
    x = data.test.images[:3]
    r = d.residue(x)
    assert r.shape == (3, 192, 32, 32)
    torch.testing.assert_close(r, front_end(x).flatten(1, 2))
    d.generator = _Scale(1.0)  # g(X) = X: nothing is left
    assert d.residue(x).abs().max() == 0
    d.generator = _Scale(0.5)
    xp = d.encode(x, torch.Generator().manual_seed(7))
    assert xp.shape == (3, 3, 32, 32) and 0 <= xp.min() and xp.max() <= 1
    perms = torch.argsort(torch.rand(3, 192, generator=torch.Generator().manual_seed(7)), dim=1)
    shuffled = d.residue(x).gather(1, perms[:, :, None, None].expand(3, 192, 32, 32))
    torch.testing.assert_close(xp, inverse_front_end(shuffled))
    assert len({tuple(p.tolist()) for p in perms}) == 3  # a fresh permutation per image
    d.options.n_duplicate = 2
    assert d.encode(x, torch.Generator()).shape == (3, 6, 32, 32)


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * x


# -- SlerpFace ---------------------------------------------------------------------------------------
def test_slerp_of_two_unit_vectors():
    g = torch.Generator().manual_seed(0)
    z1, z2 = F.normalize(torch.randn(5, 16, generator=g), dim=-1), F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    torch.testing.assert_close(slerp(z1, z2, 0.0), z1)
    torch.testing.assert_close(slerp(z1, z2, 1.0), z2)
    mid = slerp(z1, z2, 0.5)
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close((mid * z1).sum(-1), (mid * z2).sum(-1))  # halfway on the arc
    theta = torch.arccos((z1 * z2).sum(-1))
    torch.testing.assert_close(torch.arccos((slerp(z1, z2, 0.25) * z1).sum(-1).clamp(-1, 1)),
                               0.25 * theta, atol=1e-3, rtol=0)
    torch.testing.assert_close(slerp(z1, z1, 0.3), z1)  # parallel: the limit, no NaN


def test_protect_rotates_drops_by_attention_and_renormalises():
    assert drop_counts(16, 0.5, 8) == (12, 4)
    g = torch.Generator().manual_seed(1)
    groups = torch.randn(2, 16, 2, 2, generator=g)
    att = torch.softmax(torch.randn(2, 4, generator=g), dim=1)
    key = torch.randn(4, 16, generator=g)
    rank = torch.argsort(torch.argsort(torch.rand(4, 16, generator=g), dim=1), dim=1)
    out = protect(groups, att, key, rank, 0.9, (12, 4))
    grouped = out.flatten(2).transpose(1, 2)  # [B, positions, 16]
    torch.testing.assert_close(grouped.norm(dim=-1), att)  # unit groups scaled by attention
    median = torch.quantile(att, 0.5, dim=1, keepdim=True)
    zeros = (grouped == 0).sum(-1)
    assert torch.equal(zeros, torch.where(att < median, 12, 4))
    # uniform attention w = 1/4 and no drop: alpha = 1 + w puts every group on its key
    # direction (α = 1), alpha = w leaves it where it was (α = 0); both scaled by w
    flat = torch.full((2, 4), 0.25)
    on_key = protect(groups, flat, key, rank, 1.25, (0, 0)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(on_key, 0.25 * F.normalize(key, dim=-1).expand(2, 4, 16))
    unmoved = protect(groups, flat, key, rank, 0.25, (0, 0)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(unmoved, 0.25 * F.normalize(groups.flatten(2).transpose(1, 2), dim=-1))


# -- tiny end to end per defense ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return load_orl(DataConfig(image_size=32, limit_identities=12, num_pairs=60), 0)


@pytest.fixture(scope="module")
def ctx(data):
    return context_with_random_baseline(data, TINY)


CHEAP = {"minusface": {"generator_width": 4}, "partialface": {"num_aug": 1},
         "slerpface": {"head_epochs": 2}}
SHAPES = {"partialface": (27, 32, 32), "dctdp": (189, 32, 32), "minusface": (3, 32, 32),
          "slerpface": (16, 4, 4)}


@pytest.fixture(scope="module")
def fitted(data, ctx):
    out = {}
    for name in SHAPES:
        d = DEFENSES.create(name, **CHEAP.get(name, {}))
        d.name = name
        d.fit(data, ctx)
        model = d.train_recognizer(data, ctx)
        out[name] = (d, model)
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_fit_recognizer_and_leak(name, fitted, data, ctx):
    d, model = fitted[name]
    acc = verify(model, data.verification[0], d.test_encode, torch.Generator().manual_seed(0))
    assert 0.0 <= acc["accuracy_mean"] <= 1.0
    leak = d.leak(data, ctx)
    assert tuple(leak.inputs.shape[1:]) == SHAPES[name] == tuple(leak.train_inputs.shape[1:])
    assert d.representation_shape((1, 32, 32), TINY) == SHAPES[name] == d.leak_shape((1, 32, 32), TINY)
    assert len(leak.inputs) == len(data.test) and len(leak.train_targets) == len(data.aux)
    assert torch.isfinite(leak.inputs).all() and torch.isfinite(leak.train_inputs).all()
    if d.domain == "image":
        assert leak.views is not None and leak.views.shape[-2:] == (32, 32)
    else:
        assert leak.views is None
    # every decoder attack and the CGAN run on what the threat model leaks
    for attack in ("resrec", "cgan"):
        opts = {"epochs": 1, "ngf": 8, "ndf": 8, "batch_size": 8} if attack == "cgan" else \
            {"epochs": 1, "width": 8}
        a = ATTACKS.create(attack, **opts)
        assert a.not_applicable(d) is None
        rec = a.run(leak.for_attacker("white_box"), ctx)
        assert rec.images.shape == data.test.images.shape
    for attack in ("carlini", "ppfr_whitebox"):  # structural attacks state why they do not apply
        assert ATTACKS.create(attack).not_applicable(d)


def test_dctdp_noise_is_trained_with_the_recognizer(fitted):
    d, _ = fitted["dctdp"]
    assert d.noise_trained and d.record["noise_adam_steps"] > 0
    assert d.noise.rhos.abs().max() > 0 and d.noise.locs.abs().max() > 0
    assert d.record["noise_scale_initial"] == pytest.approx(0.25)


def test_minusface_stage1_trains_the_generator(fitted):
    d, _ = fitted["minusface"]
    assert not any(p.requires_grad for p in d.generator.parameters())  # frozen in stage 2
    assert 0 < d.record["stage1_l1"] and math.isfinite(d.record["residue_energy_ratio"])


def test_keyed_defenses_give_black_box_attackers_their_own_secrets(fitted, data, ctx):
    for name in ("partialface", "slerpface"):
        d, _ = fitted[name]
        secrets = d.deployment_secrets()
        assert secrets
        copy = d.attacker_copy(torch.Generator().manual_seed(3))
        other = copy.deployment_secrets()
        assert any(not torch.equal(secrets[k], other[k]) for k in secrets)
        assert d.deployment_secrets().keys() == secrets.keys()  # the deployment keeps its own
        mine = d.leak(data, ctx).train_inputs
        theirs = copy.leak(data, ctx).train_inputs
        assert not torch.equal(mine, theirs)
    for name in ("dctdp", "minusface"):  # no deployment secret: the two settings coincide
        d, _ = fitted[name]
        assert d.attacker_copy(torch.Generator()) is d and not d.deployment_secrets()


def test_slerpface_verifies_on_protected_templates(fitted, data):
    d, model = fitted["slerpface"]
    x = data.test.images[:4]
    r = d.test_encode(x, torch.Generator())
    torch.testing.assert_close(r, d.test_encode(x.flip(-1), torch.Generator()))  # flip-fused
    assert torch.equal(model(r), r.flatten(1))
    assert "unprotected_template_accuracy" in d.record and d.record["feature_stage"] == "layer2"


def test_plan_names_each_network_with_its_parameters():
    paper = RecognizerConfig(backbone="ir_18", embedding_dim=512)
    models = DEFENSES.create("minusface").plan_models((3, 112, 112), paper, 10, 100)
    gen = next(m for n, m in models.items() if n.startswith("generator (w=64)"))
    assert gen.stage == "defense_fit" and gen.input_shape == (192, 112, 112)
    assert sum(p.numel() for p in gen.module.parameters()) == tface_unet_parameters()
    f2 = models["ir_18 F2 on X_p"]
    assert f2.input_shape == (3, 112, 112) and f2.stage == "defense_recognizer"
    pf_models = DEFENSES.create("partialface", num_aug=3).plan_models((3, 112, 112), TINY, 10, 32)
    (only,) = pf_models.values()
    assert only.input_shape == (27, 112, 112) and only.images == 32 * TINY.epochs * 3
