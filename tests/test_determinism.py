"""Randomness flows from the run's generators only: no global seed leaks, training does not depend
on what ran before in the process (issue "numbers you can defend", part 4/7)."""
from __future__ import annotations

import pytest
import torch

from bench.config import RecognizerConfig
from bench.core.context import Context, global_rng_from
from bench.data.facedata import FaceSet
from bench.environment import KEY_FIELDS, environment, environment_diff, environment_key
from bench.recognition import train_recognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = RecognizerConfig(backbone="resnet18", widths=(8, 8, 16, 16), embedding_dim=16, epochs=2,
                       batch_size=8, milestones=(), warmup_epochs=0, dropout=0.5)


def _faces() -> FaceSet:
    g = torch.Generator().manual_seed(0)
    return FaceSet(torch.rand(32, 1, 32, 32, generator=g), torch.arange(4).repeat_interleave(8))


def _train() -> dict[str, torch.Tensor]:
    ctx = Context(seed=3, recognizer=CFG, progress=False)
    return train_recognizer(_faces(), ctx, desc="t").state_dict()


def test_training_does_not_depend_on_the_global_rng_and_leaves_it_alone():
    torch.manual_seed(1)
    a = _train()
    torch.manual_seed(12345)  # another history of the process (other stages, other libraries)
    torch.rand(1000)
    before = torch.get_rng_state()
    b = _train()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global state is untouched
    for k in a:
        assert torch.equal(a[k], b[k]), k  # dropout masks and init came from the run's generator


def test_global_rng_from_is_a_function_of_the_generator():
    def draw(seed):
        with global_rng_from(torch.Generator().manual_seed(seed)):
            return torch.rand(3)
    assert torch.equal(draw(4), draw(4)) and not torch.equal(draw(4), draw(5))


def test_environment_record_and_key():
    env = environment()
    for field in ("torch", "numpy", "timm", "scikit-image", "harness", "device_model",
                  "torch_threads", "cpu_model"):
        assert env[field] is not None, field
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"].startswith(torch.__version__[:4])
    key = environment_key(env)
    assert key == environment_key(dict(env)) and len(key) == 8
    assert environment_key({**env, "torch_threads": env["torch_threads"] + 1}) != key
    assert environment_key({**env, "host": "elsewhere", "python": "0"}) == key  # not in KEY_FIELDS
    assert environment_diff(env, {**env, "timm": "0.9"}) == [f"timm: {env['timm']} → 0.9"]
    assert set(KEY_FIELDS) <= set(env)
    assert environment_key(None) == "unknown"
