"""In-batch mixing (ALGORITHMS §2) and the fixed-k mixing defenses (mixup.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.core.errors import ConfigError
from bench.data.facedata import FaceData, FaceSet
from bench.recognition import Recognizer
from defenses.bdct import bdct_image
from defenses.mixing import SecureRandom, TorchRandom, mix_batch, sample_weights
from defenses.mixup import InstahideFd, InstahideRgb, MaskingMixup, MixupFd, MixupRgb

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = RecognizerConfig(widths=(4, 4, 8, 8), embedding_dim=8, epochs=1, batch_size=8,
                        milestones=(), dropout=0.0, arcface_s=16.0)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 40), k=st.integers(2, 10), frac=st.floats(0.2, 1.0), seed=st.integers(0, 2**31))
def test_weights_sum_to_one_and_respect_the_cap(b, k, frac, seed):
    cap = 1 / k + frac * (1 - 1 / k)
    lam = sample_weights(b, k, cap, TorchRandom(G(seed)))
    assert lam.shape == (b, k)
    assert torch.all(lam >= 0)
    assert torch.allclose(lam.sum(1), torch.ones(b), atol=1e-5)
    assert torch.all(lam.max(1).values <= cap + 1e-6)


def test_k2_at_the_paper_cap_keeps_weights_near_half():
    lam = sample_weights(500, 2, 0.55, TorchRandom(G()))
    assert lam.min() >= 0.45 - 1e-6 and lam.max() <= 0.55 + 1e-6


def test_secure_source_draws_valid_weights_permutations_and_signs():
    src = SecureRandom()
    lam = sample_weights(50, 3, 0.55, src)
    assert torch.allclose(lam.sum(1), torch.ones(50), atol=1e-5) and lam.max() <= 0.55 + 1e-6
    assert torch.equal(src.randperm(20).sort().values, torch.arange(20))
    s = src.signs((1000,))
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.mean())) < 0.15
    assert not torch.equal(src.abs_normal((8,)), src.abs_normal((8,)))  # not seeded


def test_mixing_with_k1_is_the_identity():
    z, y = torch.randn(6, 5, 4, 4), torch.arange(6)
    m = mix_batch(z, y, 1, 1.0, TorchRandom(G()))
    assert torch.equal(m.z, z)
    assert torch.equal(m.gt, y[None]) and torch.equal(m.co, torch.ones(6, 1))


def test_mixture_is_the_weighted_sum_of_its_slots_with_slot0_the_batch_itself():
    z, y = torch.randn(8, 3, 2, 2), torch.arange(8) * 10
    m = mix_batch(z, y, 3, 0.55, TorchRandom(G(1)))
    assert torch.equal(m.idx[0], torch.arange(8))
    assert torch.equal(m.gt, y[m.idx])
    expect = sum(m.co[:, i, None, None, None] * z[m.idx[i]] for i in range(3))
    assert torch.allclose(m.z, expect, atol=1e-6)
    for i in range(1, 3):
        assert torch.equal(m.idx[i].sort().values, torch.arange(8))  # a permutation of the batch


def test_same_seed_same_mixture_other_seed_other_mixture():
    z, y = torch.randn(8, 3, 2, 2), torch.arange(8)
    a, b = (mix_batch(z, y, 3, 0.55, TorchRandom(G(s))).z for s in (5, 5))
    assert torch.equal(a, b)
    assert not torch.equal(a, mix_batch(z, y, 3, 0.55, TorchRandom(G(6))).z)


def test_instahide_signs_are_pm1_and_independent_of_the_image():
    z1 = torch.rand(4, 3, 8, 8) + 0.1  # positive, so the output's sign is the sign mask
    z2 = torch.rand(4, 3, 8, 8) * 5 + 0.1
    s1 = mix_batch(z1, None, 1, 1.0, TorchRandom(G(3)), signs=True).z / z1
    s2 = mix_batch(z2, None, 1, 1.0, TorchRandom(G(3)), signs=True).z / z2
    assert torch.allclose(s1.abs(), torch.ones_like(s1), atol=1e-5)
    assert torch.equal(s1.sign(), s2.sign())  # the same draws whatever the image
    assert abs(float(s1.mean())) < 0.15  # per element, balanced


# -- the defenses ------------------------------------------------------------------------------------
def _faces(n_id=4, per=6, side=16, seed=0):
    g = G(seed)
    return FaceSet(torch.rand(n_id * per, 1, side, side, generator=g),
                   torch.arange(n_id).repeat_interleave(per))


@pytest.mark.parametrize("cls,opts,shape", [
    (MixupRgb, {}, (1, 16, 16)), (InstahideRgb, {}, (1, 16, 16)),
    # frequency defenses: ×8-upsampled BDCT maps at the image side by default (§0.1 v2) ...
    (MixupFd, {}, (64, 16, 16)), (InstahideFd, {}, (64, 16, 16)), (MaskingMixup, {}, (63, 16, 16)),
    # ... and the 8×8-block maps when upsampling is off
    (MixupFd, {"upsample": False}, (64, 2, 2)), (InstahideFd, {"upsample": False}, (64, 2, 2)),
    (MaskingMixup, {"upsample": False}, (63, 2, 2)),
])
def test_defense_shapes_training_step_and_views(cls, opts, shape):
    d = cls(k=3, cap=0.55, **opts)
    x, y = _faces().images[:8], _faces().labels[:8]
    assert d.encode(x, G()).shape == (8, *shape)
    assert d.test_encode(x, G()).shape == (8, *shape)
    model = Recognizer(TINY, shape, 4)
    loss = d.train_step(model, x, y, G())
    loss.backward()
    assert torch.isfinite(loss) and d.k_counts[3] == 1
    v = d.view(d.encode(x, G()))
    assert v.shape == (8, 1, 16, 16) and v.min() >= 0 and v.max() <= 1


def test_test_time_encoding_is_unmixed():
    x = _faces().images[:8]
    assert torch.allclose(MixupFd().test_encode(x, G()), bdct_image(x, upsample=True))
    assert torch.allclose(MixupFd(upsample=False).test_encode(x, G()), bdct_image(x))
    assert torch.allclose(InstahideRgb().test_encode(x, G()), x * 2 - 1)  # no signs either


def test_leak_targets_are_slot0_originals_and_inputs_their_mixtures():
    faces = _faces(n_id=6, per=5)
    data = FaceData("toy", faces, faces, faces)
    d = MixupFd(k=3, cap=0.6)
    d.name = "mixup_fd"
    leak = d.leak(data, Context(seed=0, progress=False, recognizer=TINY))
    members, co = leak.oracle["members"], leak.oracle["coefficients"]
    assert torch.equal(members[:, 0], torch.arange(len(faces)))
    assert torch.equal(leak.targets, faces.images) and torch.equal(leak.train_targets, faces.images)
    z = bdct_image(faces.images, upsample=True)  # the default (§0.1 v2)
    assert leak.inputs.shape == z.shape == (len(faces), 64, 16, 16)
    expect = (co[:, :, None, None, None] * z[members]).sum(1)
    assert torch.allclose(leak.inputs, expect, atol=1e-4)
    assert not torch.allclose(leak.inputs, z, atol=1e-3)  # really mixed
    assert leak.views.shape == faces.images.shape
    seen = leak.for_attacker()
    assert not seen.oracle and seen.targets is None  # the true membership never reaches attacks
    assert "train_members" in seen.extra  # the attacker's own simulation does


def test_training_records_k_share_with_string_keys():
    faces = _faces()
    data = FaceData("toy", faces, faces, faces)
    d = MaskingMixup(k=4)
    model = d.train_recognizer(data, Context(seed=0, progress=False, recognizer=TINY))
    assert d.record["k_share"] == {"4": 1.0} and d.record["k_counts"] == {"4": 3}
    assert model.in_shape == (63, 16, 16)  # ×8-upsampled maps at the image side


@pytest.mark.parametrize("cls,bad,match", [
    (MaskingMixup, {"k": 1}, "2..10"), (MaskingMixup, {"k": 11}, "2..10"),
    (MaskingMixup, {"k": 2, "cap": 0.5}, r"\(1/k, 1\]"), (MaskingMixup, {"k": 4, "cap": 0.25}, "cap"),
    (MixupFd, {"cap": 1.2}, "cap"), (MixupRgb, {"leak_rounds": 0}, "leak_rounds"),
    (MaskingMixup, {"perm_mode": "nope"}, "perm_mode"), (InstahideFd, {"kk": 2}, "no option"),
])
def test_invalid_options_are_config_errors(cls, bad, match):
    with pytest.raises(ConfigError, match=match):
        cls(**bad)


def test_secure_rng_option_mixes_differently_every_time():
    x = _faces().images[:8]
    d = MixupRgb(secure_rng=True)
    assert not torch.equal(d.encode(x, G()), d.encode(x, G()))
    assert torch.equal(MixupRgb().encode(x, G()), MixupRgb().encode(x, G()))
