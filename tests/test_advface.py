"""AdvFace (ALGORITHMS §6): PGD against the shadow decoder, its bounds, the shadow's batch
statistics, online/offline modes, variants and the threat model."""
import pytest
import torch
import torch.nn.functional as F
from conftest import context_with_random_baseline

from bench.backbones.decoders import build_decoder
from bench.config import DataConfig, RecognizerConfig
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from bench.data.orl import load_orl
from bench.plugins import load_plugins
from bench.recognition import embed
from defenses.advface import EPS_SWEEP, adversarial_features, batch_statistics
from defenses.feature_split import freeze, split_aux, split_recognizer

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=2, batch_size=16, lr=0.05,
                        milestones=(), warmup_epochs=0, dropout=0.0, arcface_s=16.0)
FAST = dict(shadow_width=4, shadow_epochs=2, shadow_lr=1e-3, iterations=3, finetune_epochs=1)


@pytest.fixture(scope="module")
def data():
    """8 ORL identities at 32×32: 4 train, 2 aux (one shadow, one public), 2 test."""
    return load_orl(DataConfig(image_size=32, limit_identities=8, num_pairs=20), 0)


@pytest.fixture(scope="module")
def ctx(data):
    return context_with_random_baseline(data, TINY)


@pytest.fixture(scope="module")
def shadow_and_features(data, ctx):
    """A shadow decoder briefly trained on (E(x), x) and a batch of test features."""
    extractor, _ = split_recognizer(ctx.baseline)
    extractor = freeze(extractor)
    x = data.aux.images
    with torch.no_grad():
        z = extractor(x)
    torch.manual_seed(0)
    shadow = build_decoder("resrec", tuple(z.shape[1:]), tuple(x.shape[1:]), width=8)
    opt = torch.optim.Adam(shadow.parameters(), lr=3e-3)
    for _ in range(15):
        loss = F.l1_loss(shadow(z), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z_test = extractor(data.test.images[:16])
    return freeze(shadow), extractor, z_test


@pytest.fixture(scope="module")
def fitted(data, ctx):
    d = DEFENSES.create("advface", **FAST)
    d.fit(data, ctx)
    return d


@pytest.mark.parametrize("bound", ["per_step", "global"])
def test_pgd_increases_the_shadow_loss_and_respects_the_bound(shadow_and_features, bound):
    shadow, extractor, z = shadow_and_features
    with torch.no_grad(), batch_statistics(shadow):
        x_sh = shadow(z)
        z0 = extractor(x_sh)
        before = F.l1_loss(shadow(z0), x_sh).item()
    zt = adversarial_features(shadow, extractor, z, eps=0.2, alpha=0.2, iterations=6, bound=bound)
    with torch.no_grad(), batch_statistics(shadow):
        after = F.l1_loss(shadow(zt), x_sh).item()
    assert after > before * 1.2, (before, after)
    delta = (zt - z0).abs()
    if bound == "global":
        # Madry projection onto the ε-ball around z0 (L∞): six steps of 0.2 would reach 1.2, so
        # the bound is active — it holds, and it is reached (the projection clamps, not shrinks)
        assert delta.max().item() <= 0.2 + 1e-5
        assert (delta > 0.2 - 1e-5).float().mean() > 0.5
    else:
        # literal Eq. 6: every step moves each coordinate by exactly min(α, ε) (sign steps, the
        # gradient is nonzero almost everywhere): the drift is a multiple of the step, no projection
        assert delta.max().item() > 0.2 + 1e-3  # not projected onto the ε-ball
        one = adversarial_features(shadow, extractor, z, eps=0.05, alpha=0.2, iterations=1, bound=bound)
        assert (one - z0).abs().max().item() == pytest.approx(0.05, abs=1e-6)


def test_pgd_uses_batch_statistics_and_leaves_running_stats_alone(shadow_and_features):
    shadow, extractor, z = shadow_and_features
    norms = [m for m in shadow.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in norms]
    with torch.no_grad():  # as inside embed(): PGD must still get its gradients
        adversarial_features(shadow, extractor, z, eps=0.2, iterations=3)
    for bn, (mean, var) in zip(norms, stats):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert not bn.training  # mode restored
    with batch_statistics(shadow):
        assert all(bn.training for bn in norms)


def test_eps_zero_stores_the_shadow_feature(shadow_and_features):
    shadow, extractor, z = shadow_and_features
    with torch.no_grad(), batch_statistics(shadow):
        z0 = extractor(shadow(z))
    torch.testing.assert_close(adversarial_features(shadow, extractor, z, eps=0.0), z0)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_modes_bound_the_features_and_train_psi_only_offline(data, ctx, mode):
    d = DEFENSES.create("advface" if mode == "online" else "advface.offline", pgd_bound="global", **FAST)
    d.name = f"advface-{mode}"
    assert d.options.mode == mode
    d.fit(data, ctx)
    assert d.record["shadow_l1_adversarial"] > d.record["shadow_l1_clean"]
    x = data.test.images[:8]
    stored = d.test_encode(x, torch.Generator())
    assert torch.equal(stored, torch.stack([d.stored[k] for k in d._digest(x)]))
    assert d.record["unstored_faces"] == 0  # every test face was stored in fit()
    fresh = d.encode(x, torch.Generator())  # this call's faces form the PGD batch
    with torch.no_grad(), batch_statistics(d.shadow_model):
        z0 = d.extractor(d.shadow_model(d.features(x)))
    assert (fresh - z0).abs().max().item() <= d.options.eps + 1e-5
    model = d.train_recognizer(data, ctx)
    _, psi = split_recognizer(ctx.baseline)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), psi.state_dict().values()))
    assert same == (mode == "online")
    emb = embed(model, data.test.images[:6], d.test_encode)  # PGD runs under embed's no_grad
    assert emb.shape == (6, TINY.embedding_dim) and torch.isfinite(emb).all()


def test_identical_faces_in_a_batch_get_identical_features(data, fitted):
    d = fitted
    x = data.test.images[:4]
    out = d.test_encode(torch.cat([x, x]), torch.Generator())
    torch.testing.assert_close(out[:4], out[4:])


def test_leak_follows_the_threat_model(data, ctx, fitted):
    d = fitted
    leak = d.leak(data, ctx)
    shadow, public = split_aux(data.aux, ctx.seed)
    assert torch.equal(leak.train_targets, public.images)  # the other half than the shadow's
    torch.testing.assert_close(leak.train_inputs, d.features(public.images))  # (E(x_pub), x_pub)
    assert leak.inputs.shape == (len(data.test), *d.features(data.test.images[:1]).shape[1:])


def test_variants_and_options():
    names = DEFENSES.names("advface*")
    for v in ("advface", "advface.offline", "advface.shadow_urec", "advface.shadow_transrec",
              *(f"advface.eps{e:.2f}" for e in EPS_SWEEP)):
        assert v in names
        opts = DEFENSES.get(v).options
        assert {"mode", "shadow", "eps"} <= set(opts)
    assert DEFENSES.get("advface.eps0.05").options["eps"] == 0.05
    for e in EPS_SWEEP:  # α moves with ε, or the per-step bound would flatten the sweep above α
        opts = DEFENSES.get(f"advface.eps{e:.2f}").options
        assert opts["alpha"] == opts["eps"] == e
    assert DEFENSES.get("advface.shadow_urec").create().options.shadow == "urec"
    assert DEFENSES.names("advface.eps*") == [f"advface.eps{e:.2f}" for e in EPS_SWEEP]
    assert DEFENSES.get("advface").factory.domain == "feature"
    with pytest.raises(ConfigError, match="pgd_bound"):
        DEFENSES.create("advface", pgd_bound="sideways")
    with pytest.raises(ConfigError, match="shadow"):
        DEFENSES.create("advface", shadow="gan")


def _recon_l1(shadow, z, x):
    """Mean L1 between the shadow's reconstruction of ``z`` (batch statistics) and the faces."""
    with torch.no_grad(), batch_statistics(shadow):
        return F.l1_loss(shadow(z), x).item()


def test_adversarial_features_defeat_the_shadow_decoder(data, shadow_and_features):
    """The point of AdvFace: the shadow decoder reconstructs the *faces* worse from the stored
    features than from the clean ones, PGD makes it much worse than its start point z0 = E(S(z)),
    and under the global bound more so as ε grows (Fig. 4). A PGD that descended instead of
    ascending, or ignored ε, fails this. (Measured: clean .120, z0 .140, ε = .2 .201; global
    ε = .05/.1/.2: .178/.182/.195.)"""
    shadow, extractor, z = shadow_and_features
    x = data.test.images[:16]
    clean = _recon_l1(shadow, z, x)
    start = _recon_l1(shadow, adversarial_features(shadow, extractor, z, eps=0.0), x)
    adv = _recon_l1(shadow, adversarial_features(shadow, extractor, z, eps=0.2, iterations=4), x)
    assert adv > 1.3 * start and adv > 1.5 * clean, (clean, start, adv)
    errs = [_recon_l1(shadow, adversarial_features(shadow, extractor, z, eps=e, alpha=0.2, iterations=4,
                                                   bound="global"), x) for e in (0.05, 0.1, 0.2)]
    assert start < errs[0] < errs[1] < errs[2], (start, errs)


def _encode_twice(d, v, order):
    """The stored features of a verification set's faces (and mirror images), asked for in
    ``order`` batches of 7."""
    gen = torch.Generator().manual_seed(0)
    faces = torch.cat([v.images, v.images.flip(-1)])
    out = torch.cat([d.test_encode(c, gen) for c in faces[order].split(7)])
    return out[order.argsort()]


def test_stored_features_do_not_depend_on_stage_order_or_other_randomness(data, ctx):
    """ALGORITHMS §6 / issue 10: S runs on batch statistics, so the stored feature of a face must
    come from a fixed batch composition (a function of the seed and the data), not from whichever
    stage (verification, leak) asked first or what randomness ran before."""
    v = data.primary_verification
    small = dict(FAST, pgd_batch_size=16)  # several PGD batches: their composition matters
    a = DEFENSES.create("advface", **small)
    a.fit(data, ctx)
    verify_first = _encode_twice(a, v, torch.arange(2 * len(v.images)))  # verification, then leak
    leak_a = a.leak(data, ctx).inputs

    torch.manual_seed(1234)
    torch.rand(999)  # another stage consumed the global RNG
    b = DEFENSES.create("advface", **small)
    b.fit(data, ctx)
    leak_b = b.leak(data, ctx).inputs  # the leak first, then verification in other batches
    order = torch.randperm(2 * len(v.images), generator=torch.Generator().manual_seed(5))
    verify_later = _encode_twice(b, v, order)

    assert torch.equal(leak_a, leak_b)
    assert torch.equal(verify_first, verify_later)
    assert a.record["unstored_faces"] == b.record["unstored_faces"] == 0
    assert a.record["stored_faces"] == len(a.stored) > len(data.test)
    # the batches really share statistics: the same faces perturbed as one call's batch differ
    alone = a.encode(data.test.images[:5], torch.Generator())
    assert not torch.allclose(alone, leak_a[:5].to(alone), atol=1e-4)
    # a face outside the served set is perturbed with its call's unknown faces, never stored,
    # so asking again in other company gives the same answer
    other = data.train.images[:6]
    first = a.test_encode(other, torch.Generator())
    again = a.test_encode(torch.cat([other[3:], other[:3]]), torch.Generator())
    assert torch.equal(first, torch.cat([again[3:], again[:3]]))
    assert a.record["unstored_faces"] == 12 and len(a.stored) == a.record["stored_faces"]
