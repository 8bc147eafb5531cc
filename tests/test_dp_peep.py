"""DP by eigenface perturbation (PEEP, ALGORITHMS §4.1)."""
import pytest
import torch
import torch.nn.functional as F

from bench.core.errors import ConfigError, TrainingError
from bench.data.facedata import FaceData, FaceSet
from defenses.bdct import bdct
from defenses.dp_peep import DpPeep, laplace

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=12, side=16):
    faces = FaceSet(torch.rand(n, 1, side, side, generator=G()), torch.arange(n) // 3)
    return FaceData("toy", faces, faces, faces)


def _fitted(**opts):
    d, data = DpPeep(**opts), _data()
    d.fit(data)
    return d, data


def test_components_are_capped_by_the_training_set():
    d, _ = _fitted()
    assert d.basis.shape == (256, 12) and d.record["components"] == 12


def test_noise_scale_is_delta_over_epsilon_and_grows_as_epsilon_falls():
    scales = [_fitted(epsilon=e)[0].noise_scale for e in (10.0, 3.0, 1.0, 0.1)]
    assert scales == sorted(scales)
    d, data = _fitted(epsilon=3.0)
    assert d.noise_scale == pytest.approx(d.record["delta"] / 3.0)
    x = data.train.images
    spread = []
    for eps in (10.0, 1.0):
        d, _ = _fitted(epsilon=eps, frequency=False)
        spread.append(float((d.perturb(x, G(1)) - d.perturb(x, G(2))).std()))
    assert spread[1] > 3 * spread[0]


def test_without_noise_the_eigenfaces_reconstruct_the_training_faces():
    d, data = _fitted(epsilon=1e12, frequency=False)
    x = data.train.images
    assert torch.allclose(d.perturb(x, G()), x, atol=1e-3)  # K = N spans the centred set


@pytest.mark.parametrize("upsample,side", [(None, 16), (True, 16), (False, 2)])  # None: the default
def test_encoding_is_the_bdct_of_the_noisy_face_and_uses_the_passed_generator(upsample, side):
    d, data = _fitted(**({} if upsample is None else {"upsample": upsample}))
    x = data.train.images[:4]
    state = torch.random.get_rng_state()
    r = d.encode(x, G(7))
    assert torch.equal(torch.random.get_rng_state(), state)  # no global randomness
    assert torch.allclose(r, bdct(d.perturb(x, G(7)), upsample=upsample is not False), atol=1e-5)
    assert torch.equal(r, d.encode(x, G(7))) and not torch.equal(r, d.encode(x, G(8)))
    assert r.shape == (4, 64, side, side)
    v = d.view(r)
    assert v.shape == (4, 1, 16, 16) and v.min() >= 0 and v.max() <= 1
    # the view inverts the BDCT: the noisy face, min-maxed; maps of the ×8 image come back at the
    # image side through an antialiased shrink of that ×8 image
    face = d.perturb(x, G(7))
    if side == 16:
        face = F.interpolate(F.interpolate(face, scale_factor=8, mode="bilinear", align_corners=False),
                             size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = face.amin(dim=(1, 2, 3), keepdim=True), face.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(v, (face - lo) / (hi - lo), atol=1e-4, rtol=0)


def test_per_component_sensitivity_gives_one_scale_per_eigenface():
    d, _ = _fitted(sensitivity="per_component")
    assert d.noise_scale.shape == (12,)
    assert d.noise_scale.max() == pytest.approx(d.record["noise_scale"])


def test_laplace_sampler_has_the_right_scale():
    s = laplace((200_000,), 2.0, G())
    assert abs(float(s.mean())) < 0.03
    assert float(s.abs().mean()) == pytest.approx(2.0, rel=0.02)  # E|L| = b


def test_encoding_before_fit_is_refused():
    with pytest.raises(TrainingError, match="fit"):
        DpPeep().encode(torch.rand(2, 1, 16, 16), G())


@pytest.mark.parametrize("bad,match", [({"epsilon": 0}, "epsilon"), ({"epsilon": -1.0}, "epsilon"),
                                       ({"components": 0}, "components"),
                                       ({"sensitivity": "local"}, "sensitivity")])
def test_invalid_options_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        DpPeep(**bad)
