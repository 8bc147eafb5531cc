"""Attacker knowledge (ALGORITHMS §1 "Attacker knowledge (v2)") and n/a cells with a reason.

The pipeline's leak stage is run with its upstream stages stubbed (no training): a black-box
attacker of a ``fixed_key`` PPFR-FD deployment trains on pairs simulated with a key of its own,
a white-box one on the deployment's; the stolen inputs are the deployment's for both; nothing a
black-box attack receives holds the deployment's key or the defense object.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from attacks.base import Attack
from bench import pipeline as pl
from bench.core.context import Context
from bench.core.contract import Leak, Reconstruction
from bench.core.registry import ATTACKS, DEFENSES
from bench.plugins import load_plugins
from defenses.base import Defense
from defenses.ppfr_fd import PpfrFd

load_plugins()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def faces(n: int, seed: int, side: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear",
                                           align_corners=False)


class _Anything(SimpleNamespace):
    """A config section stub: attributes not given are None (sections grow fields)."""

    def __getattr__(self, name: str) -> Any:
        return None


class _Store:
    def get_or_compute(self, stage: str, key: str, compute):  # noqa: ANN001
        return compute()


def stub_pipeline(defense: Defense, attack: Any = None) -> pl.Pipeline:
    """A Pipeline whose upstream stages are stubs: the real leak/attack/measure/cell_record run."""
    p = pl.Pipeline.__new__(pl.Pipeline)
    data = SimpleNamespace(aux=SimpleNamespace(images=faces(6, 1)),
                           test=SimpleNamespace(images=faces(4, 2), labels=torch.arange(4)))
    p.store, p.progress, p.device = _Store(), False, torch.device("cpu")
    p.cfg = SimpleNamespace(attacks={}, defenses={}, preset="quick",
                            data=_Anything(name="stub"),
                            recognizer=_Anything(bn_recalibration=False, batch_size=4))
    p.data = lambda seed: data
    p._baseline_ctx = lambda seed: Context(seed=seed, progress=False)
    p.context = lambda seed, *salt: Context(seed=seed, progress=False)
    p.defense_fit = lambda seed, name: defense
    p.defense_recognizer = lambda seed, name: {"defense": defense, "accuracy": {"v": 0.9},
                                               "seconds": 0.0, "record": {}}
    p.baseline = lambda seed: {"accuracy": {"v": 0.95}, "seconds": 0.0}
    for k in ("leak_key", "attack_key", "measure_key", "baseline_key", "recognizer_key"):
        setattr(p, k, lambda *a, **kw: "key")
    return p


def walk(obj: Any, seen: set[int] | None = None):
    """Every object reachable from ``obj`` through dataclass fields, dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        children = list(obj.keys()) + list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        children = []
    for c in children:
        yield from walk(c, seen)


def holds_key(obj: Any, key: tuple[torch.Tensor, ...]) -> bool:
    for o in walk(obj):
        if isinstance(o, (Defense, torch.Generator)):
            return True
        if isinstance(o, torch.Tensor) and any(o.shape == k.shape and torch.equal(o, k) for k in key):
            return True
    return False


def test_black_box_pairs_use_the_attackers_own_key_under_fixed_key() -> None:
    d = PpfrFd(perm_mode="fixed_key")
    p = stub_pipeline(d)
    leak = p.leak(0, "ppfr_fd")
    aux = p.data(0).aux.images
    deployment = d.masker(aux, torch.Generator())  # fixed key + adjacent_sum: deterministic
    wb, bb = leak.for_attacker("white_box"), leak.for_attacker("black_box")
    assert torch.equal(wb.train_inputs, deployment)
    assert not torch.allclose(bb.train_inputs, deployment, atol=1e-3)
    assert torch.equal(bb.train_targets, aux)
    # the black-box pairs are a genuine PPFR-FD encoding, under a key the attacker drew itself
    own = d.attacker_copy(Context(seed=0).generator("attacker_secrets", "ppfr_fd"))
    assert torch.equal(bb.train_inputs, own.masker(aux, torch.Generator()))
    # the stolen maps are the deployment's in both settings
    assert torch.equal(wb.inputs, leak.inputs) and torch.equal(bb.inputs, leak.inputs)
    assert wb.extra["pairs"] == "deployment" and bb.extra["pairs"] == "attacker_secrets"
    assert wb.extra["knowledge"] == "white_box" and bb.extra["knowledge"] == "black_box"


def test_black_box_attack_never_reaches_the_deployment_key() -> None:
    d = PpfrFd(perm_mode="fixed_key")
    key = d.masker._key_perms
    p = stub_pipeline(d)
    leak = p.leak(0, "ppfr_fd")
    assert holds_key(leak, key)  # the stored leak has it (white-box attackers get it) …
    assert holds_key(leak.for_attacker("white_box"), key)
    assert torch.equal(leak.for_attacker("white_box").secrets["perm1"], key[0])
    bb = leak.for_attacker("black_box")  # … a black-box attacker does not
    assert bb.secrets is None and not holds_key(bb, key)

    seen: list[Leak] = []

    class Spy(Attack):
        """Records what the pipeline hands it."""

        name = "spy"

        def run(self, leak: Leak, ctx: Context) -> Reconstruction:
            seen.append(leak)
            return Reconstruction(torch.zeros(len(leak.inputs), 1, 16, 16))

    cell = pl.Cell(0, "ppfr_fd", "spy")
    real = pl.ATTACKS
    pl.ATTACKS = SimpleNamespace(create=lambda name, **o: Spy(knowledge="black_box"))
    try:
        out = p.attack(cell)
    finally:
        pl.ATTACKS = real
    assert out["status"] == "ok"
    assert not holds_key(seen[0], key) and seen[0].targets is None and seen[0].oracle == {}


def test_per_sample_has_no_secrets_and_both_settings_coincide() -> None:
    d = PpfrFd()
    assert d.attacker_copy(torch.Generator()) is d
    leak = stub_pipeline(d).leak(0, "ppfr_fd")
    assert leak.black_box is None and not leak.secrets
    wb, bb = leak.for_attacker("white_box"), leak.for_attacker("black_box")
    assert torch.equal(wb.train_inputs, bb.train_inputs)
    assert bb.extra["pairs"] == "deployment"
    assert leak.extra["mechanism"]["family"] == "ppfr_fd" and "key_seed" not in leak.extra["mechanism"]


@pytest.mark.parametrize("name", ["masking_mixup.k2", "adamixup.k2-4"])
def test_masking_mixups_draw_a_fresh_key(name: str) -> None:
    d = DEFENSES.create(name, perm_mode="fixed_key")
    c = d.attacker_copy(torch.Generator().manual_seed(1))
    assert c is not d and type(c) is type(d)
    assert not torch.equal(c.masker._key_perms[1], d.masker._key_perms[1])
    assert d.deployment_secrets().keys() == {"perm1", "perm2"}
    assert DEFENSES.create(name).attacker_copy(torch.Generator()) is not None


def test_old_leaks_without_knowledge_fields_still_load() -> None:
    leak = Leak(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 8, 8), torch.zeros(1, 3, 4, 4))
    del leak.__dict__["black_box"], leak.__dict__["secrets"]  # as unpickled from an old store
    assert leak.for_attacker("black_box").secrets is None


@pytest.mark.parametrize("name", ["resrec", "urec", "transrec", "cgan", "ppfr_whitebox",
                                  "ppfr_whitebox.simulated"])
def test_knowledge_is_an_option_with_a_default(name: str) -> None:
    from bench.core.errors import ConfigError
    from bench.pipeline import effective_options

    assert effective_options(ATTACKS.get(name), {}, name)["knowledge"] == "white_box"
    assert ATTACKS.create(name, knowledge="black_box").knowledge == "black_box"
    with pytest.raises(ConfigError):
        ATTACKS.create(name, knowledge="grey_box")


# -- n/a cells ---------------------------------------------------------------------------------------
def test_na_cell_carries_its_reason_through_measure_and_record() -> None:
    d = DEFENSES.create("none")
    d.name = "none"
    p = stub_pipeline(d)
    cell = pl.Cell(0, "none", "ppfr_whitebox")
    att = p.attack(cell)
    assert att["status"] == "n/a" and "PPFR-FD" in att["reason"]
    rec = p.cell_record(cell, "run")
    assert rec["status"] == "n/a" and rec["na_reason"] == att["reason"]
    assert "privacy" not in rec
    assert rec["knowledge"] == "white_box" and rec["attack_options"]["knowledge"] == "white_box"


def test_ppfr_whitebox_applies_to_masking_defenses_only() -> None:
    a = ATTACKS.create("ppfr_whitebox")
    for name in ("ppfr_fd", "masking_mixup.k2"):
        assert a.applies_to(DEFENSES.create(name)) and a.not_applicable(DEFENSES.create(name)) is None
    for name in ("none", "mixup_fd"):
        assert not a.applies_to(DEFENSES.create(name))
        assert "no PPFR-FD mechanism" in a.not_applicable(DEFENSES.create(name))


def test_plugins_that_only_override_applies_to_keep_working() -> None:
    class Legacy(Attack):
        """Says no with a bool."""

        name = "legacy"

        def applies_to(self, defense: Any) -> bool:
            return False

        def run(self, leak: Leak, ctx: Context) -> Reconstruction:  # pragma: no cover
            raise AssertionError

    class Reasoned(Legacy):
        """Says no with a reason."""

        def applies_to(self, defense: Any) -> Any:
            return "needs feature maps"

    class Modern(Legacy):
        """Says no through not_applicable."""

        def not_applicable(self, defense: Any) -> str | None:
            return "modern reason"

        applies_to = Attack.applies_to

    d = DEFENSES.create("none")
    assert "does not apply" in pl.not_applicable(Legacy(), d)
    assert pl.not_applicable(Reasoned(), d) == "needs feature maps"
    assert pl.not_applicable(Modern(), d) == "modern reason" and not Modern().applies_to(d)
    duck = SimpleNamespace(name="duck", applies_to=lambda defense: False)
    assert "does not apply" in pl.not_applicable(duck, d)
    assert pl.not_applicable(ATTACKS.create("resrec"), d) is None


def test_attack_info_in_records_keeps_json_scalars_only() -> None:
    info = {"knowledge": "black_box", "channel_matching_accuracy": 0.5, "analytic": "ok",
            "group_sizes": [1, 2], "estimated_pairs": [[0, 1]] * 3, "t": torch.zeros(3),
            "long": list(range(100)), "final_l1": None}
    got = pl.json_scalars(info)
    assert got == {"knowledge": "black_box", "channel_matching_accuracy": 0.5, "analytic": "ok",
                   "group_sizes": [1, 2], "final_l1": None}
