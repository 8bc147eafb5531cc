"""XNN / XNN-d on a split ViT and the attacks on them (ALGORITHMS §9). Tiny ViT on ORL 32 px so
the file runs in well under a minute on one core; every test compares against a contrast that a
real regression would collapse (wrong key, per-batch keys, the matrix on, random noise)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from attacks.xnn_attacks import ExpectedAttack, ReorderAttack, recover_token_order, rekeyer
from bench.backbones.vit import ViTSplitConfig, grid_to_tokens, vit_split
from bench.config import DataConfig, RecognizerConfig
from bench.core.context import Context
from bench.core.registry import DEFENSES
from bench.data.orl import load_orl
from bench.plugins import load_plugins
from bench.recognition import build_seeded, verify
from defenses.xnn import (NoiseGenerator, adversarial_stage, draw_key, identity_ce, obfuscate,
                          unobfuscate)

load_plugins()

TINY_VIT = {"embed_dim": 32, "num_heads": 2, "client_depth": 1, "server_depth": 1,
            "patch_size": 4, "vit_epochs": 20, "tail_epochs": 12}
CFG = RecognizerConfig(embedding_dim=32, dropout=0.0, arcface_s=32.0, arcface_m=0.3, epochs=12,
                       batch_size=25, lr=0.05, weight_decay=5e-4, milestones=(), warmup_epochs=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces():
    return load_orl(DataConfig(image_size=32, num_pairs=100), 0)  # 20 / 10 / 10 identities


@pytest.fixture(scope="module")
def ctx():
    return Context(seed=0, progress=False, recognizer=CFG)


@pytest.fixture(scope="module")
def xnn(faces, ctx):
    torch.set_num_threads(1)
    d = DEFENSES.create("xnn", **TINY_VIT)
    d.fit(faces, ctx)
    return d


def twin(defense, **options):
    """The fitted defense with other XNN options (same client, key redrawn to match)."""
    t = copy.copy(defense)
    t.options = dataclasses.replace(defense.options, **options)
    cfg = defense.vit_cfg
    t.key = draw_key(cfg.tokens, cfg.embed_dim, torch.Generator().manual_seed(5),
                     t.options.permute, t.options.matrix)
    return t


# -- the obfuscation --------------------------------------------------------------------------
def test_obfuscation_inverts_with_its_key_and_not_with_another():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 64, 32, generator=g)
    key, other = draw_key(64, 32, g), draw_key(64, 32, g)
    hidden = obfuscate(h, key)
    assert not torch.allclose(hidden, h, atol=0.1)
    assert torch.allclose(unobfuscate(hidden, key), h, atol=1e-4)
    wrong = unobfuscate(hidden, other)
    assert (wrong - h).norm() / h.norm() > 0.5
    per_sample = draw_key(64, 32, g, batch=4)  # per-sample keys invert too
    assert torch.allclose(unobfuscate(obfuscate(h, per_sample), per_sample), h, atol=1e-4)
    # permutation only: the token multiset is kept, the order is not
    perm_only = draw_key(64, 32, g, matrix=False)
    p = obfuscate(h, perm_only)
    assert torch.equal(p.sort(1).values, h.sort(1).values) and not torch.equal(p, h)


def test_defense_unobfuscates_its_token_grid(xnn, faces):
    x = faces.test.images[:6]
    clean = xnn.features(x)
    hidden = xnn.test_encode(x, torch.Generator().manual_seed(0))
    assert hidden.shape == clean.shape == (6, *xnn.vit_cfg.token_shape)
    assert torch.allclose(xnn.unobfuscate(hidden), clean, atol=1e-3 * clean.abs().max())
    assert not torch.allclose(xnn.unobfuscate(hidden, twin(xnn).key), clean, atol=0.1 * clean.abs().max())


def test_vit_split_matches_the_whole_vit():
    cfg = ViTSplitConfig(img_size=32, patch_size=4, embed_dim=32, num_heads=2, client_depth=1,
                         server_depth=1)
    model = vit_split(cfg, 5, 16, 32.0, 0.5).eval()
    x = torch.rand(3, 1, 32, 32)
    grid = model.client(x)
    assert grid.shape == (3, 32, 8, 8) and grid_to_tokens(grid).shape == (3, 64, 32)
    # the tail is invariant to a token permutation (no class token, no position in the tail)
    key = draw_key(64, 32, torch.Generator().manual_seed(1), matrix=False)
    permuted = obfuscate(grid_to_tokens(grid), key)
    assert torch.allclose(model.server(permuted), model(x), atol=1e-4)


# -- utility ----------------------------------------------------------------------------------
def test_server_accuracy_on_obfuscated_features_matches_the_clean_split(xnn, faces, ctx):
    v = faces.verification[0]
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    clean = twin(xnn, permute=False, matrix=False)
    acc_clean = verify(clean.train_recognizer(faces, ctx), v, clean.test_encode, gen())["accuracy_mean"]
    acc_xnn = verify(xnn.train_recognizer(faces, ctx), v, xnn.test_encode, gen())["accuracy_mean"]
    # contrast: the tail trained under the deployment key, tested under another key
    model = xnn.train_recognizer(faces, ctx)
    wrong = twin(xnn)
    acc_wrong = verify(model, v, wrong.test_encode, gen())["accuracy_mean"]
    assert acc_clean > 0.6, acc_clean
    assert abs(acc_xnn - acc_clean) <= 0.1, (acc_xnn, acc_clean)
    assert acc_wrong < acc_xnn - 0.1, (acc_wrong, acc_xnn)


# -- attacks ----------------------------------------------------------------------------------
def expected_acc(defense, faces, ctx) -> dict:
    """The attacker's part on its own view of the leak, then the scoring with the full leak (as
    the pipeline calls ``run`` and ``diagnose``)."""
    leak = defense.leak(faces, ctx)
    leak.extra["mechanism"] = defense.mechanism()
    attack = ExpectedAttack(epochs=1, width=8, tail_epochs=15, tail_batch_size=25)
    view = leak.for_attacker("black_box")
    clean = view.extra["clean_train_inputs"]
    out = attack.recognition(view, view.extra["mechanism"], clean,
                             rekeyer(clean, view.extra["mechanism"]), ctx)
    assert "expected_recognition_acc" not in out  # nothing is scored by the attacker
    return {**out, **attack.diagnose(leak)}


def test_the_probe_labels_are_ground_truth_the_attacker_never_gets(xnn, faces, ctx):
    """Issue 20: who the probe's test faces are lives in ``Leak.oracle``; the attacker's view of
    the leak holds the probe's encodings and no test-identity label."""
    leak = xnn.leak(faces, ctx)
    probe = leak.extra["identification_probe"]
    assert set(probe) == {"gallery", "query"}
    truth = leak.oracle["identification_probe"]
    assert set(truth["gallery_labels"].tolist()) == set(faces.test.labels.tolist())
    assert len(truth["query_labels"]) == len(probe["query"])
    for knowledge in ("white_box", "black_box"):
        view = leak.for_attacker(knowledge)
        assert view.oracle == {} and view.labels is None and view.targets is None
        assert set(view.extra["identification_probe"]) == {"gallery", "query"}
    # without the oracle the attack still runs, and scoring says it cannot score
    attack = ExpectedAttack()
    assert attack.diagnose(leak.for_attacker("black_box"))["expected_recognition_acc"] is None


def test_expected_recognition_beats_chance_clean_and_falls_toward_it_under_xnn(xnn, faces, ctx):
    clean = expected_acc(twin(xnn, permute=False, matrix=False), faces, ctx)
    hidden = expected_acc(twin(xnn, key_mode="per_batch"), faces, ctx)
    chance = clean["chance_acc"]
    assert chance == pytest.approx(0.1)
    assert clean["expected_recognition_acc"] > chance + 0.3, clean
    assert hidden["expected_recognition_acc"] < clean["expected_recognition_acc"] - 0.25, (hidden, clean)
    assert hidden["expected_recognition_acc"] < chance + 0.25, hidden


def test_reordering_recovers_a_token_permutation_without_the_matrix(xnn, faces):
    from defenses.feature_split import split_aux

    _, public = split_aux(faces.aux, 0)
    pub = grid_to_tokens(xnn.features(public.images))
    template, scale = pub.mean(0), pub.std((0, 1))
    h = grid_to_tokens(xnn.features(faces.test.images[:10]))
    g = torch.Generator().manual_seed(2)
    perm = draw_key(64, h.shape[2], g, matrix=False)
    pos = recover_token_order(obfuscate(h, perm), template, scale=scale)
    acc = float((pos == perm["perm"]).float().mean())
    # far above chance (1/64) on the tiny test ViT; ~0.4 on the quick preset's ViT (measured)
    assert acc > 0.1, acc
    mixed = draw_key(64, h.shape[2], g)  # with the matrix the rows no longer match the template
    acc_mixed = float((recover_token_order(obfuscate(h, mixed), template, scale=scale)
                       == mixed["perm"]).float().mean())
    assert acc_mixed < 0.05 and acc > 3 * acc_mixed, (acc, acc_mixed)


def test_reorder_attack_is_scored_against_the_key_after_it_ran(xnn, faces, ctx):
    perm_only = twin(xnn, matrix=False)
    leak = perm_only.leak(faces, ctx)
    leak.secrets = perm_only.deployment_secrets()
    attack = ReorderAttack(epochs=1, width=8, columns=False, knowledge="black_box")
    rec = attack.run(leak.for_attacker("black_box"), ctx)  # the attacker never sees the key …
    assert rec.images.shape == faces.test.images.shape and "token_order_acc" not in rec.info
    score = attack.diagnose(leak, rec)["token_order_acc"]  # … the scoring does
    assert score > 3 / 64  # chance: 1/64
    # the score is the recovered order against the key: a wrong key scores near chance
    other = torch.randperm(64, generator=torch.Generator().manual_seed(9))
    wrong = dataclasses.replace(leak, secrets={"perm": other})
    assert attack.diagnose(wrong, rec)["token_order_acc"] < score / 2


def test_xnn_d_generator_raises_the_aux_tail_loss(xnn, faces, ctx):
    """G trained against a fixed tail (the clean teacher) drives its identity CE far above what
    random noise of the same element magnitudes does."""
    train = faces.train.relabelled()
    x = train.images[:100]
    y = train.labels[:100]
    h = xnn.features(x)
    std = float(h.std())
    gen_net = build_seeded(lambda: NoiseGenerator(xnn.vit_cfg.embed_dim, 8, 32, 0.5 * std),
                           torch.Generator().manual_seed(0))
    aux = copy.deepcopy(xnn.teacher)
    for p in aux.parameters():
        p.requires_grad_(True)
    stats = adversarial_stage(xnn.client, gen_net, aux, train, train.labels, epochs=4,
                              batch_size=25, lr=3e-3, ctx=ctx, aux_updates=False)
    assert stats["aux_ce_after_g"] > stats["aux_ce_before_g"]
    with torch.no_grad():
        noise = gen_net(h, torch.Generator().manual_seed(0))
        signs = torch.randint(0, 2, noise.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        aux.eval()
        ce_g = float(identity_ce(aux, h + noise, y))
        ce_rand = float(identity_ce(aux, h + noise.abs() * signs, y))
        ce_clean = float(identity_ce(aux, h, y))
    assert ce_g > ce_rand + 1.0 and ce_g > ce_clean + 1.0, (ce_g, ce_rand, ce_clean)


def test_xnn_d_fits_and_records_the_adversarial_stage(faces, ctx):
    d = DEFENSES.create("xnn_d", **{**TINY_VIT, "vit_epochs": 2, "adv_epochs": 2})
    d.fit(faces, ctx)
    r = d.record
    assert r["aux_ce_after_g"] > r["aux_ce_before_g"]  # each G step raises the aux tail's CE
    x = faces.test.images[:4]
    noised = d.test_encode(x, torch.Generator().manual_seed(0))
    clean = d.features(x)
    assert noised.shape == clean.shape and not torch.equal(noised, clean)
    assert ((noised - clean).abs() <= d.options.noise_scale * r["feature_std"] + 1e-4).all()
