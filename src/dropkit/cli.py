"""The `dropkit` command: test the papers' claims, run configs, advise, report, sites."""

from __future__ import annotations

import argparse
import codecs
import importlib
import os
import re
import sys
from pathlib import Path

from dropkit import __version__
from dropkit._optional import MissingDependency
from dropkit.sites import describe

DEMO_BUDGETS = {"quick": "demo-quick", "default": "demo", "full": "demo-full"}
WORKERS_HELP = (
    "runs trained at once, in separate processes (default: one per GPU when there are any, "
    "each seeing its own, else up to 2)"
)
SEEDS_HELP = (
    "seeds per variant in every setting (default: the config's); on a finished run folder, more "
    "seeds than it holds trains only the new ones"
)


def _load_factory(spec: str):
    """A zero-argument builder for ``MODULE:FACTORY``: it calls the factory and checks that it
    returned an ``nn.Module``; every failure is ``SystemExit("dropkit sites: ...")``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(
            f"dropkit sites: expected MODULE:FACTORY (e.g. mypkg.models:build), got {spec!r}"
        )
    if os.getcwd() not in sys.path:  # like `python -m`: modules of the current project import
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"dropkit sites: cannot load {spec!r}: {err}") from err
    if not callable(factory):
        raise SystemExit(
            f"dropkit sites: {spec!r} is a {type(factory).__name__}, not a callable; FACTORY must "
            "be a class or function that builds the model with no arguments"
        )

    def build():
        from torch import nn

        try:
            model = factory()
        except Exception as err:  # the user's code: report it, no traceback
            raise SystemExit(
                f"dropkit sites: calling {spec!r} with no arguments raised "
                f"{type(err).__name__}: {err}"
            ) from err
        if not isinstance(model, nn.Module):
            raise SystemExit(
                f"dropkit sites: {spec!r} returned a {type(model).__name__}, not a "
                "torch.nn.Module; FACTORY must build and return the model"
            )
        return model

    return build


_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _executor_param(text: str) -> tuple[str, int | float | bool | str]:
    """``KEY=VALUE`` of ``--executor-param``: VALUE as an int or a float when it is plainly
    written as one (``60``, ``2.5``, ``1e3``), true / false, else the string as written
    (``slurm_account=0042``, ``slurm_partition=1_0``, ``slurm_time=08:00:00`` and ``nan`` stay
    strings, as an account or a partition may be named so)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY=VALUE with a submitit parameter as KEY, e.g. timeout_min=60"
        )
    if _PLAIN_INT.fullmatch(value):
        return key, int(value)
    if _PLAIN_FLOAT.fullmatch(value):
        return key, float(value)
    booleans = {"true": True, "false": False}
    return key, booleans.get(value.lower(), value)


def _executor_param_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor-param",
        type=_executor_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: a submitit parameter, over the config's executor block; repeat for more "
        "(e.g. --executor-param timeout_min=60 --executor-param slurm_partition=gpu)",
    )


def _executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        choices=["local", "slurm"],
        help="where jobs run (default: the config's executor block, else local)",
    )
    _executor_param_argument(parser)
    parser.add_argument(
        "--detach",
        action="store_true",
        help="slurm: submit and return at once; `dropkit status DIR`, then the same command "
        "again collects",
    )
    parser.add_argument(
        "--eager",
        action="store_true",
        help="train without torch.compile even where a setting's train.compile asks for it "
        "(the reference path; same results up to float rounding)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dropkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train the compared variants over seeds and report on each claim"
    )
    demo.add_argument(
        "--out", type=Path, help="run folder (default: runs/demo, runs/demo-quick, runs/demo-full)"
    )
    demo.add_argument("--seeds", type=int, help=SEEDS_HELP)
    demo.add_argument("--workers", type=int, help=WORKERS_HELP)
    _executor_arguments(demo)
    budget = demo.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="about a minute, smaller budget")
    budget.add_argument("--full", action="store_true", help="longer, more faithful budget")

    run = commands.add_parser("run", help="run an experiment config (YAML)")
    run.add_argument("config", type=Path)
    run.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    run.add_argument("--seeds", type=int, help=SEEDS_HELP)
    run.add_argument("--workers", type=int, help=WORKERS_HELP)
    run.add_argument(
        "--ranks", type=int,
        help="local: run each training-function trial as N data-parallel ranks (processes, "
        "torch's process group set up; on SLURM the executor's tasks_per_node x nodes)",
    )  # fmt: skip
    run.add_argument(
        "--threads", type=int,
        help="local: torch threads per process (default: the cores divided among them; on "
        "SLURM the job's cpus_per_task)",
    )  # fmt: skip
    run.add_argument(
        "--until-decided",
        action="store_true",
        help="train seeds in rounds of the config's count until every claim is decided (judged "
        "with a confidence sequence, valid after each round's look) or --max-seeds",
    )
    run.add_argument(
        "--max-seeds",
        type=int,
        help="with --until-decided: the most seeds (default 4x the config's)",
    )
    run.add_argument(
        "--allow-changed-code",
        action="store_true",
        help="go on with a run folder although a training function's file changed since it was "
        "run (its seeds then come from two versions of the code: recorded and reported)",
    )
    _executor_arguments(run)

    status = commands.add_parser(
        "status", help="per job of a run folder: done, failed (why), queued, running or not started"
    )
    status.add_argument("run_dir", type=Path)

    advise = commands.add_parser(
        "advise", help="probe a model briefly: early dropout, late s.d., standard or none?"
    )
    advise.add_argument("config", type=Path, help="YAML with data, model, train (or settings)")
    advise.add_argument("--setting", help="only this setting of an experiment config")
    advise.add_argument(
        "--budget",
        type=float,
        help="fraction of the intended run to probe (default: 5%% past the learning-rate warm-up)",
    )
    advise.add_argument("--seeds", type=int, default=3, help="seeds per probe (default 3)")
    advise.add_argument("--p", type=float, default=0.1, help="dropout rate to probe (0.1)")
    advise.add_argument("--out", type=Path, help="folder for the advice (runs/advise-<name>)")
    advise.add_argument(
        "--emit-config",
        type=Path,
        metavar="PATH",
        help="write the experiment that tests the recommendation (for `dropkit run`)",
    )
    advise.add_argument(
        "--executor", choices=["local", "slurm"], default="local",
        help="where a training function's probes run (default local)",
    )  # fmt: skip
    advise.add_argument(
        "--workers", type=int, default=1,
        help="local processes for a training function's probes (default 1; a built-in "
        "setting trains its seeds together in one process)",
    )  # fmt: skip
    _executor_param_argument(advise)

    report = commands.add_parser("report", help="rebuild report.md / report.json of a run folder")
    report.add_argument("run_dir", type=Path)

    sites = commands.add_parser("sites", help="print the dropout sites of a model")
    sites.add_argument("factory", help="MODULE:FACTORY, a callable returning an nn.Module")
    return parser


def _tolerant_console() -> None:
    """Reports and tables hold "−", "≥", "±": a console whose encoding cannot show every
    character (a Windows code page, the C locale) gets ``\\u2212`` escapes, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        encoding = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_console()
    args = _parser().parse_args(argv)
    if args.command == "sites":
        print(describe(_load_factory(args.factory)()))
        return 0

    from dropkit.experiments.builtin.demo_configs import builtin_config
    from dropkit.experiments.config.parse import load_config
    from dropkit.experiments.config.specs import ConfigError
    from dropkit.experiments.evidence.report import build_report
    from dropkit.experiments.runner import Interrupted, run_experiment

    try:
        if args.command == "advise":
            return _advise(args)
        if args.command == "report":
            rebuilt = build_report(args.run_dir)
            print(f"wrote {args.run_dir / 'report.md'} ({len(rebuilt['claims'])} claims)")
            return 0
        if args.command == "status":
            from dropkit.experiments.status import status_table

            print(status_table(args.run_dir))
            return 0
        if args.command == "demo":
            budget = "quick" if args.quick else "full" if args.full else "default"
            config = builtin_config(DEMO_BUDGETS[budget])
        else:
            config = load_config(args.config)
        if args.seeds is not None:
            if args.seeds < 2:
                raise ConfigError("--seeds must be >= 2: claims are paired comparisons")
            config = config.with_seeds(args.seeds)
        if args.executor is not None:
            config = config.with_executor(args.executor)
        config = config.with_executor_parameters(dict(args.executor_param))
        out = args.out or Path("runs") / config.name
        from dropkit.experiments.engine.executors.local import default_workers

        report = run_experiment(
            config, out, workers=default_workers() if args.workers is None else args.workers,
            ranks=getattr(args, "ranks", None), threads=getattr(args, "threads", None),
            detach=args.detach, eager=args.eager,
            allow_changed_code=getattr(args, "allow_changed_code", False),
            until_decided=_max_seeds(args, config.seeds),
        )  # fmt: skip
        if report is None:
            print(
                f"submitted; `dropkit status {out}` shows the jobs, and the same command again "
                "collects them and writes the report"
            )
            return 0
        print(f"report: {out / 'report.md'} ({report['wall_s_this_invocation']:.0f} s)")
        unmeasured = [c["id"] for c in report["claims"] if c["verdict"] == "not measured"]
        if report["failed_jobs"] or unmeasured:
            said = [f"{len(report['failed_jobs'])} job(s) failed"] if report["failed_jobs"] else []
            said += [f"claim(s) {', '.join(unmeasured)} not measured"] if unmeasured else []
            print(f"dropkit {args.command}: {'; '.join(said)} (exit 1)", file=sys.stderr)
            return 1
    except Interrupted as err:
        print(f"dropkit {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except (ConfigError, MissingDependency, FileNotFoundError, ValueError) as err:
        print(f"dropkit {args.command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full disk: name the path, keep what was finished
        where = err.filename or "the run folder"
        print(
            f"dropkit {args.command}: cannot write {where}: {err.strerror or err}; free space or "
            "pick a writable --out, then run the same command again (finished runs are kept)",
            file=sys.stderr,
        )
        return 2
    return 0


def _max_seeds(args: argparse.Namespace, seeds: int) -> int | None:
    """``--until-decided``'s most seeds (None without it; 4x the config's ``seeds`` unless
    ``--max-seeds`` gives it)."""
    from dropkit.experiments.config.specs import ConfigError

    max_seeds = getattr(args, "max_seeds", None)
    if not getattr(args, "until_decided", False):
        if max_seeds is not None:
            raise ConfigError("--max-seeds goes with --until-decided")
        return None
    return 4 * seeds if max_seeds is None else max_seeds


def _advise(args: argparse.Namespace) -> int:
    from dropkit.experiments.advise import advise, advise_function, emit_config
    from dropkit.experiments.base.io import write_atomic, write_json
    from dropkit.experiments.base.lock import one_writer
    from dropkit.experiments.builtin.data import load_dataset
    from dropkit.experiments.builtin.models import model_factory
    from dropkit.experiments.config.parse import load_settings
    from dropkit.experiments.config.specs import ConfigError, cli_executor_parameters
    from dropkit.experiments.preflight import check_function, preflight_settings, require

    # every refusal comes before the first folder is made
    if args.budget is not None and not 0.0 < args.budget <= 1.0:
        raise ConfigError(
            f"--budget {args.budget}: give the fraction of the run to probe, in (0, 1]"
        )
    if args.seeds < 2:
        raise ConfigError(f"--seeds {args.seeds}: give >= 2 seeds, the confidence needs a spread")
    if not 0.0 <= args.p <= 1.0:
        raise ConfigError(f"--p {args.p}: the dropout rate to probe must lie in [0, 1]")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1 process")
    executor_parameters = cli_executor_parameters(args.executor, dict(args.executor_param))
    settings = load_settings(args.config)
    if args.setting is not None:
        settings = tuple(s for s in settings if s.name == args.setting)
        if not settings:
            raise ConfigError(f"--setting {args.setting!r} is not a setting of {args.config}")
    if args.emit_config is not None and len(settings) > 1:
        raise ConfigError("--emit-config writes one setting's experiment: pick it with --setting")
    root = str(args.config.parent.resolve())
    functions = [s for s in settings if s.function is not None]
    for setting in functions:
        check_function(setting, root)
    if args.executor == "slurm":
        require("submitit", "slurm", "to submit the probes to SLURM")
    # data, batch size, model, scipy / matplotlib
    preflight_settings([s for s in settings if s.function is None])
    for setting in settings:
        out = args.out or Path("runs") / f"advise-{setting.name}"
        out.mkdir(parents=True, exist_ok=True)
        with one_writer(out):  # the advice's folder: one command at a time
            figure = "probe_held_out.png"
            (out / figure).unlink(missing_ok=True)  # never an older advice's figure

            def say(line: str, name: str = setting.name) -> None:
                print(f"advise {name}: {line}", file=sys.stderr, flush=True)

            if setting.function is not None:
                advice = advise_function(
                    setting, root, out.resolve(), budget=args.budget, seeds=args.seeds, p=args.p,
                    executor=args.executor, executor_parameters=executor_parameters,
                    workers=args.workers, figure=out / figure, progress=say,
                )  # fmt: skip
            else:
                data_name, model_spec, train = setting.recipe()
                data = load_dataset(data_name)
                advice = advise(
                    model_factory(model_spec, data.n_features, data.n_classes),
                    data,
                    train,
                    budget=args.budget,
                    seeds=args.seeds,
                    p=args.p,
                    figure=out / figure,
                    progress=say,
                )
            text = f"# dropkit advise: {setting.name}\n\n" + advice.to_markdown(
                figure if (out / figure).exists() else None
            )
            write_atomic(out / "advice.md", text)
            write_json(out / "advice.json", advice.to_dict())
            print(text)
            print(f"wrote {out / 'advice.md'}")
            if args.emit_config is not None:
                _emit(args.emit_config, emit_config(advice, setting, p=args.p), setting, root,
                      undecided=advice.recommendation == "undecided")  # fmt: skip
    return 0


def _emit(path: Path, config: dict, setting, root: str, *, undecided: bool = False) -> None:
    """Write the emitted experiment as YAML, with a header saying what it tests."""
    import yaml

    from dropkit.experiments.base.io import write_atomic

    header = (
        f"# Written by `dropkit advise`: tests its recommendation on setting {setting.name!r}.\n"
        "# Claims run in the paper's direction; the regime claim A1 gates the others.\n"
        f"# Run it with: dropkit run {path}\n"
    )
    if undecided:
        header += (
            "# The probe could not tell the regime: this experiment decides it. A1 confirmed:\n"
            "# underfitting, and A2/A3 test early dropout. A1 opposite: overfitting, and\n"
            "# standard dropout (the `dropout` arm) is the schedule to keep.\n"
        )
    if setting.function is not None and str(path.parent.resolve()) != root:
        header += (
            f"# The training function {setting.function} is imported from this file's folder:\n"
            f"# keep this file beside it ({root}).\n"
        )
        print(
            f"note: {path} is not beside {setting.function.partition(':')[0]}.py; move it to "
            f"{root} before `dropkit run`",
            file=sys.stderr,
        )
    write_atomic(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    print(f"wrote {path}: dropkit run {path}")


if __name__ == "__main__":
    sys.exit(main())
