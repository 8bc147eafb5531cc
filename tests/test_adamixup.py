"""AdaMixUp (ALGORITHMS §3): REINFORCE policy over k, FRNet1 reward, recorded k shares."""
import io

import pytest
import torch

from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.core.errors import ConfigError
from bench.data.facedata import FaceData, FaceSet
from bench.recognition import Recognizer
from defenses.adamixup import AdaMixup, KPolicy, reinforce_step
from defenses.mixing import TorchRandom

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = RecognizerConfig(widths=(4, 4, 8, 8), embedding_dim=8, epochs=2, batch_size=8,
                        lr=0.05, milestones=(1,), dropout=0.0, arcface_s=16.0)
SMALL_POLICY = {"policy_widths": (4, 4, 8, 8)}


def _data(n_id=4, per=6, side=16):
    faces = FaceSet(torch.rand(n_id * per, 1, side, side, generator=G()),
                    torch.arange(n_id).repeat_interleave(per))
    return FaceData("toy", faces, faces, faces)


def _policy(n_actions=3, seed=0):
    torch.manual_seed(seed)
    return KPolicy(5, 4, n_actions, (4, 4, 8, 8))


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_moves_probability_towards_the_better_k(baseline):
    policy, m = _policy(), torch.randn(8, 5, 4, 4)
    opt = torch.optim.Adam(policy.parameters(), lr=0.02)
    rewards = {0: 1.0, 1: 1.0, 2: 3.0}  # k index 2 pays more; all rewards positive
    gen, b = G(1), 0.0
    with torch.no_grad():
        before = torch.softmax(policy(m), 0)[2].item()
    for _ in range(40):
        _, r, _ = reinforce_step(policy, opt, m, rewards.__getitem__, gen, b if baseline else 0.0)
        b = 0.9 * b + 0.1 * r
    with torch.no_grad():
        after = torch.softmax(policy(m), 0)[2].item()
    assert after > before + 0.2


def test_policy_pools_over_the_batch():
    policy = _policy().eval()
    m = torch.randn(6, 5, 4, 4)
    out = policy(m)
    assert out.shape == (3,)
    assert torch.allclose(out, policy(m[torch.randperm(6)]), atol=1e-5)


def _fitted(**opts):
    d = AdaMixup(k_values=(2, 3, 4), **SMALL_POLICY, **opts)
    d.name = "adamixup.k2-4"
    data = _data()
    d.fit(data, Context(seed=0, progress=False, recognizer=TINY))
    return d, data


def test_reward_leaves_the_live_recognizer_untouched_and_l2_uses_one_sgd_step():
    d, data = _fitted(a=1.0, b=0.0)
    model = Recognizer(TINY, (63, 16, 16), 4).train()  # ×8-upsampled masked maps (§0.1 v2)
    x, y = data.train.images[:8], data.train.labels[:8]
    m = d.represent(x, G())
    assert m.shape == (8, 63, 16, 16)
    mixed = d.mix(m, y, 3, TorchRandom(G()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    l1 = d.reward(model, mixed)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert l1 == pytest.approx(model.mixed_loss(mixed.z, mixed.gt, mixed.co).item(), rel=1e-4)
    d.options.a, d.options.b = 0.0, 1.0
    assert d.reward(model, mixed) < l1  # one gradient step lowers the loss on that batch


def test_frnet1_uses_the_recognizers_current_learning_rate():
    d, data = _fitted()
    steps = d._steps_per_epoch  # 24 faces / batch 8
    assert steps == 3
    d._step = 0
    assert d.current_lr() == pytest.approx(0.05)
    d._step = steps  # epoch 1 ≥ milestone 1
    assert d.current_lr() == pytest.approx(0.005)


def test_training_records_k_shares_and_the_defense_pickles():
    d, data = _fitted()
    d.train_recognizer(data, Context(seed=0, progress=False, recognizer=TINY))
    rec = d.record
    assert set(rec["k_share"]) == {"2", "3", "4"} and set(rec["k_counts"]) == {"2", "3", "4"}
    assert sum(rec["k_counts"].values()) == 6  # 2 epochs × 3 batches
    assert sum(rec["k_share"].values()) == pytest.approx(1.0)
    assert rec["reward_mean"] > 0
    buf = io.BytesIO()
    torch.save(d, buf)  # the pipeline stores the trained defense
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    leak = again.leak(data, Context(seed=0, progress=False, recognizer=TINY))
    used = {int((row >= 0).sum()) for row in leak.oracle["members"]}
    assert used <= {k for k in (2, 3, 4) if rec["k_counts"][str(k)] > 0}
    assert leak.inputs.shape == (24, 63, 16, 16) and leak.views.shape == (24, 1, 16, 16)
    assert 0 <= leak.views.min() and leak.views.max() <= 1


def test_without_upsampling_the_policy_and_recognizer_see_the_8x8_block_maps():
    d, data = _fitted(upsample=False)
    assert d.represent(data.train.images[:2], G()).shape == (2, 63, 2, 2)
    model = d.train_recognizer(data, Context(seed=0, progress=False, recognizer=TINY))
    assert model.in_shape == (63, 2, 2) and sum(d.record["k_counts"].values()) == 6


def test_training_without_fit_is_refused():
    from bench.core.errors import TrainingError

    d = AdaMixup(**SMALL_POLICY)
    with pytest.raises(TrainingError, match="fit"):
        d.train_step(None, torch.rand(4, 1, 16, 16), torch.arange(4), G())


@pytest.mark.parametrize("bad,match", [
    ({"k_values": (1, 2)}, "2..10"), ({"k_values": (2, 11)}, "2..10"), ({"k_values": (2, 2)}, "distinct"),
    ({"k_values": ()}, "distinct"), ({"cap": 0.5}, "cap"), ({"cap": 1.5}, "cap"),
    ({"policy_lr": 0}, "policy_lr"), ({"policy_every": 0}, "policy_every"),
    ({"baseline_momentum": 1.0}, "baseline_momentum"), ({"policy_widths": (4, 4)}, "policy_widths"),
])
def test_invalid_options_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        AdaMixup(**bad)
