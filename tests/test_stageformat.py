"""The stage file format (bench/stageformat.py): safetensors + JSON, no pickle, classes only from
the store's allowlist, legacy pickle stores still read."""
import json
import struct
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save
from torch import nn

from bench import stageformat
from bench.store import ArtifactStore, safe_global


def _recognizer():
    from bench.config import RecognizerConfig
    from bench.recognition import Recognizer

    torch.manual_seed(0)
    return Recognizer(RecognizerConfig(widths=[8, 8, 16, 16], embedding_dim=16), (1, 32, 32), 5).eval()


def test_a_stage_file_is_plain_safetensors_named_like_a_state_dict(tmp_path):
    """Any safetensors reader gets the model's weights under their state_dict names; the rest is
    JSON in the header; the file holds no pickle."""
    model = _recognizer()
    store = ArtifactStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.save("baseline", "k", {"model": model, "accuracy": {"orl": 0.5}})
    path = store.path("baseline", "k")
    assert path.suffix == ".safetensors" and not store.legacy_path("baseline", "k").exists()
    tensors = load_file(str(path))
    assert set(tensors) == {f"model.{k}" for k in model.state_dict()}
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    data = path.read_bytes()
    assert not data.startswith(b"PK") and b"\x80\x02" not in data[:16]  # no torch zip, no pickle
    _, meta = stageformat.read_header(data)
    assert json.loads(meta["structure"])["accuracy"] == {"orl": 0.5}


def test_round_trip_keeps_values_types_sharing_and_cycles(tmp_path):
    from bench.core.contract import Leak

    shared = nn.Linear(3, 2)
    images = torch.rand(4, 1, 8, 8)
    obj = {"a": shared, "b": shared, "leak": Leak(images, images, images, images),
           "nan": float("nan"), "inf": float("-inf"), "tuple": (1, "x", None),
           "int_keys": {1: "one", (2, 3): "pair"}, "set": {3, 1}, "dtype": torch.float16,
           "np": np.int64(7), "arr": np.arange(4, dtype=np.float32), "size": torch.Size([2]),
           "bytes": b"\x00\x01", "param": nn.Parameter(torch.ones(2)), "dunder": {"__obj__": 1}}
    obj["self"] = obj["leak"]  # the same object twice
    back = stageformat.loads(stageformat.dumps(obj, safe_global), safe_global)
    assert back["a"] is back["b"] and back["self"] is back["leak"]
    assert torch.equal(back["a"].weight, shared.weight) and back["a"].weight.requires_grad
    assert torch.equal(back["leak"].train_inputs, images)
    assert back["leak"].train_inputs is back["leak"].inputs  # one tensor stored once
    assert np.isnan(back["nan"]) and back["inf"] == float("-inf")
    assert back["tuple"] == (1, "x", None) and back["int_keys"] == {1: "one", (2, 3): "pair"}
    assert back["set"] == {1, 3} and back["dtype"] is torch.float16 and back["size"] == obj["size"]
    assert type(back["np"]) is np.int64 and back["np"] == 7
    assert back["arr"].dtype == np.float32 and np.array_equal(back["arr"], obj["arr"])
    assert back["bytes"] == b"\x00\x01" and back["dunder"] == {"__obj__": 1}
    assert type(back["param"]) is nn.Parameter
    x = torch.rand(5, 3)
    assert torch.equal(back["a"](x), shared(x))


def test_a_module_that_refers_to_itself_round_trips():
    outer = nn.Sequential(nn.Linear(2, 2))
    outer.back = [outer]  # a cycle through a plain attribute
    back = stageformat.loads(stageformat.dumps(outer, safe_global), safe_global)
    assert back.back[0] is back


def _forged(structure, tensors=None) -> bytes:
    """A stage file with a hand-written structure (what a stranger could send)."""
    meta = {"format": stageformat.FORMAT, "version": str(stageformat.VERSION),
            "structure": json.dumps(structure)}
    return save(tensors or {"t": torch.zeros(1)}, metadata=meta)


@pytest.mark.parametrize("structure", [
    {"__obj__": "posix.system", "id": 0, "args": ["touch {marker}"]},
    {"__obj__": "subprocess.Popen", "id": 0, "args": [["touch", "{marker}"]]},
    {"__type__": "builtins.eval"},
    {"__obj__": "bench.store.atomic_write_text", "id": 0},
    {"__enum__": "os.system", "value": "touch {marker}"},
    {"__weird__": 1},
    {"__tensor__": "missing"},
    {"__ref__": 3},
])
def test_a_forged_structure_is_refused_and_runs_nothing(tmp_path, structure):
    marker = tmp_path / "pwned"
    text = json.dumps(structure).replace("{marker}", str(marker))
    data = _forged(json.loads(text))
    with pytest.raises(stageformat.StageFormatError):
        stageformat.loads(data, safe_global)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "pad", "format", "header"])
def test_a_damaged_or_foreign_file_is_refused(damage):
    data = stageformat.dumps({"w": torch.ones(8)}, safe_global)
    if damage == "truncate":
        data = data[:-4]
    elif damage == "pad":
        data = data + b"\0" * 4
    elif damage == "format":  # a safetensors file, but not a stage file
        data = save({"w": torch.ones(8)})
    else:
        data = struct.pack("<Q", 1 << 40) + data[8:]
    with pytest.raises(stageformat.StageFormatError):
        stageformat.loads(data, safe_global)


def test_unstorable_objects_name_where_they_are():
    with pytest.raises(stageformat.UnstorableError, match=r"defense\.f"):
        stageformat.dumps({"defense": {"f": print}}, safe_global)
    with pytest.raises(stageformat.UnstorableError, match="generator|Generator"):
        stageformat.dumps({"g": torch.Generator()}, safe_global)


def test_a_legacy_pickle_store_still_loads_and_is_replaced_when_written(tmp_path):
    store = ArtifactStore(tmp_path)
    model = _recognizer()
    legacy = store.legacy_path("baseline", "k")
    legacy.parent.mkdir(parents=True)
    torch.save({"model": model, "tau": 0.25}, legacy)
    assert store.has("baseline", "k") and store.stored_path("baseline", "k") == legacy
    back = store.get_or_compute("baseline", "k", lambda: pytest.fail("recomputed a legacy stage"))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back["model"](x), model(x)) and back["tau"] == 0.25
    store.save("baseline", "k", back)
    assert not legacy.exists() and store.path("baseline", "k").is_file()
    assert store.load("baseline", "k")["tau"] == 0.25


def test_a_fitted_defense_round_trips(tmp_path):
    """What the pipeline stores for a mixing defense: nested Options, a masker holding its
    deployment key, a Counter of the k drawn, the fit's training curves."""
    from bench.core.registry import DEFENSES
    from bench.plugins import load_plugins

    load_plugins()
    defense = DEFENSES.create("masking_mixup.k2", perm_mode="fixed_key")
    defense.k_counts.update({2: 5})
    defense.fit_curves = [{"name": "x", "loop": "train_epochs", "losses": {"l1": [1.0, 0.5]}}]
    store = ArtifactStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.save("defense_fit", "k", defense)
    back = store.load("defense_fit", "k")
    assert type(back) is type(defense) and back.k_counts == defense.k_counts
    assert back.options == defense.options and back.fit_curves == defense.fit_curves
    secrets, back_secrets = defense.deployment_secrets(), back.deployment_secrets()
    assert secrets and set(secrets) == set(back_secrets)
    assert all(torch.equal(torch.as_tensor(secrets[k]), torch.as_tensor(back_secrets[k]))
               for k in secrets)
    x = torch.rand(4, 1, 32, 32)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(back.test_encode(x, gen()), defense.test_encode(x, gen()))
