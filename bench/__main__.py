"""python -m bench {run,speed,report,robustness,calibrate,explain,train-speed,list}: parse the command line and dispatch. Nothing else."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from bench.config import (
    RUN_FLAGS,
    SPEED_FLAGS,
    ConfigError,
    add_dataclass_args,
    add_flags,
    build_configs,
    speed_command_options,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Train, measure and export steel surface defect classifiers (NEU-CLS).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_speed(sub)
    _add_others(sub)
    return p


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="train every model with one recipe, report, export the winners to ONNX",
        description="Train, evaluate, measure and export. Re-running the same command resumes.",
    )
    run.add_argument("--config", help="TOML file with recipe/run keys (flag names)")
    add_flags(run, RUN_FLAGS)


def _add_speed(sub) -> None:
    speed = sub.add_parser(
        "speed",
        help="measure torch and ONNX Runtime speed, no training",
        description="The speed step and deployment variants of `bench run` on random weights "
        "or a checkpoint; the flags it shares with `bench run` mean the same.",
    )
    add_flags(speed, SPEED_FLAGS)


def _add_others(sub) -> None:
    """train-speed, robustness, report, calibrate, explain, list."""
    from bench.measure.trainspeed import TrainSpeedOptions

    ts = sub.add_parser(
        "train-speed",
        help="training img/s of each model in fp32 vs mixed precision (and compile), as ratios",
        description="Trains each model a few steps per precision, interleaved in one process, "
        "and prints img/s and the ratio to fp32 with the CPU's instruction sets.",
    )
    add_dataclass_args(ts, TrainSpeedOptions, title="train-speed")

    rb = sub.add_parser(
        "robustness",
        help="accuracy of a run's models (or one .onnx file) on corrupted test images",
        description="The corruption benchmark (SNR levels, corruptions x severities) on the "
        "held-out test images of an existing run folder or exported ONNX file.",
    )
    from bench.cli.robustness import add_arguments

    add_arguments(rb)

    rp = sub.add_parser(
        "report",
        help="re-render a run's report.md/html and CSVs from its results.json (no torch)",
        description="Writes results.csv, speed.csv, report.md and report.html of a finished run "
        "from its results.json alone, byte for byte as the run wrote them.",
    )
    from bench.cli.report import add_arguments as add_report_arguments

    add_report_arguments(rp)

    from bench.cli.postrun import add_parsers

    add_parsers(sub)  # calibrate, explain

    ls = sub.add_parser("list", help="the model registry with params and GFLOPs")
    ls.add_argument("--image-size", type=int, default=200)
    ls.add_argument("--num-classes", type=int, default=6)


def _light_parser(command: str) -> argparse.ArgumentParser:
    # Without the other subcommands: `bench train-speed`'s options import torch, while
    # `bench robustness MODEL.onnx` and `bench report RUN_DIR` must run where it is not installed.
    from bench.cli import report, robustness

    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="command", required=True)
    {"robustness": robustness, "report": report}[command].add_arguments(sub.add_parser(command))
    return p


LIGHT = ("robustness", "report")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    light = argv[:1] and argv[0] in LIGHT and not {"-h", "--help"} & set(argv)
    args = (_light_parser(argv[0]) if light else build_parser()).parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    try:
        if args.command == "run":
            return _run(args, console)
        if args.command == "speed":
            return _speed(args, console)
        if args.command == "list":
            return _list(args, console)
        if args.command == "train-speed":
            return _train_speed(args, console)
        if args.command == "robustness":
            return _robustness(args, console)
        if args.command == "report":
            return _report(args, console)
        if args.command in ("calibrate", "explain"):
            from bench.cli.postrun import dispatch

            return dispatch(args, console)
    except ConfigError as e:
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    return 2


def _run(args, console) -> int:
    from bench.cli.run import run
    from bench.registry import WeightsUnavailableError
    from bench.report.console import print_tables
    from bench.ui import make_reporter

    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        recipe, opts = build_configs(values, config_file=args.config)
        reporter = make_reporter()
        try:
            results, code = run(recipe, opts, reporter)
        finally:
            reporter.close()
    except (ValueError, WeightsUnavailableError, FileNotFoundError) as e:
        # Bad flags, bad data (neu.dataset.DatasetError is a ValueError), missing weights.
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    except KeyboardInterrupt:
        # Every file is written atomically and each epoch checkpointed: nothing is lost.
        console.print("interrupted: run the same command again to resume", markup=False)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return code  # torchrun: rank 0 prints for the run
    print_tables(results, console)
    out = opts.out or f"runs/{results['name']}"
    console.print(
        f"results: {out}/results.json, report: {out}/report.md (with plots: {out}/report.html)",
        markup=False,
    )
    return code


def _speed(args, console) -> int:
    from bench.cli.speed import speed_command
    from bench.report.console import print_tables
    from bench.ui import make_reporter
    from exports.runtime import ProviderUnavailableError

    opts = speed_command_options({k: v for k, v in vars(args).items() if k != "command"})
    reporter = make_reporter()
    try:
        results, out = speed_command(opts, reporter)
    except (ValueError, FileNotFoundError, ProviderUnavailableError) as e:
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    finally:
        reporter.close()
    print_tables(results, console)
    console.print(f"results: {out}/results.json, report: {out}/report.md", markup=False)
    return 0


def _robustness(args, console) -> int:
    from bench.cli.robustness import robustness_command
    from bench.report.robustness import summary_table

    try:
        results, out = robustness_command(args, log=lambda m: console.print(m, markup=False))
    except (ValueError, OSError) as e:  # bad flags, DatasetError, ModelFormatError
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume", markup=False)
        return 130
    from rich.table import Table

    head, body = summary_table(results["robustness"])
    table = Table(title="accuracy on corrupted test images")
    for h in head:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    console.print(f"results: {out}/results.json, {out}/robustness.csv, {out}/report.html",
                  markup=False)  # fmt: skip
    return 0


def _report(args, console) -> int:
    from bench.cli.report import report_command

    try:
        written = report_command(args.run_dir, plots=args.plots)
    except (ValueError, OSError) as e:
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    console.print("wrote " + ", ".join(str(p) for p in written), markup=False)
    return 0


def _train_speed(args, console) -> int:
    from rich.table import Table

    from bench.measure.trainspeed import TrainSpeedOptions, table_rows, train_speed

    opts = TrainSpeedOptions(**{k: v for k, v in vars(args).items() if k != "command"})
    results = train_speed(opts, log=lambda m: console.print(m, markup=False))
    env = results["environment"]
    head, body = table_rows(results)
    table = Table(
        title=f"training speed, batch {opts.batch_size}, {opts.image_size} px, "
        f"{env['torch_threads']} threads, {env['cpu']} ({env['cpu_isa_label']})"
    )
    for h in head:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    for reason in dict.fromkeys(r["amp_reason"] for r in results["rows"]):
        console.print(f"precision: {reason}", markup=False)
    for r in results["rows"]:
        if r["error"]:
            console.print(f"{r['model']} {r['variant']}: {r['error']}", markup=False)
    return 0


def _list(args, console) -> int:
    from rich.table import Table

    from bench.measure import count_gflops, count_params
    from bench.registry import DEFAULT_MODELS, build_model, imagenet_weights, list_models

    table = Table(title=f"registered models (GFLOPs at {args.image_size} px, batch 1)")
    for col in ("model", "in 'all'", "params (M)", "GFLOPs", "ImageNet weights"):
        table.add_column(col)
    for name in list_models():
        model = build_model(name, num_classes=args.num_classes)
        w = imagenet_weights(name)
        table.add_row(
            name,
            "yes" if name in DEFAULT_MODELS else "",
            f"{count_params(model) / 1e6:.2f}",
            f"{count_gflops(model, args.image_size):.2f}",
            str(w) if w else "-",
        )
    console.print(table)
    console.print("Any other torchvision classification model name also works.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
