"""`python -m bench new-defense`: the generated plugin works, the registry-parametrised tests and
`bench run` pick it up with no other edit, and an external package registers a defense through
the `faceprivbench.defenses` entry-point group."""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS
from test_cli import bench_here

from bench.cli import main
from bench.core.errors import BenchError, ConfigError
from bench.core.registry import ATTACKS, DATASETS, DEFENSES
from bench.plugins import load_plugins
from bench.scaffold import class_name, defenses_dir, new_defense, render
from defenses.base import Defense

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dummy_defense_pkg"
# one tiny cell: the tiny settings plus a small, one-epoch ResRec decoder
CELL = [a for s in TINY_SETTINGS + ["attacks.resrec.epochs=1", "attacks.resrec.width=8"]
        for a in ("--set", s)]

load_plugins()


def run(python: str, *args: str, cwd: Path = ROOT, env: dict | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run([python, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_cell(results: Path, defense: str) -> dict:
    (run_dir,) = (results / "runs").iterdir()
    cells = sorted(p.name for p in (run_dir / "cells").glob("*.json"))
    assert cells == [f"{defense}__resrec__s0.json"]
    return json.loads((run_dir / "cells" / cells[0]).read_text())


def assert_noise_cell(record: dict, defense: str, options: dict) -> None:
    """A measured cell of an image-domain noise defense: its options recorded, a real (non-identity)
    masked view, accuracy and reconstruction metrics in range."""
    assert record["defense"] == defense and record["attack"] == "resrec"
    assert record["status"] == "ok", record
    assert record["defense_options"] == options
    assert record["domain"] == "image" and record["protected"] is True
    assert 0.0 <= record["accuracy"]["orl"]["accuracy_mean"] <= 1.0
    assert record["privacy"]["S1"] > 0  # the published view differs from the face: not identity
    assert 0.0 < record["privacy"]["MSE"] < 1.0


@pytest.fixture
def restored_registry():
    """Registrations a test adds in this process (and its module ``tmpl_unit``) are forgotten."""
    saved = {reg: dict(reg._entries) for reg in (DEFENSES, ATTACKS, DATASETS)}
    yield
    for reg, entries in saved.items():
        reg._entries.clear()
        reg._entries.update(entries)
    sys.modules.pop("tmpl_unit", None)


def import_file(path: Path, module: str):
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generated_plugin_is_a_working_defense(tmp_path, restored_registry):
    path = new_defense("tmpl_unit", tmp_path)
    assert path == tmp_path / "tmpl_unit.py"
    source = path.read_text()
    assert "ALGORITHMS" in source and "replace this" in source
    mod = import_file(path, "tmpl_unit")
    assert "ALGORITHMS.md" in mod.__doc__ and "fill in" in mod.__doc__

    d = DEFENSES.create("tmpl_unit")
    assert type(d).__name__ == "TmplUnit" and type(d).__module__ == "tmpl_unit"
    assert (type(d).__doc__ or "").strip()
    assert d.name == "tmpl_unit" and d.domain == "image" and d.protected is True
    assert d.options.strength == 0.1
    # fit, train_step and leak are the contract's defaults, inherited, not stubs
    for method in ("fit", "train_step", "leak", "test_encode"):
        assert getattr(type(d), method) is getattr(Defense, method), method
        assert f"def {method}(" in source  # shown as a commented pointer

    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    r = d.encode(x, torch.Generator().manual_seed(0))
    assert r.shape == x.shape and r.dtype == x.dtype
    assert 0 <= float(r.min()) and float(r.max()) <= 1
    assert not torch.allclose(r, x)  # a real transform, not the identity
    assert 0.05 < float((r - x).std()) < 0.15  # noise of std ~strength (clipping shrinks it)
    assert torch.equal(d.encode(x, torch.Generator().manual_seed(0)), r)  # randomness is passed
    assert not torch.equal(d.encode(x, torch.Generator().manual_seed(1)), r)
    assert torch.equal(DEFENSES.create("tmpl_unit", strength=0.0).encode(x, torch.Generator()), x)
    assert torch.equal(d.view(r), r)

    with pytest.raises(ConfigError, match="tmpl_unit strength must be >= 0"):
        DEFENSES.create("tmpl_unit", strength=-0.1)
    with pytest.raises(ConfigError, match="strength"):
        DEFENSES.create("tmpl_unit", strength=float("nan"))


@pytest.mark.parametrize("name, cls", [("my_defense", "MyDefense"), ("defense", "DefensePlugin"),
                                       ("_x2", "X2"), ("_2", "Defense2"), ("tensor", "TensorPlugin")])
def test_class_names_never_shadow_the_template(name, cls):
    assert class_name(name) == cls
    compile(render(name), f"{name}.py", "exec")


def test_bad_names_and_existing_files_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "new-defense" in capsys.readouterr().out
    # a registered defense: one line naming its file, and nothing written
    proc = bench_here("new-defense", "ppfr_fd")
    assert_one_line_error(proc, "defense 'ppfr_fd' exists already",
                          str(Path("defenses") / "ppfr_fd.py"), "choose another name")
    for name, needle in [("adamixup", "defense 'adamixup' exists already"),  # registered as variants
                         ("bdct", "bdct.py exists already"),  # a module of defenses/, not a defense
                         ("2fast", "must be a Python identifier"), ("my-defense", "identifier"),
                         ("class", "identifier"), ("all", "identifier")]:
        assert main(["new-defense", name]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    kept = tmp_path / "mine.py"
    kept.write_text("# my work\n")
    with pytest.raises(BenchError, match="mine.py exists already"):
        new_defense("mine", tmp_path)
    assert kept.read_text() == "# my work\n"
    with pytest.raises(BenchError, match="is a file"):
        new_defense("other", kept)
    (tmp_path / "pkg").mkdir()
    with pytest.raises(BenchError, match="pkg exists already"):
        new_defense("pkg", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.py", "pkg"]


@pytest.mark.slow
def test_new_defense_in_the_package_passes_the_suite_and_runs_a_cell(tmp_path, restored_registry):
    """`bench new-defense NAME` alone: the registry-parametrised tests and `bench run` see it."""
    name = f"tmpl_{uuid.uuid4().hex[:8]}"  # unique: other test runs may share this checkout
    target = defenses_dir() / f"{name}.py"
    assert not target.exists()
    try:
        made = bench_here("new-defense", name)  # in this process: the CLI's own code path
        assert made.returncode == 0, made.stderr
        assert target.is_file()
        assert f"python -m bench run --defenses {name} --attacks resrec" in made.stdout
        again = bench_here("new-defense", name)  # registers it here; restored_registry forgets it
        assert_one_line_error(again, f"defense '{name}' exists already", "choose another name")

        # the tests parametrised over DEFENSES.names() collect and pass the new defense (`-n 0`:
        # in one process; two xdist workers would each import the whole harness for 2 tests)
        tests = run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-n", "0",
                    "tests/test_registry.py", "tests/test_plan.py", "-k", name)
        assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
        for test in ("test_registry.py::test_every_defense_builds_with_defaults_and_has_a_docstring",
                     "test_plan.py::test_shapes_known_before_fit_match_the_fitted_defense"):
            assert f"PASSED tests/{test}[{name}]" in tests.stdout, tests.stdout[-3000:]

        cell = bench_here("run", "--defenses", name, "--attacks", "resrec", "--results",
                          str(tmp_path), "--no-progress", *CELL)  # the module made above
        assert cell.returncode == 0, cell.stderr[-3000:]
        assert name in cell.stdout  # its row in the printed table
        assert_noise_cell(read_cell(tmp_path, name), name, {"strength": 0.1})
    finally:
        target.unlink(missing_ok=True)
        sys.modules.pop(f"defenses.{name}", None)
        for pyc in (target.parent / "__pycache__").glob(f"{name}.*.pyc"):
            pyc.unlink()
    assert not list(target.parent.rglob(f"{name}*"))


def venv_python(tmp_path: Path) -> str:
    """A fresh virtual environment that sees this interpreter's packages (torch, …) and installs
    only what a test puts in it; nothing is downloaded."""
    venv = tmp_path / "venv"
    # --without-pip: pip and setuptools come from our packages too (ensurepip's bundled setuptools
    # may be too old to build a wheel without the `wheel` package)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, capture_output=True, timeout=300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # when this interpreter is itself a venv, --system-site-packages shows the base interpreter's
    # packages, not ours: add our site folders (and their .pth files) explicitly
    purelib = run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    ours = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    Path(purelib, "_faceprivbench_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    return str(python)


@pytest.mark.slow
def test_external_package_registers_a_defense_through_the_entry_point(tmp_path):
    """A real package declaring `[project.entry-points."faceprivbench.defenses"]`, pip-installed
    into a fresh venv: `bench list` shows its defense and `bench run` measures a cell of it."""
    load_plugins()
    assert "dummy_noise" not in DEFENSES  # only the venv below has the package
    python = venv_python(tmp_path)
    pkg = shutil.copytree(FIXTURE, tmp_path / "pkg")  # pip builds in the source tree: use a copy
    pip = run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
              str(pkg), env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]

    results = tmp_path / "results"
    run_cell = ["run", "--defenses", "dummy_noise", "--attacks", "resrec", "--results", str(results),
                "--no-progress", *CELL]
    commands = [["list"], run_cell, [*run_cell, "--set", "defenses.dummy_noise.amplitude=2"]]
    # the three commands in one interpreter of the venv (each `python -m bench` would import torch
    # and the harness again, ~5 s): `main` is what `python -m bench` calls, exit status included
    env = {"PYTHONPATH": str(ROOT)}  # this checkout's harness, whatever the venv sees installed
    driver = run(python, "-c", VENV_DRIVER, json.dumps(commands), cwd=tmp_path, env=env)
    assert driver.returncode == 0, driver.stderr[-3000:]
    listed, cell, bad = (subprocess.CompletedProcess(c, *r)
                         for c, r in zip(commands, json.loads(driver.stdout.splitlines()[-1])))
    assert listed.returncode == 0, listed.stderr
    rows = {ln.split()[0]: ln for ln in listed.stdout.splitlines() if ln.startswith("  ")}
    assert "Dummy third-party defense" in rows.get("dummy_noise", ""), listed.stdout
    assert "ppfr_fd" in rows  # the built-in plugins are still there
    assert cell.returncode == 0, cell.stderr[-3000:]
    assert_noise_cell(read_cell(results, "dummy_noise"), "dummy_noise", {"amplitude": 0.2})
    assert_one_line_error(bad, "dummy_noise amplitude must be in [0, 1]")


#: run in the venv: ``bench.cli.main`` on each command of argv[1] (JSON), printing one JSON line of
#: ``[exit status, stdout, stderr]`` per command
VENV_DRIVER = """
import contextlib, io, json, sys
from bench.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    out.append([rc, o.getvalue(), e.getvalue()])
print(json.dumps(out))
"""
