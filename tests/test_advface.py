"""AdvFace (ALGORITHMS §6): PGD against the shadow decoder, its bounds, the shadow's batch
statistics, online/offline modes, variants and the threat model."""
import pytest
import torch
import torch.nn.functional as F

from attacks.decoders import build_decoder
from conftest import context_with_random_baseline
from bench.config import DataConfig, RecognizerConfig
from bench.data.orl import load_orl
from bench.errors import ConfigError
from bench.recognition import embed
from bench.registry import DEFENSES, load_builtin_plugins
from defenses.advface import EPS_SWEEP, adversarial_features, batch_statistics
from defenses.feature_split import freeze, split_aux, split_recognizer

load_builtin_plugins()

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
    delta = (zt - z0).abs().max().item()
    if bound == "global":
        assert delta <= 0.2 + 1e-5
    else:  # each of the 10 steps moves by at most eps
        assert delta <= 6 * 0.2 + 1e-5
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
    with torch.no_grad(), batch_statistics(d.shadow_model):
        z0 = d.extractor(d.shadow_model(d.features(x)))
    assert (stored - z0).abs().max().item() <= d.options.eps + 1e-5
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


def test_the_eps_sweep_keeps_moving_above_the_default_step(shadow_and_features):
    """Fig. 4: larger ε (with α = ε) pushes the features further from the shadow's start point."""
    shadow, extractor, z = shadow_and_features
    with torch.no_grad(), batch_statistics(shadow):
        z0 = extractor(shadow(z))
    drift = [(adversarial_features(shadow, extractor, z, eps=e, alpha=e, iterations=4) - z0)
             .abs().mean().item() for e in (0.0, 0.1, 0.2, 0.3)]
    assert drift[0] == 0 and drift == sorted(drift) and drift[3] > drift[2] * 1.2, drift

