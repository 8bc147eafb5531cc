import pytest
import torch
import torch.nn.functional as F

from bench.config import RecognizerConfig
from bench.context import Context
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


def test_frequency_maps_get_a_stride_one_stem():
    net = build_backbone(TINY, 63, 8)
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, torch.nn.Identity)


def _toy_faces(n_id=4, per=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(n_id, 1, 16, 16, generator=g)
    imgs = protos.repeat_interleave(per, 0) + 0.05 * torch.randn(n_id * per, 1, 16, 16, generator=g)
    return FaceSet(imgs.clamp(0, 1), torch.arange(n_id).repeat_interleave(per))


def test_training_learns_separable_identities_and_is_reproducible():
    torch.set_num_threads(2)
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
