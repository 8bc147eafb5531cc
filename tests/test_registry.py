import pytest

from bench.core.errors import UnknownPluginError
from bench.core.registry import ATTACKS, DATASETS, DEFENSES, Registry
from bench.plugins import load_plugins

load_plugins()


def make() -> Registry:
    reg = Registry("thing")

    @reg.register("masking_mixup", k=2)
    @reg.register("masking_mixup", k=3)
    class M:
        def __init__(self, k=1, cap=0.5):
            self.k, self.cap = k, cap

    @reg.register("mixup_fd")
    @reg.register("mixup_fd", variant="strong", cap=0.9)
    class F:
        def __init__(self, cap=0.65):
            self.cap = cap
        pass

    return reg


def test_variants_carry_their_options():
    reg = make()
    assert reg.names() == ["masking_mixup.k2", "masking_mixup.k3", "mixup_fd", "mixup_fd.strong"]
    obj = reg.create("masking_mixup.k3", cap=0.6)
    assert (obj.k, obj.cap) == (3, 0.6)
    assert reg.create("mixup_fd.strong").cap == 0.9


def test_wildcards_and_all():
    reg = make()
    assert reg.names("masking_*") == ["masking_mixup.k2", "masking_mixup.k3"]
    assert reg.expand("all") == reg.names()
    assert reg.expand("mixup_fd,masking_*") == ["mixup_fd", "masking_mixup.k2", "masking_mixup.k3"]
    assert reg.expand("all") == reg.names()


def test_unknown_name_lists_near_matches():
    with pytest.raises(UnknownPluginError, match="did you mean mixup_fd"):
        make().get("mixup_df")
    with pytest.raises(UnknownPluginError, match="no thing matches"):
        make().expand("zzz*")


def test_double_registration_is_refused():
    reg = make()
    with pytest.raises(ValueError):
        reg.register("mixup_fd")(object)


def test_entry_points_are_loaded(monkeypatch):
    import bench.plugins as plugins

    loaded = []

    class EP:
        def load(self):
            loaded.append(True)
            reg.register("third_party")(object)

    reg = Registry("thing", "faceprivbench.test")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [EP()] if group == "faceprivbench.test" else [])
    plugins.load_entry_points(reg)
    assert "third_party" in reg.names()
    assert loaded == [True]
    plugins.load_entry_points(reg)
    assert loaded == [True]  # loaded once


def test_builtin_registries_hold_the_first_plugins():
    assert {"none", "ppfr_fd"} <= set(DEFENSES.names())
    assert "cgan" in ATTACKS.names()
    assert "orl" in DATASETS.names()


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_builds_with_defaults_and_has_a_docstring(name):
    d = DEFENSES.create(name)
    assert (type(d).__doc__ or "").strip()
    assert d.domain in ("image", "feature")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_builds_with_defaults_and_has_a_docstring(name):
    a = ATTACKS.create(name)
    assert (type(a).__doc__ or "").strip()
