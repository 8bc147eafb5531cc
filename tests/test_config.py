import pytest

from bench.config import parse_value, preset_names, resolve
from bench.core.errors import ConfigError


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_passes_validation(preset):
    cfg = resolve(preset)  # validates: e.g. data.split sums to 1
    assert abs(sum(cfg.data.split) - 1) < 1e-6


@pytest.mark.parametrize("split", ["[0.5,0.3,0.3]", "[1,1,1]", "[0.4,0.2,0.2]"])
def test_a_split_that_does_not_sum_to_one_is_refused(split):
    with pytest.raises(ConfigError, match="data.split fractions must sum to 1"):
        resolve("quick", [f"data.split={split}"])


def test_presets_resolve():
    assert {"quick", "paper"} <= set(preset_names())
    quick = resolve("quick")
    assert quick.data.name == "orl" and quick.recognizer.widths == (32, 64, 128, 256)
    assert resolve("paper").data.image_size == 112


def test_overrides_reach_sections_and_plugins():
    cfg = resolve("quick", ["recognizer.epochs=3", "defenses.ppfr_fd.perm_mode=fixed_key",
                            "data.split=[0.6,0.2,0.2]", "seeds=[0,1]"])
    assert cfg.recognizer.epochs == 3
    assert cfg.defenses["ppfr_fd"]["perm_mode"] == "fixed_key"
    assert cfg.data.split == (0.6, 0.2, 0.2) and cfg.seeds == (0, 1)


@pytest.mark.parametrize("override", ["recognizer.epochs=0", "recognizer.epochs=abc",
                                      "recognizer.nope=1", "data.image_size=30", "device=tpu",
                                      "noequals", "recognizer.lr=-0.1"])
def test_invalid_values_are_config_errors(override):
    with pytest.raises(ConfigError):
        resolve("quick", [override])


def test_unknown_option_suggests_a_near_name():
    with pytest.raises(ConfigError, match="did you mean epochs"):
        resolve("quick", ["recognizer.epoch=3"])


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("fixed_key") == "fixed_key"
