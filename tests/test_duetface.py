"""DuetFace (ALGORITHMS §5): channel split, feature masking, frozen client, threat model."""
import math

import pytest
import torch

from bench.config import DataConfig, RecognizerConfig
from bench.core.context import Context
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData, FaceSet
from bench.data.orl import load_orl
from bench.plugins import load_plugins
from bench.recognition import embed
from defenses.bdct import bdct, to_ycbcr
from defenses.duetface import CLIENT_FREQS, FeatureMasking, channel_split, ycbcr_bdct
from defenses.mobilefacenet import MobileFaceNet

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=2, batch_size=16, lr=0.05,
                        milestones=(), warmup_epochs=0, dropout=0.0, arcface_s=16.0)


def test_channel_split_partitions_all_192_channels():
    server, client = channel_split(3)
    assert len(client) == 30 and len(server) == 162
    assert sorted(server + client) == list(range(192))
    assert client[:10] == list(CLIENT_FREQS) and client[10] == 64  # colour-major, 64·c + 8u + v
    server1, client1 = channel_split(1)
    assert len(client1) == 10 and sorted(server1 + client1) == list(range(64))


def test_ycbcr_bdct_is_per_colour_bdct():
    x = torch.rand(2, 3, 16, 16)
    c = ycbcr_bdct(x)
    assert c.shape == (2, 192, 2, 2)
    torch.testing.assert_close(c[:, 64:128], bdct(to_ycbcr(x)[:, 1:2] - 0.5))
    gray = torch.rand(2, 1, 16, 16)
    assert ycbcr_bdct(gray).shape == (2, 192, 2, 2)  # replicated to 3 colours
    assert ycbcr_bdct(gray, gray_mode="luma").shape == (2, 64, 2, 2)
    # replicated gray: chroma is constant, so its AC coefficients vanish
    assert ycbcr_bdct(gray)[:, 65:128].abs().max() < 1e-5


def test_feature_masking_follows_the_recipe():
    torch.manual_seed(0)
    block = FeatureMasking(client_channels=6, server_channels=4)
    f, a = torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(block(f, a), torch.sigmoid(f))  # w starts at 0
    with torch.no_grad():
        block.weight.fill_(0.5)
    out = block(f, a)
    e = block.proj(torch.nn.functional.interpolate(a, size=(8, 8), mode="bilinear", align_corners=False))
    m = e.mean(1, keepdim=True)
    lo, hi = m.amin((1, 2, 3), keepdim=True), m.amax((1, 2, 3), keepdim=True)
    mask = (m - lo) / (hi - lo)
    torch.testing.assert_close(out, torch.sigmoid(f) * mask * 0.5 + torch.sigmoid(f))
    out.sum().backward()
    assert block.proj.weight.grad is not None and block.proj.weight.grad.abs().sum() > 0  # trained


def test_mobilefacenet_exposes_four_stages():
    net = MobileFaceNet(30, 8, embedding_dim=16, width=8).eval()
    acts = net.stages(torch.randn(2, 30, 8, 8))
    assert [a.shape[1] for a in acts] == list(net.stage_channels)
    assert [a.shape[-1] for a in acts] == [8, 4, 2, 2]
    assert net(torch.randn(2, 30, 8, 8)).shape == (2, 16)


@pytest.fixture(scope="module")
def trained():
    # 16 px faces: the default ×8-upsampled BDCT gives 16×16 maps (the old 32 px gave 4×4 blocks)
    data = load_orl(DataConfig(image_size=16, limit_identities=12, num_pairs=60), 0)
    ctx = Context(seed=0, progress=False, recognizer=TINY)
    d = DEFENSES.create("duetface", client_width=8, client_epochs=2)
    d.fit(data, ctx)
    return data, ctx, d, d.train_recognizer(data, ctx)


def test_recognizer_takes_test_encode_and_keeps_the_client_frozen(trained):
    data, ctx, d, model = trained
    r = d.test_encode(data.test.images[:4], torch.Generator())
    assert r.shape == (4, 192, 16, 16)  # ×8-upsampled maps at the image side (§0.1 v2)
    assert all(not p.requires_grad for p in model.client.parameters())
    frozen = {k: v.clone() for k, v in model.client.state_dict().items()}
    model.train()
    assert not model.client.training  # frozen client stays in eval mode
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model.loss(d.test_encode(data.train.images[:8], torch.Generator()), torch.arange(8) % 6)
    loss.backward()
    opt.step()
    for k, v in model.client.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    emb = embed(model.eval(), data.test.images[:4], d.test_encode)
    assert emb.shape == (4, TINY.embedding_dim) and torch.isfinite(emb).all()
    assert "client_accuracy" in d.record


def test_leak_gives_the_server_channels_only(trained):
    data, ctx, d, _ = trained
    leak = d.leak(data, ctx)
    assert leak.inputs.shape[1] == 162 and leak.train_inputs.shape[1] == 162
    assert torch.equal(leak.train_targets, data.aux.images)
    full = d.test_encode(data.test.images, torch.Generator())
    torch.testing.assert_close(leak.inputs, full[:, :162])
    assert leak.views is not None and leak.views.shape == data.test.images.shape
    assert 0 <= leak.views.min() and leak.views.max() <= 1


def _server_receives(model, r):
    """The client activations each FeatureMasking block of the server is handed for input ``r``
    (recorded by forward hooks while the deployed recognizer runs)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args[1].clone()))
             for i, m in enumerate(model.server.masks)]
    try:
        with torch.no_grad():
            model.eval()(r)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(seen))]


def test_leak_carries_the_client_activations_the_server_receives(trained):
    """ALGORITHMS §5 threat model: the server sees the server channels *and* the client
    activations; the leak must hold exactly what the server's masking blocks are handed."""
    data, ctx, d, model = trained
    leak = d.leak(data, ctx)
    acts = leak.extra["client_activations"]
    received = _server_receives(model, d.test_encode(data.test.images, torch.Generator()))
    assert len(acts) == len(received) == 4
    for a, r in zip(acts, received):
        assert a.shape[0] == len(data.test) and a.shape == r.shape
        torch.testing.assert_close(a, r)
    train_acts = leak.extra["train_client_activations"]
    received = _server_receives(model, d.test_encode(data.aux.images, torch.Generator()))
    for a, r in zip(train_acts, received):
        torch.testing.assert_close(a, r)
    # the activations depend on the face (not a constant): they carry identity information
    assert all(a.flatten(1).std(0).mean() > 0 for a in acts)
    # the attacker's copy keeps them (what the server holds is stolen in either knowledge setting)
    for knowledge in ("white_box", "black_box"):
        kept = leak.for_attacker(knowledge).extra["client_activations"]
        assert all(torch.equal(a, b) for a, b in zip(kept, acts))


def test_leak_before_the_client_is_trained_says_the_activations_are_missing():
    _, data = _sinusoids()
    d = DEFENSES.create("duetface")
    d.fit(data, Context(seed=0, progress=False, recognizer=TINY))
    with pytest.warns(UserWarning, match="client"):
        leak = d.leak(data, Context(seed=0, progress=False, recognizer=TINY))
    assert leak.extra["client_activations"] is None and "train_recognizer" in leak.extra["client_activations_missing"]
    with pytest.raises(TrainingError, match="client"):
        d.client_activations(data.test.images, torch.Generator())


def _sinusoids(side=16, n=6):
    """Smooth gray faces: separable sinusoids of period 8 px at different phases."""
    i = torch.arange(side) + 0.5
    t = torch.stack([torch.sin(2 * math.pi * i / 8 + 0.5 * k) for k in range(n)])
    x = (0.5 + 0.4 * t[:, :, None] * t[:, None, :])[:, None]
    faces = FaceSet(x, torch.arange(n) // 2)
    return x, FaceData("toy", faces, faces, faces)


def _pearson(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize("upsample,side", [(None, 16), (False, 2)])  # None: the default (upsampled)
def test_view_of_server_maps_is_an_image_at_the_image_side(upsample, side):
    x, data = _sinusoids()
    opts = {} if upsample is None else {"upsample": upsample}
    ctx = Context(seed=0, progress=False, recognizer=TINY)
    d = DEFENSES.create("duetface", **opts)
    d.fit(data, ctx)  # channel statistics only: nothing is trained
    r = d.server_channels(x, torch.Generator())
    assert r.shape == (6, 162, side, side)
    v = d.view(r)
    assert v is not None and v.shape == x.shape
    assert torch.allclose(v.amin(dim=(1, 2, 3)), torch.zeros(6))
    assert torch.allclose(v.amax(dim=(1, 2, 3)), torch.ones(6))
    # With only Y's DC on the client, the view is the inverse BDCT of the image's AC part: for the
    # upsampled maps, shrunk back with antialiasing, a sinusoid's high-pass has its own shape (a
    # nearest shrink would sample one end of each block's ramp: the gradient, uncorrelated)
    dc_only = DEFENSES.create("duetface", client_freqs=[0], **opts)
    dc_only.fit(data, ctx)
    v = dc_only.view(dc_only.server_channels(x, torch.Generator()))
    assert v.shape == x.shape and 0 <= v.min() and v.max() <= 1
    assert torch.all(_pearson(v, x) > 0.9)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="gray_mode"):
        DEFENSES.create("duetface", gray_mode="sepia")
    with pytest.raises(ConfigError, match="client_freqs"):
        DEFENSES.create("duetface", client_freqs=[0, 64])
