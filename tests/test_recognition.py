import pytest
import torch
import torch.nn.functional as F

from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.data.facedata import FaceSet
from bench.recognition import (Recognizer, build_backbone, embed, mixed_arcface_loss,
                               train_recognizer)

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=12, batch_size=16,
                        lr=0.05, milestones=(), arcface_s=16.0, arcface_m=0.3, dropout=0.0)


def plain_arcface(cos, y, s, m):
    t = cos.gather(1, y[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    logits = cos.scatter(1, y[:, None], torch.cos(torch.acos(t) + m))
    return F.cross_entropy(s * logits, y)


def test_mixed_label_arcface_with_k1_is_plain_arcface():
    cos = torch.rand(9, 6) * 2 - 1
    y = torch.randint(6, (9,))
    assert torch.allclose(mixed_arcface_loss(cos, y[None], torch.ones(9, 1), 64, 0.5),
                          plain_arcface(cos, y, 64, 0.5), atol=1e-5)


def test_mixed_label_arcface_with_two_equal_slots_is_symmetric():
    cos = torch.rand(4, 5) * 2 - 1
    a, b = torch.randint(5, (4,)), torch.randint(5, (4,))
    co = torch.full((4, 2), 0.5)
    assert torch.allclose(mixed_arcface_loss(cos, torch.stack([a, b]), co, 32, 0.5),
                          mixed_arcface_loss(cos, torch.stack([b, a]), co, 32, 0.5), atol=1e-5)


@pytest.mark.parametrize("shape", [(63, 8, 8), (1, 64, 64), (3, 112, 112), (64, 16, 16)])
def test_stem_adapts_to_any_representation(shape):
    model = Recognizer(TINY, shape, num_classes=5).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 16)


def _stem(net, x):
    return net.maxpool(net.act1(net.bn1(net.conv1(x))))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("backbone", ["resnet18", "ir_18"])
def test_frequency_map_stem_keeps_the_spatial_size_of_an_upsampled_map(backbone):
    """§0.1/§0.2: a 63-channel ×8-upsampled BDCT map of a 32 px face is 63×32×32; its stem is a
    3×3 stride-1 conv without max-pool, so the stem's output keeps 32×32 (a 7×7 stride-2 stem
    with max-pool would give 8×8). An image input keeps timm's downsampling stem."""
    cfg = RecognizerConfig(backbone=backbone, widths=(8, 8, 16, 16), embedding_dim=16)
    net = build_backbone(cfg, 63, 32).eval()
    x = torch.rand(2, 63, 32, 32)
    with torch.no_grad():
        assert _stem(net, x).shape[-2:] == (32, 32)
    conv = net.conv1 if isinstance(net.conv1, torch.nn.Conv2d) else net.conv1[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.in_channels == 63
    if backbone == "resnet18":  # images keep timm's 7×7 stride-2 stem and its max-pool
        image_net = build_backbone(cfg, 1, 32).eval()
        with torch.no_grad():
            assert _stem(image_net, torch.rand(2, 1, 32, 32)).shape[-2:] == (8, 8)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_training_step_on_frequency_maps_decreases_the_loss():
    """A 63×16×16 map recognizer (the frequency stem) learns: a few SGD steps on a separable toy
    set (one random prototype map per identity plus noise) lower the ArcFace loss clearly."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(4, 63, 16, 16, generator=g)
    y = torch.arange(4).repeat_interleave(4)
    x = protos[y] + 0.3 * torch.randn(16, 63, 16, 16, generator=g)
    model = Recognizer(TINY, (63, 16, 16), num_classes=4).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():  # same mode as the steps (batch statistics): only the weights moved
        final = model.loss(x, y).item()
    assert final < 0.5 * losses[0], (losses, final)


def _toy_faces(n_id=4, per=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(n_id, 1, 16, 16, generator=g)
    imgs = protos.repeat_interleave(per, 0) + 0.05 * torch.randn(n_id * per, 1, 16, 16, generator=g)
    return FaceSet(imgs.clamp(0, 1), torch.arange(n_id).repeat_interleave(per))


@pytest.mark.usefixtures("one_torch_thread")  # was set_num_threads(2), never restored
def test_training_learns_separable_identities_and_is_reproducible():
    faces = _toy_faces()
    ctx = Context(seed=0, progress=False, recognizer=TINY)
    model = train_recognizer(faces, ctx)
    emb = embed(model, faces.images)
    sim = emb @ emb.T
    same = faces.labels[:, None] == faces.labels[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.3
    again = embed(train_recognizer(faces, Context(seed=0, progress=False, recognizer=TINY)), faces.images)
    assert torch.allclose(emb, again, atol=1e-5)


def test_embeddings_are_unit_length_and_flip_averaged():
    model = Recognizer(TINY, (1, 16, 16), 3).eval()
    x = torch.rand(5, 1, 16, 16)
    e = embed(model, x)
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(e, embed(model, x.flip(-1)), atol=1e-5)  # symmetric under flips
