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
from bench.config import RecognizerConfig
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
    p.tensorboard = None  # no live training curves
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


# -- nothing private in the attacker's leak, for every registered defense (issue 20) -----------------
# A tiny recognizer and cheap options so that every defense fits in seconds (as tests/test_plan.py).
WALK_RECOGNIZER = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=1, batch_size=16)
WALK_CHEAP = {"advface": {"shadow_epochs": 1, "shadow_width": 4, "iterations": 2},
              "adamixup": {"policy_widths": (4, 4, 8, 8)}, "duetface": {"client_width": 4},
              "xnn": {"embed_dim": 16, "num_heads": 2, "client_depth": 1, "server_depth": 1,
                      "vit_epochs": 1, "tail_epochs": 1},
              "xnn_d": {"embed_dim": 16, "num_heads": 2, "client_depth": 1, "server_depth": 1,
                        "vit_epochs": 1, "tail_epochs": 1, "adv_epochs": 1},
              "minusface": {"generator_width": 8}}
#: Test and training identities are renumbered from these, far from any index a leak holds: an
#: integer tensor with one of the reconstruction targets' identities is a private label.
TEST_ID_BASE, TRAIN_ID_BASE = 10_000, 20_000
#: Entries of ``Leak.extra`` the threat model hands over although they name test identities: the
#: mixed labels of the server's training batches (ALGORITHMS §7.3; the stream's private faces are
#: the server's training faces, whose classes it trains on). Carlini's attack reads only what a
#: server sees of them, the weighted one-hot label (attacks/carlini.py ``server_view``).
SERVER_TRAINS_ON = {("extra", "stream", "labels")}


def _walk_defenses() -> list[tuple[str, dict[str, Any]]]:
    """One registered name per defense class (variants share their class's leak code), and for a
    defense with deployment secrets (a ``perm_mode`` option) also its ``fixed_key`` setting."""
    out = []
    for name in {DEFENSES.get(n).factory: n for n in reversed(DEFENSES.names())}.values():
        opts = dict(WALK_CHEAP.get(name.split(".")[0], {}))
        out.append((name, opts))
        options_cls = getattr(DEFENSES.get(name).factory, "Options", None)
        if options_cls is not None and "perm_mode" in getattr(options_cls, "__dataclass_fields__", {}):
            out.append((name, {**opts, "perm_mode": "fixed_key"}))
    return out


@pytest.fixture(scope="module")
def walk_data():
    from bench.config import DataConfig
    from bench.data.facedata import FaceSet
    from bench.data.orl import load_orl

    data = load_orl(DataConfig(image_size=32, limit_identities=12, num_pairs=60), 0)
    test = FaceSet(data.test.images, data.test.labels + TEST_ID_BASE)
    # DP-SGD reconstructs training faces (§4.4): their identities are its private labels
    train = FaceSet(data.train.images, data.train.labels + TRAIN_ID_BASE)
    return dataclasses.replace(data, train=train, test=test)


def _paths(obj: Any, path: tuple = ()):
    """``(path, object)`` for every object reachable through dataclass fields, dicts, lists and
    tuples (dict keys name the path)."""
    yield path, obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        items = [(k, v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        items = []
    for key, child in items:
        yield from _paths(child, path + (key,))


def _row_keys(x: torch.Tensor) -> set[bytes]:
    return {r.float().contiguous().numpy().tobytes() for r in x.detach().cpu()}


def private_findings(leak: Leak, private_ids: set[int], private_faces: set[bytes],
                     face_shape: tuple[int, ...], secrets: list[torch.Tensor]) -> list[str]:
    """What in ``leak`` is private: a tensor naming an identity of the reconstruction targets
    (outside :data:`SERVER_TRAINS_ON`), a target face anywhere but the stolen inputs (``inputs``
    and the stolen extras, which the threat model hands over), a deployment secret."""
    from bench.core.contract import STOLEN_EXTRA

    found = []
    for path, o in _paths(leak):
        if not isinstance(o, torch.Tensor) or o.numel() == 0:
            continue
        where = ".".join(map(str, path))
        if not o.is_floating_point() and o.dtype != torch.bool and path not in SERVER_TRAINS_ON:
            if set(o.flatten().tolist()) & private_ids:
                found.append(f"target labels at {where}")
        stolen = path[:1] == ("inputs",) or (path[:1] == ("extra",) and len(path) > 1
                                             and path[1] in STOLEN_EXTRA)
        if (o.is_floating_point() and not stolen and o.ndim == len(face_shape) + 1
                and tuple(o.shape[1:]) == face_shape and _row_keys(o) & private_faces):
            found.append(f"target faces at {where}")
        if any(o.shape == s.shape and torch.equal(o, s) for s in secrets):
            found.append(f"a deployment secret at {where}")
    return found


def _fitted_pipeline(name: str, options: dict[str, Any], data) -> pl.Pipeline:
    from conftest import context_with_random_baseline

    from bench.core.errors import TrainingError

    defense = DEFENSES.create(name, **options)
    defense.name = name
    ctx = context_with_random_baseline(data, WALK_RECOGNIZER)
    defense.fit(data, ctx)
    try:
        defense.leak(data, ctx)
    except TrainingError:  # a leak of the trained model itself (DP-SGD, §4.4)
        defense.train_recognizer(data, ctx)
    p = stub_pipeline(defense)
    p.data = lambda seed: data
    p._baseline_ctx = lambda seed: ctx
    p.cfg.recognizer = WALK_RECOGNIZER
    for k in ("leak_key", "extended_leak_key"):
        setattr(p, k, lambda *a, **kw: "key")
    return p


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name, options", _walk_defenses(),
                         ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items() if k == "perm_mode"))
def test_no_leak_hands_an_attacker_test_labels_targets_oracle_or_foreign_secrets(
        name: str, options: dict[str, Any], walk_data) -> None:
    """Every registered defense's leak (and, where it has one, its extended leak for structural
    attacks), for both knowledge levels: ``for_attacker`` holds no label of the reconstruction
    targets (test identities; DP-SGD's training identities), no target face outside the stolen
    inputs, no oracle, and for ``black_box`` none of the deployment's secrets. The full leak holds
    the labels and targets (so the detector sees them there)."""
    p = _fitted_pipeline(name, options, walk_data)
    face_shape = tuple(walk_data.test.images.shape[1:])
    leaks = [p.leak(0, name)]
    defense = p.defense_fit(0, name)
    if type(defense).extend_leak is not Defense.extend_leak:
        leaks.append(p.extended_leak(0, name))
    for leak in leaks:
        private_ids = set(leak.labels.tolist())
        assert private_ids and min(private_ids) >= TEST_ID_BASE  # renumbered: no index collides
        private_faces = _row_keys(leak.targets)
        found = private_findings(leak, private_ids, private_faces, face_shape, [])
        assert "target labels at labels" in found and "target faces at targets" in found
        secrets = [v for v in (leak.secrets or {}).values() if isinstance(v, torch.Tensor)]
        if options.get("perm_mode") == "fixed_key":
            assert secrets, f"{name} with a fixed key has no deployment secrets to withhold"
        for knowledge in ("white_box", "black_box"):
            view = leak.for_attacker(knowledge)
            assert view.targets is None and view.labels is None and view.oracle == {}
            withheld = secrets if knowledge == "black_box" else []
            if knowledge == "black_box":
                assert view.secrets is None
            found = private_findings(view, private_ids, private_faces, face_shape, withheld)
            assert not found, f"{name} {knowledge}: {found}"
