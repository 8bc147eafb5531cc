"""Template inversion (ALGORITHMS §14): the NbNet-like decoder, learning from informative
templates, the knowledge rules for templates, and SRRA_other (reconstructions against *other*
photos of the person)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench import pipeline as pl
from bench.backbones.decoders import build_template_decoder
from bench.core.context import Context
from bench.core.contract import Leak
from bench.core.errors import TrainingError
from bench.core.registry import ATTACKS
from bench.plugins import load_plugins
from metrics.identity import srra_other

load_plugins()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dim,out,nb", [(128, (1, 32, 32), 2), (512, (3, 112, 112), 0),
                                        (16, (1, 24, 40), 1)])
def test_template_decoder_shapes(dim: int, out: tuple[int, int, int], nb: int) -> None:
    net = build_template_decoder(dim, out, width=4, nb_layers=nb)
    y = net(torch.randn(3, dim))
    assert y.shape == (3, *out) and y.min() >= 0 and y.max() <= 1


def smooth(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear",
                         align_corners=False)


def template_leak(informative: bool) -> Leak:
    x = smooth(80, 0)
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(256, 32, generator=g)
    t = F.normalize(x.flatten(1) @ proj) if informative else F.normalize(torch.randn(80, 32, generator=g))
    return Leak(x[:64] + 100, x[:64], x[64:] + 100, targets=x[64:],  # inputs unused: templates are
                extra={"train_templates": t[:64], "templates": t[64:]})  # what it reads


def test_decoder_learns_from_informative_templates_not_from_noise() -> None:
    opts = dict(epochs=25, batch_size=16, width=4, lr=3e-3)

    def l1(informative: bool) -> float:
        leak = template_leak(informative)
        rec = ATTACKS.create("template_inversion", **opts).run(leak.for_attacker(), Context(progress=False))
        assert rec.images.shape == (16, 1, 16, 16) and rec.info["template_dim"] == 32
        return F.l1_loss(rec.images, leak.targets).item()

    learned, noise = l1(True), l1(False)
    assert learned < 0.7 * noise, (learned, noise)


def test_missing_or_mismatched_templates_are_named() -> None:
    leak = template_leak(True)
    del leak.extra["train_templates"]
    with pytest.raises(TrainingError, match="train_templates"):
        ATTACKS.create("template_inversion", epochs=1).run(leak, Context(progress=False))
    leak = template_leak(True)
    leak.extra["train_templates"] = leak.extra["train_templates"][:10]
    with pytest.raises(TrainingError, match="one train template per public face"):
        ATTACKS.create("template_inversion", epochs=1).run(leak, Context(progress=False))


def test_stolen_templates_stay_the_deployments_and_train_templates_follow_knowledge() -> None:
    x = torch.zeros(4, 1, 8, 8)
    deployed, own, stolen = torch.ones(4, 8), torch.full((4, 8), 2.0), torch.full((2, 8), 3.0)
    leak = Leak(x, x, x[:2], extra={"templates": stolen, "train_templates": deployed},
                black_box={"train_inputs": x, "train_targets": x,
                           "extra": {"train_templates": own}})
    white, black = leak.for_attacker("white_box"), leak.for_attacker("black_box")
    assert torch.equal(white.extra["train_templates"], deployed)
    assert torch.equal(black.extra["train_templates"], own)  # F2 queried on its own encodings
    assert torch.equal(black.extra["templates"], stolen)  # the stolen database is the deployment's


def test_templates_only_attacks_read_the_plain_leak() -> None:
    assert not pl.structural(ATTACKS.get("template_inversion").factory)
    assert pl.structural(ATTACKS.get("carlini").factory)


def test_pipeline_templates_are_F2_on_the_test_time_encoding() -> None:
    from bench.config import RecognizerConfig
    from bench.recognition import Recognizer, embed
    from defenses.none import NoDefense

    cfg = RecognizerConfig(widths=(4, 4, 8, 8), embedding_dim=8)
    model = Recognizer(cfg, (1, 16, 16), 3).eval()
    faces = smooth(5, 2)
    t = pl.templates(model, NoDefense(), faces, torch.Generator())
    assert t.shape == (5, 8) and torch.allclose(t, embed(model, faces))
    assert torch.allclose(t.norm(dim=1), torch.ones(5))
    assert pl.templates(model, NoDefense(), None, torch.Generator()) is None


def test_srra_other_accepts_only_against_other_photos_of_the_person() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    centres = torch.eye(3)
    orig = centres[y] + 0.01 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    same = srra_other(orig, orig, y, 0.9)
    assert same[:5].tolist() == [1.0] * 5 and math.isnan(same[5])  # person 2: no other photo
    wrong = srra_other(centres[(y + 1) % 3], orig, y, 0.9)  # reconstructions of someone else
    assert wrong[:5].tolist() == [0.0] * 5


def test_srra_other_in_a_cell_record() -> None:
    e = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    per: dict[str, list] = {}
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    out = pl.srra_other_scores(e, e, y, {"tau": 0.99, "tau_far": 0.999}, per)
    assert set(out) == {"SRRA_other", "SRRA_other_far1e-3"} and len(per["SRRA_other"]) == 6
    out = pl.srra_other_scores(e, e, torch.arange(6), {"tau": 0.5, "tau_far": 0.6}, {})
    assert math.isnan(out["SRRA_other"])  # nobody has another photo
    assert math.isnan(pl.srra_other_scores(e, e, None, {"tau": 0.5, "tau_far": 0.6}, {})["SRRA_other"])
