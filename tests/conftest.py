import os

import pytest
import torch

# Under pytest-xdist the workers already fill the cores: a second intra-op thread per worker only
# adds contention. Alone (`-n 0`), tests may use two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

MAX_WORKERS = 8  # the heaviest tests hold ~1–2 GiB each


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))

# A tiny but complete configuration: every stage of the real pipeline, in seconds.
TINY_SETTINGS = [
    "data.image_size=32", "data.limit_identities=12", "data.split=[0.5,0.25,0.25]", "data.num_pairs=60",
    "recognizer.widths=[8,8,16,16]", "recognizer.embedding_dim=16", "recognizer.epochs=2",
    "recognizer.batch_size=16", "recognizer.milestones=[]", "recognizer.warmup_epochs=0",
    "attacks.cgan.epochs=1", "attacks.cgan.ngf=8", "attacks.cgan.ndf=8", "attacks.cgan.batch_size=8",
]


@pytest.fixture
def tiny_settings() -> list[str]:
    return list(TINY_SETTINGS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and stalls badly on a busy
    machine). Modules of tiny-model tests use it with ``pytestmark`` (module scope, so it
    also covers their module-scoped fixtures); the setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def context_with_random_baseline(data, cfg):
    """A seed-0 context whose baseline F1 is a randomly initialised recognizer for ``data``'s
    1×32×32 faces: client/server splits and feature defenses need its shape, not its skill."""
    from bench.core.context import Context
    from bench.recognition import Recognizer

    torch.manual_seed(0)
    ctx = Context(seed=0, progress=False, recognizer=cfg)
    ctx.baseline = Recognizer(cfg, (1, 32, 32), data.train.num_identities).eval()
    return ctx

