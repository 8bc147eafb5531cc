"""Command line: ``python -m bench {run,list,report,leaderboard,compare,claims,new-defense,pack,unpack}``.

User mistakes (``BenchError``) print one line and exit with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from bench.core.errors import BenchError, ConfigError

EPILOG = """examples:
  python -m bench run                                   # none,ppfr_fd x cgan on the embedded ORL faces
  python -m bench run --defenses 'masking_*,none' --attacks cgan --seeds 0,1,2
  python -m bench run --defenses none,ppfr_fd,mixup_fd --attacks resrec --folds 4
  python -m bench run --set recognizer.epochs=5 --set attacks.cgan.epochs=2
  python -m bench run --preset paper --dataset folder --data-root /data/casia --dry-run
  python -m bench run --backend ray --address 10.0.0.5:6379 --jobs 8 --results /shared/results
  python -m bench list
  python -m bench report results/runs/<run-id>          # tables, figures, report.html
  python -m bench leaderboard                           # rebuild results/leaderboard.csv
  python -m bench compare results/runs/A results/runs/B --fail-on-regression
  python -m bench claims results/runs/A                 # the papers' claims against a run
  python -m bench new-defense my_defense                # a one-file defense plugin to fill in
  python -m bench pack results/runs/<run-id> -o run.tar # the run and every stage it trained
  python -m bench unpack run.tar --results results      # verify, then import stages and run
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Face-privacy benchmark: train defenses, attack them "
                                            "with reconstruction attacks, measure privacy and utility.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a defense x attack matrix and write its tables",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--defenses", default="none,ppfr_fd",
                     help="comma-separated defense names or wildcards, or 'all'")
    run.add_argument("--attacks", default="cgan",
                     help="comma-separated attack names, or 'all', or 'strongest' (per defense one "
                          "representative of each attack family that applies: ALGORITHMS §15)")
    run.add_argument("--dataset", default=None, help="dataset loader (default: the preset's, orl)")
    run.add_argument("--data-root", default=None, help="dataset folder for on-disk datasets")
    run.add_argument("--preset", default="quick", help="quick (CPU, minutes) or paper (GPU recipe)")
    run.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--folds", type=int, default=None,
                     help="identity-disjoint cross-validation: split the identities into N test "
                          "groups, train and attack once per fold (data.folds; combines with --seeds)")
    run.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    run.add_argument("--jobs", type=int, default=1, help="cells run in parallel (joblib)")
    run.add_argument("--backend", default="loky", choices=["loky", "ray", "dask"],
                     help="engine that runs the cells: loky (local processes; --jobs 1 runs in "
                          "this process), ray or dask (pip install 'faceprivbench[ray]' / "
                          "'[dask]'): a local instance for the run, or the cluster at --address")
    run.add_argument("--address", default=None,
                     help="join a running cluster: ray HOST:6379, ray://HOST:10001 or auto; dask "
                          "tcp://HOST:8786 (the --results folder must be a path every worker shares)")
    run.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                     help="how long --address gets to answer before the run stops (exit 2)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads (CPUs) each task asks for (default: this machine's cores "
                          "/ --jobs)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config value, e.g. recognizer.epochs=5 or "
                          "defenses.ppfr_fd.perm_mode=fixed_key (repeatable)")
    run.add_argument("--results", default="results", help="results folder (runs/ and cache/ go here)")
    run.add_argument("--run-id", default=None, help="run folder name (default: derived from the config)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--tensorboard", default=None, metavar="DIR",
                     help="also write every stage's training curves live to TensorBoard event "
                          "files under DIR (pip install 'faceprivbench[tensorboard]')")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the recognizers' backbones (recognizer.compile=true; worth "
                          "it on a GPU for long trainings, slower to start)")
    run.add_argument("--evaluator", default=None, choices=["none", "dlib"],
                     help="independent identity evaluator (dlib needs: pip install 'faceprivbench[dlib]')")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan instead of running: per cell and stage whether the store "
                          "already holds it, the model it trains, its parameters, FLOPs and hours "
                          "left; trains and writes nothing")
    # default: bench.plan.DEFAULT_TFLOPS (not imported here: the parser stays light)
    run.add_argument("--throughput-tflops", type=float, default=100.0, metavar="TFLOPS",
                     help="sustained training throughput the --dry-run hours assume (100: a bf16 "
                          "data-centre GPU; a laptop CPU sustains about 0.1)")

    sub.add_parser("list", help="list registered defenses, attacks, datasets and presets")

    rep = sub.add_parser("report", help="regenerate a run's tables, figures and report.html "
                                        "from its cell JSONs")
    rep.add_argument("run_dir", help="a folder under results/runs/")

    lb = sub.add_parser("leaderboard", help="rebuild <results>/leaderboard.csv from every run "
                                            "under <results>/runs",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    lb.add_argument("--results", default="results", help="results folder holding runs/")
    lb.add_argument("--output", default=None, help="where to write (default: <results>/leaderboard.csv)")
    lb.add_argument("--add", action="append", default=[], metavar="FILE",
                    help="first merge a results bundle from elsewhere (`pack --cells-only`): "
                         "verified, its records checked against the schema; its rows say which "
                         "bundle they came from (repeatable)")

    cmp = sub.add_parser("compare", help="differences of every setting and metric between two runs",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Prints B − A per defense × attack × metric with its 95 % "
                                     "interval and the p-value of a t-test over replicates (seeds × "
                                     "folds; paired when both runs have the same ones; Holm-"
                                     "adjusted; ≥ 3 replicates a side, or a same-settings "
                                     "reproduction check on the same items); '!' marks a significant "
                                     "change (adjusted p < 0.05), '▼' a change that is worse for the "
                                     "defender (bench/reporting/compare.py).")
    cmp.add_argument("run_a", help="run folder or run id (the reference)")
    cmp.add_argument("run_b", help="run folder or run id (the candidate)")
    cmp.add_argument("--results", default="results", help="where run ids are looked up (runs/<id>)")
    cmp.add_argument("--all", action="store_true", help="also list unchanged metrics")
    cmp.add_argument("--fail-on-regression", action="store_true",
                     help="exit 1 if an accuracy drops or a privacy metric gets worse "
                          "significantly (for CI)")

    cl = sub.add_parser("claims", help="check the papers' directional claims (ALGORITHMS §12) "
                                       "against a run: evidence with intervals and a verdict each",
                        description="Each claim: holds / contradicted / inconclusive / not in this "
                                    "run, from 95 % intervals of the contrasts it rests on "
                                    "(thresholds printed; ALGORITHMS §12.1: holds / contradicted "
                                    "need ≥ 3 replicates, else the command that would decide it is "
                                    "named). Writes claims.json in the run folder. Exit 0 whatever "
                                    "the verdicts unless --strict.")
    cl.add_argument("run_dir", help="run folder or run id")
    cl.add_argument("--results", default="results", help="where run ids are looked up (runs/<id>)")
    cl.add_argument("--strict", action="store_true",
                    help="exit 1 when a claim present in the run is contradicted")

    pk = sub.add_parser("pack", help="write one archive with a run's config, records, tables, "
                                     "report and every stage its cells used (safetensors + JSON, "
                                     "no pickle), with a manifest of hashes",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pk.add_argument("run", help="run folder or run id")
    pk.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="archive to write (.tar; .tar.gz or .tgz compresses)")
    pk.add_argument("--cells-only", action="store_true",
                    help="records, tables and report only, no stages (a results bundle)")
    pk.add_argument("--results", default="results", help="where run ids are looked up (the stages "
                                                         "are read from the run's results folder)")

    up = sub.add_parser("unpack", help="verify a bundle (hashes, sizes, paths, no pickles) and "
                                       "import its stages into <results>/cache and its run into "
                                       "<results>/runs",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    up.add_argument("bundle", help="a file written by `python -m bench pack`")
    up.add_argument("--results", default="results", help="results folder to import into")

    new = sub.add_parser("new-defense", help="write a one-file defense plugin to fill in "
                                             "(registered with no other edit)")
    new.add_argument("name", help="the defense's registry name, a Python identifier, e.g. my_defense")
    new.add_argument("--output", default=None, metavar="DIR",
                     help="folder to write NAME.py into (default: the defenses package, where "
                          "built-in plugins are found)")
    return p


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


def cmd_run(args: argparse.Namespace) -> int:
    from bench.backends import BackendSpec, check_backend
    from bench.config import resolve
    from bench.core.registry import ATTACKS, DATASETS, DEFENSES
    from bench.matrix import run_matrix
    from bench.plugins import load_plugins
    from bench.reporting.build import build_report
    from bench.reporting.cells import load_cells
    from bench.reporting.tables import format_table, report_notes, table2
    from bench.reporting.worst_case import underpowered_notes

    load_plugins()
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    extra: dict = {"data": {}}
    if args.dataset:
        extra["data"]["name"] = args.dataset
    if args.data_root:
        extra["data"]["root"] = args.data_root
    if args.seeds:
        extra["seeds"] = _seeds(args.seeds)
    if args.folds is not None:
        extra["data"]["folds"] = args.folds
    if args.device:
        extra["device"] = args.device
    if args.compile:
        extra["recognizer"] = {"compile": True}
    if args.evaluator:
        extra["metrics"] = {"evaluator": args.evaluator}
        if args.evaluator == "dlib":
            from metrics.dlib_evaluator import require_dlib

            require_dlib()  # fail before any training when the extra is missing
    cfg = resolve(args.preset, args.set, extra)
    DATASETS.get(cfg.data.name)
    defenses = DEFENSES.expand(args.defenses)
    attacks = _expand_attacks(args.attacks, defenses, cfg)
    for name in defenses:  # validate every option before any training starts
        DEFENSES.create(name, **_opts(cfg.defenses, name))
    for name in attacks:
        ATTACKS.create(name, **_opts(cfg.attacks, name))
    if args.tensorboard is not None:
        from bench.tensorboard import require_tensorboard

        require_tensorboard()  # fail before any training when the extra is missing
    backend = BackendSpec(args.backend, args.address, args.connect_timeout)
    check_backend(backend)  # installed, and its --address answers: before anything trains
    if args.dry_run:  # after every check above, before anything is trained or written
        from bench.plan import format_plan, plan_matrix

        if not args.throughput_tflops > 0:
            raise ConfigError(f"--throughput-tflops must be > 0, got {args.throughput_tflops}")
        print(format_plan(plan_matrix(cfg, defenses, attacks, Path(args.results)),
                          args.throughput_tflops))
        return 0
    run_dir = run_matrix(cfg, defenses, attacks, Path(args.results), args.run_id, args.jobs,
                         progress=not args.no_progress, backend=backend, threads=args.threads,
                         tensorboard=Path(args.tensorboard) if args.tensorboard else None)
    written = build_report(run_dir)
    records = load_cells(run_dir)
    print(format_table(table2(records)))
    for note in report_notes(records) + underpowered_notes(records):  # §15 floors
        print(f"note: {note}")
    print(f"wrote {written['table2']}, {written.get('report_html', 'no report.html')} and "
          f"{run_dir / 'cells'}")
    return 0


def strongest_attacks(defenses: list[str], cfg) -> tuple[list[str], dict[str, list[str]]]:  # noqa: ANN001
    """``--attacks strongest`` (ALGORITHMS §15): for each defense, one representative of each
    attack family that applies to it — the registered attacks (not variants, not oracle upper
    bounds) of the family in ``family_rank`` order, the first whose ``not_applicable`` is None.
    Returns the union (what the matrix runs: a cell whose attack does not apply to its defense is
    recorded ``n/a`` with its reason, at no cost) and the per-defense picks."""
    from bench.core.registry import ATTACKS, DEFENSES
    from bench.pipeline import not_applicable
    from bench.reporting.worst_case import FAMILIES

    candidates: dict[str, list[tuple[int, str, object]]] = {f: [] for f in FAMILIES}
    for name in ATTACKS.names():
        entry = ATTACKS.get(name)
        family = getattr(entry.factory, "family", "other")
        if entry.options or family not in candidates:
            continue  # variants fix options of a base attack that represents them
        attack = ATTACKS.create(name, **_opts(cfg.attacks, name))
        if getattr(attack, "uses_oracle", False):
            continue  # an upper bound with ground truth, not an attacker
        candidates[family].append((int(getattr(entry.factory, "family_rank", 0)), name, attack))
    picks: dict[str, list[str]] = {}
    for d in defenses:
        defense = DEFENSES.create(d, **_opts(cfg.defenses, d))
        defense.name = d
        picks[d] = [next((n for _, n, a in sorted(candidates[f], key=lambda c: c[:2])
                          if not_applicable(a, defense) is None), None) for f in FAMILIES]
        picks[d] = [n for n in picks[d] if n is not None]
    union = [n for f in FAMILIES for _, n, _ in sorted(candidates[f], key=lambda c: c[:2])
             if any(n in p for p in picks.values())]
    return union, picks


def _expand_attacks(spec: str, defenses: list[str], cfg) -> list[str]:  # noqa: ANN001
    """``--attacks``: registry names and wildcards, with ``strongest`` expanded per defense
    (:func:`strongest_attacks`; the picks are printed)."""
    from bench.core.registry import ATTACKS

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if "strongest" not in parts:
        return ATTACKS.expand(spec)
    union, picks = strongest_attacks(defenses, cfg)
    for d, names in picks.items():
        print(f"strongest: {d} → {', '.join(names)}")
    rest = [p for p in parts if p != "strongest"]
    out = union + [a for a in (ATTACKS.expand(rest) if rest else []) if a not in union]
    return out


def _opts(section: dict, name: str) -> dict:
    from bench.pipeline import plugin_options

    return plugin_options(section, name)


def _summary(doc: str | None, width: int = 96) -> str:
    """The first sentence of a docstring's first paragraph, on one line of at most ``width``."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = para.find(". ")
    text = para[:end + 1] if end >= 0 else para
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def _strength(factory: type) -> str:
    """An attack's ALGORITHMS §15 metadata for ``bench list``: family and strength floor."""
    floor = getattr(factory, "floor", None) or {}
    what = (", ".join(f"{m} ≥ {v:g}" for m, v in floor.items()) if floor
            else getattr(factory, "floor_note", "") or "none stated")
    return f"family {getattr(factory, 'family', 'other')}; floor on none (quick, ORL): {what}"


def cmd_list(args: argparse.Namespace) -> int:
    from bench.config import preset_names
    from bench.core.registry import ATTACKS, DATASETS, DEFENSES
    from bench.plugins import load_plugins

    load_plugins()
    for title, reg in (("defenses", DEFENSES), ("attacks", ATTACKS), ("datasets", DATASETS)):
        print(f"{title}:")
        for name in reg.names():
            entry = reg.get(name)
            if entry.options:  # a variant: say what it fixes rather than repeat its base's doc
                fixed = ", ".join(f"{k}={v}" for k, v in entry.options.items())
                print(f"  {name:24s}   variant: {fixed}")
                continue
            print(f"  {name:24s} {_summary(entry.factory.__doc__)}")
            if reg is ATTACKS:
                print(f"  {'':24s}   {_strength(entry.factory)}")
    print("presets:", ", ".join(preset_names()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.reporting.build import build_report
    from bench.reporting.cells import load_cells
    from bench.reporting.tables import format_table, report_notes, table2
    from bench.reporting.worst_case import underpowered_notes

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"run folder {run_dir} does not exist; see results/runs/")
    written = build_report(run_dir)
    records = load_cells(run_dir)
    print(format_table(table2(records)))
    for note in report_notes(records) + underpowered_notes(records):  # §15 floors
        print(f"note: {note}")
    for name, path in written.items():
        print(f"wrote {name:20s} {path}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.reporting.leaderboard import write_leaderboard

    if args.add:
        from bench.bundle import submit

        for bundle in args.add:
            res = submit(Path(bundle), Path(args.results))
            print(f"merged {bundle}: run {res.run_id}, {res.manifest.get('cells')} cells "
                  f"→ {res.run_dir}")
    path, table = write_leaderboard(Path(args.results), Path(args.output) if args.output else None)
    print(f"wrote {path}: {len(table)} rows from {table['runs'].str.split(';').explode().nunique()} run(s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.reporting.compare import compare_runs, format_comparison, resolve_run

    a, b = resolve_run(args.run_a, Path(args.results)), resolve_run(args.run_b, Path(args.results))
    comp = compare_runs(a, b)
    print(format_comparison(comp, show_all=args.all))
    return 1 if args.fail_on_regression and not comp.regressions.empty else 0


def cmd_claims(args: argparse.Namespace) -> int:
    from bench.reporting.claims import format_claims, run_claims
    from bench.reporting.compare import resolve_run
    from bench.rerun import deciding_command

    run_dir = resolve_run(args.run_dir, Path(args.results))
    results = run_claims(run_dir, deciding_command(run_dir))
    print(format_claims(results))
    print(f"wrote {run_dir / 'claims.json'}")
    contradicted = any(r.verdict == "contradicted" for r in results)
    return 1 if args.strict and contradicted else 0


def cmd_pack(args: argparse.Namespace) -> int:
    from bench.bundle import pack
    from bench.reporting.compare import resolve_run

    run_dir = resolve_run(args.run, Path(args.results))
    res = pack(run_dir, Path(args.output), cells_only=args.cells_only)  # stages: its results' cache/
    what = "records only" if args.cells_only else f"{res.stages} stage(s)"
    print(f"wrote {res.path}: {res.size / 1e6:.1f} MB, {res.files} files ({what}, "
          f"{res.run_files} run files) in {res.seconds:.1f} s")
    if res.missing:
        print(f"note: {len(res.missing)} stage(s) the cells used were not stored and are not in "
              f"the bundle; a re-run recomputes them")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from bench.bundle import unpack

    res = unpack(Path(args.bundle), Path(args.results))
    print(f"verified {res.files} files ({res.size / 1e6:.1f} MB) against the manifest")
    if not res.cells_only:
        print(f"imported {res.stages_imported} stage(s) into {Path(args.results) / 'cache'} "
              f"({res.stages_present} already there)")
    print(f"imported run {res.run_id} into {res.run_dir}")
    print(f"tables and report: python -m bench report {res.run_dir}")
    if not res.cells_only:
        print(f"re-run it (every stage is reused): {res.command}")
    return 0


def cmd_new_defense(args: argparse.Namespace) -> int:
    from bench.scaffold import new_defense, next_steps

    target = new_defense(args.name, Path(args.output) if args.output else None)
    print(next_steps(args.name, target))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        return {"run": cmd_run, "list": cmd_list, "report": cmd_report,
                "leaderboard": cmd_leaderboard, "compare": cmd_compare, "claims": cmd_claims,
                "new-defense": cmd_new_defense, "pack": cmd_pack,
                "unpack": cmd_unpack}[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are stored; run the same command again to resume",
              file=sys.stderr)
        return 130
