"""The identity-linkage attack (ALGORITHMS §14): it links an unprotected representation (the
identity map) far above chance and pure noise at chance; its scores; what the pipeline hands it
(the public faces' labels, never the deployment's secrets under black-box knowledge)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attacks.linkage import LinkageAttack, linkage_scores
from bench import pipeline as pl
from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.core.contract import Leak, Reconstruction
from bench.core.errors import TrainingError
from bench.core.registry import ATTACKS
from bench.plugins import load_plugins
from defenses.ppfr_fd import PpfrFd
from metrics.identity import identification_ranks, label_pairs
from tests.test_knowledge import holds_key, stub_pipeline

load_plugins()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a tiny recognizer recipe of the preset's family (resnet18) for 16 px synthetic faces
TINY = RecognizerConfig(backbone="resnet18", widths=(8, 8, 16, 16), embedding_dim=32, dropout=0.0,
                        arcface_s=16.0, arcface_m=0.3, epochs=15, batch_size=32, lr=0.05,
                        milestones=(10,), warmup_epochs=0, weight_decay=5e-4)


def identities(n_ids: int, per: int, seed: int, noise: float = 0.03, side: int = 16):
    """Synthetic people: a smooth random prototype each, photos = prototype + small noise."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.rand(n_ids, 1, 4, 4, generator=g)
    x = proto.repeat_interleave(per, 0) + noise * torch.randn(n_ids * per, 1, 4, 4, generator=g)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.arange(n_ids).repeat_interleave(per)


def run_linkage(protect) -> dict:  # noqa: ANN001
    xa, ya = identities(12, 8, 1)
    xt, yt = identities(8, 6, 2)
    leak = Leak(protect(xa), xa, protect(xt), targets=xt, labels=yt, train_labels=ya)
    attack = ATTACKS.create("linkage", translator_width=8)
    rec = attack.run(leak.for_attacker(), Context(seed=0, progress=False, recognizer=TINY))
    assert rec.images is None and rec.info["public_identities"] == 12
    return attack.diagnose(leak, rec)


def test_identity_map_is_linked_far_above_chance_and_noise_at_chance() -> None:
    clear = run_linkage(lambda x: x)
    chance = clear["link_chance"]
    assert chance == pytest.approx(1 / 8)
    # measured 0.60 (rank-1) / 0.97 (verification) on this data; chance is 0.125 / 0.5
    assert clear["link_rank1"] >= 0.45 and clear["link_rank5"] >= 0.9
    assert clear["link_verif_acc"] >= 0.85
    g = torch.Generator().manual_seed(5)
    noise = run_linkage(lambda x: torch.randn(x.shape, generator=g))
    assert noise["link_rank1"] <= chance + 0.2
    assert noise["link_verif_acc"] <= 0.65
    assert clear["link_rank1"] > noise["link_rank1"] + 0.25


def test_scores_of_perfect_and_random_embeddings() -> None:
    y = torch.arange(10).repeat_interleave(5)
    centres = F.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)))
    perfect = centres[y] + 0.01 * torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    s = linkage_scores(perfect, perfect, y, max_pairs=400)
    assert s["link_rank1"] == 1.0 and s["link_verif_acc"] == 1.0 and s["link_tar@far1e-3"] == 1.0
    assert s["link_identities"] == 10 and s["link_chance"] == 0.1 and s["link_chance5"] == 0.5
    assert len(s["per_probe_rank"]) == 50 and len(s["per_pair_correct"]) == s["link_pairs"]
    rnd = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    s = linkage_scores(rnd, torch.randn(50, 16, generator=torch.Generator().manual_seed(3)), y, 400)
    assert s["link_rank1"] <= 0.35 and s["link_verif_acc"] <= 0.7


def test_gallery_excludes_the_probes_own_photo_and_single_photo_people() -> None:
    # every person's probe equals its own photo only: without its photo the gallery has no match
    y = torch.tensor([0, 0, 1, 1, 2])
    e = torch.eye(5)
    ranks, n = identification_ranks(e, y, e, y, exclude=torch.arange(5))
    assert n == 3 and ranks[4] == 0  # person 2 has one photo: not rankable
    assert (ranks[:4] == 3).all()  # all scores tie at 0: ties are not wins
    ranks, _ = identification_ranks(e, y, e, y)  # with its own photo every probe is first
    assert (ranks == 1).all()


def test_label_pairs_are_balanced_and_capped() -> None:
    y = torch.arange(6).repeat_interleave(4)
    pairs, same = label_pairs(y, 20, torch.Generator().manual_seed(0))
    assert len(pairs) == 20 and int(same.sum()) == 10
    assert bool((y[pairs[:, 0]] == y[pairs[:, 1]]).eq(same).all())
    assert bool((pairs[:, 0] < pairs[:, 1]).all())


def test_without_public_labels_it_says_what_is_missing() -> None:
    x, _ = identities(3, 2, 0)
    with pytest.raises(TrainingError, match="train_labels"):
        LinkageAttack().run(Leak(x, x, x).for_attacker(), Context(progress=False, recognizer=TINY))


def test_for_attacker_keeps_public_labels_and_follows_black_box_pairs() -> None:
    x = torch.zeros(4, 1, 8, 8)
    bb = {"train_inputs": x + 1, "train_targets": x, "train_labels": torch.tensor([9, 9, 8, 8])}
    leak = Leak(x, x, x, targets=x, labels=torch.arange(4), train_labels=torch.tensor([0, 0, 1, 1]),
                black_box=bb)
    assert leak.for_attacker("white_box").train_labels.tolist() == [0, 0, 1, 1]
    black = leak.for_attacker("black_box")
    assert black.train_labels.tolist() == [9, 9, 8, 8] and black.labels is None


def test_public_labels_follow_repeats_and_subsets_of_the_aux_faces() -> None:
    from types import SimpleNamespace

    x, y = identities(3, 2, 0)
    aux = SimpleNamespace(images=x, labels=y + 10)
    assert pl.public_labels(x, aux).tolist() == (y + 10).tolist()
    assert pl.public_labels(x.repeat(2, 1, 1, 1), aux).tolist() == (y + 10).repeat(2).tolist()
    assert pl.public_labels(x[[4, 1]], aux).tolist() == [12, 10]
    assert pl.public_labels(x + 0.5, aux) is None  # not the attacker's faces: no labels invented


def test_black_box_linkage_never_receives_the_deployments_secrets() -> None:
    d = PpfrFd(perm_mode="fixed_key")
    key = d.masker._key_perms
    p = stub_pipeline(d)
    p.tensorboard = None  # an attribute the stub may predate
    p.data(0).aux.labels = torch.tensor([0, 0, 1, 1, 2, 2])
    seen: list[Leak] = []

    class Spy(LinkageAttack):
        """Linkage that records what the pipeline hands it."""

        def run(self, leak: Leak, ctx: Context) -> Reconstruction:
            seen.append(leak)
            return Reconstruction(None, info={})

    real = pl.ATTACKS
    pl.ATTACKS = type("R", (), {"create": staticmethod(lambda name, **o: Spy(knowledge="black_box")),
                                "get": real.get})
    try:
        out = p.attack(pl.Cell(0, "ppfr_fd", "linkage"))
    finally:
        pl.ATTACKS = real
    assert out["status"] == "ok"
    got = seen[0]
    assert got.secrets is None and not holds_key(got, key)
    assert got.targets is None and got.labels is None  # test identities: ground truth
    assert got.extra["pairs"] == "attacker_secrets"
    assert got.train_labels.tolist() == [0, 0, 1, 1, 2, 2]  # the public faces' identities


def test_a_linkage_cell_records_its_scores_chance_and_items() -> None:
    x, y = identities(4, 3, 0)
    leak = Leak(x, x, x, targets=x, labels=y)
    info = {"link_verif_acc": 0.8, "link_tar@far1e-3": 0.2, "link_rank1": 0.5, "link_rank5": 1.0,
            "link_chance": 0.25, "link_chance5": 1.0, "per_probe_rank": [1, 2, 0] * 4,
            "per_pair_correct": [1, 0, 1]}
    out = pl.measure_linkage(leak, Reconstruction(None, info), "dssim")
    assert out["privacy"]["link_rank1"] == 0.5 and out["privacy"]["link_chance"] == 0.25
    assert out["per_target"]["link_rank1"] == [1, 0] * 4  # the unrankable probes left out
    assert out["per_target"]["link_verif_acc"] == [1, 0, 1]
    assert "SSIM" not in out["privacy"] and out["n_test"] == 12
    assert math.isnan(pl.measure_linkage(leak, Reconstruction(None, {}), "d")["privacy"]["link_rank1"])
