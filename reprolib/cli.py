"""Command line: ``python -m reprolib {data,teacher,train,sweep,explain} ...``.

Every command prints its result as one JSON object on stdout (progress bars go
to stderr). A :class:`~reprolib.errors.ReproError` is printed as
``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ReproError
from .io import check_output_dir, check_threads, print_json
from .devices import DEVICE_HELP, Execution


def _print_json(obj) -> None:
    # Strict JSON: NaN and infinities are printed as null (io.dumps).
    print_json(obj)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that builds a world."""
    p.add_argument("--world", default="mini", help="mini (default) or paper")
    p.add_argument("--preset", default="quick", help="smoke, quick (default) or full")
    p.add_argument("--variant", default=None,
                   help="a named world variant (mini world: the precondition ladder's rungs; "
                        "default: the book's main world)")
    p.add_argument("--rho", "--contamination-rate", dest="contamination_rate", type=float, default=None,
                   help="contamination rate in [0, 1]")
    p.add_argument("--val-digits", dest="val_digits", default=None, help="random (oracle, default) or correlated")
    p.add_argument("--subtask-classes", dest="subtask_classes", type=_int_list, default=None,
                   help="comma-separated class indices of the foundation task")
    p.add_argument("--pool-per-class", dest="pool_per_class", type=int, default=None)
    p.add_argument("--test-per-class", dest="test_per_class", type=int, default=None)
    p.add_argument("--artifact-size", dest="artifact_size", type=int, default=None)
    p.add_argument("--artifact-corner", dest="artifact_corner", default=None)
    p.add_argument("--seed", type=int, default=None)


DATA_KEYS = ("contamination_rate", "val_digits", "subtask_classes", "pool_per_class",
             "test_per_class", "artifact_size", "artifact_corner", "seed")


def config_from_args(args: argparse.Namespace, keys=DATA_KEYS):
    from .config import make_config

    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return make_config(args.world, args.preset, getattr(args, "variant", None), **overrides)


def cmd_data_summary(args) -> int:
    from .worlds import build_world

    cfg = config_from_args(args)
    world = build_world(cfg.data, cfg.seed)
    _print_json(world.summary())
    return 0


def cmd_teacher(args) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise ReproError(f"--epochs {args.epochs} must be a positive integer (the mini teacher's "
                         "epochs; leave it out for the recipe's)")
    if args.world == "mini" and args.teacher_weights is not None:
        raise ReproError("--teacher-weights is for the paper world's pretrained teachers; the mini "
                         "world's teacher is trained by reprolib: leave it out")
    if args.world == "mini" and args.teacher not in (None, "mini-teacher"):
        raise ReproError(f"--teacher {args.teacher} is for the paper world; the mini world's "
                         "teacher is the mini teacher: leave --teacher out")
    if args.world != "mini":
        if args.epochs is not None:
            raise ReproError("--epochs is for the mini teacher; the paper world's teacher is "
                             "pretrained: leave it out")
        from .teacher import build_teacher

        cfg = config_from_args(args)
        build_teacher(cfg.replace(teacher=args.teacher or cfg.teacher, teacher_weights=args.teacher_weights))
        _print_json({"teacher": args.teacher or cfg.teacher, "loaded": True})
        return 0
    import dataclasses

    from .teacher import recipe, teacher_report

    name = args.recipe
    if name is None:   # the teacher of the chosen preset and world variant (default: the book's main world)
        from .config import make_config

        name = make_config("mini", args.preset, args.variant).teacher_recipe
    tcfg = recipe(name)
    if args.epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=args.epochs)
    _print_json(teacher_report(tcfg, progress=not args.quiet))
    return 0


def cmd_data_check(args) -> int:
    from .sources import fashion_mnist_folder, load_fashion_mnist

    folder = fashion_mnist_folder(download=not args.no_download)
    arrays = load_fashion_mnist()
    _print_json({"fashion_mnist": str(folder), "train": int(len(arrays["train_x"])),
                 "test": int(len(arrays["test_x"]))})
    return 0


TRAIN_KEYS = DATA_KEYS + ("method", "lambda_layer", "lambda_task", "epochs", "batch_size",
                          "student_norm", "vid_variance", "teacher", "student", "teacher_weights")


def cmd_train(args) -> int:
    from .cohort import train_run

    cfg = config_from_args(args, TRAIN_KEYS)
    check_threads(args.threads, "--threads")   # the error names the option
    execution = Execution(device=args.device, threads=args.threads)
    check_output_dir(args.out, "--out")        # before any work, not when saving
    metrics = train_run(cfg, args.out, execution=execution, progress=not args.quiet)
    shown = {k: v for k, v in metrics.items() if k not in ("curves", "config")}
    _print_json(shown)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reprolib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect a data world")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    summary = data_sub.add_parser("summary", help="counts of images, digits and digit=label per split")
    add_data_options(summary)
    summary.set_defaults(func=cmd_data_summary)
    check = data_sub.add_parser("check", help="find Fashion-MNIST (or say how to get it) and decode it once")
    check.add_argument("--no-download", action="store_true", help="do not try torchvision's download")
    check.set_defaults(func=cmd_data_check)

    teacher = sub.add_parser("teacher", help="train (or load) the teacher and report its accuracy")
    add_data_options(teacher)
    teacher.add_argument("--epochs", type=int, default=None)
    teacher.add_argument("--recipe", default=None,
                         help="mini teacher recipe: 1-epoch, 10-epoch, 20-epoch or smoke (default: the "
                              "world variant's)")
    teacher.add_argument("--teacher", default=None)
    teacher.add_argument("--teacher-weights", dest="teacher_weights", default=None)
    teacher.add_argument("--quiet", action="store_true")
    teacher.set_defaults(func=cmd_teacher)

    train = sub.add_parser("train", help="distil one student")
    add_data_options(train)
    train.add_argument("--method", default="kd", help="kd, at, vid, vkd or subdistill")
    train.add_argument("--lambda-layer", dest="lambda_layer", type=float, default=None)
    train.add_argument("--lambda-task", dest="lambda_task", type=float, default=None,
                       help="weight of a cross-entropy term on labels (default 0: none, D6)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    train.add_argument("--student-norm", dest="student_norm", default=None, help="standardize or center (D1)")
    train.add_argument("--vid-variance", dest="vid_variance", default=None, help="learned or fixed (D5)")
    train.add_argument("--teacher", default=None)
    train.add_argument("--student", default=None)
    train.add_argument("--teacher-weights", dest="teacher_weights", default=None)
    train.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--out", required=True, help="run folder (metrics.json, student.pt)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train)

    for module in ("reprolib.sweep", "reprolib.explain"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
