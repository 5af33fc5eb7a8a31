"""Command line: ``adaptformer <command> ...``. Each command parses its options and calls library functions
with explicit arguments; user errors print ``error: <one line>`` and exit with status 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .adapters.adaptmlp import parse_scale
from .adapters.methods import AdaptConfig
from .errors import AdaptFormerError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return register


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument(
        "--model",
        default="adaptformer/vit-tiny-cifar10",
        help="timm model name or embedded backbone (default: %(default)s)",
    )
    group.add_argument("--checkpoint", default=None, help="local weights file (timm, MAE or reference layout)")
    group.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="random backbone weights (for counting parameters or smoke tests)",
    )


def method_config(args: argparse.Namespace) -> AdaptConfig:
    """The AdaptConfig given by the method options, mapped exactly as ``train`` maps them."""
    from .train.config import METHOD_FIELDS, TrainConfig

    values = {name: getattr(args, name) for name in METHOD_FIELDS if getattr(args, name) is not None}
    return TrainConfig(**values).adapt_config()


def _params_arguments(parser: argparse.ArgumentParser) -> None:
    from .train.config import METHOD_FIELDS, TrainConfig

    add_model_arguments(parser)
    add_dataclass_arguments(parser.add_argument_group("method"), TrainConfig, TRAIN_HELP, only=METHOD_FIELDS)
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the new head")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@command("params", "count total / trainable parameters of a method on a backbone", _params_arguments)
def run_params(args: argparse.Namespace) -> int:
    from .adapters.report import parameter_report
    from .builder import create_model

    # counting needs no weights: the architecture is built with random ones (nothing is downloaded)
    config = method_config(args)
    model = create_model(
        args.model,
        num_classes=args.num_classes,
        pretrained=False,
        checkpoint=args.checkpoint,
        config=config,
    )
    report = parameter_report(model)
    if args.json:
        print(json.dumps({"model": args.model, "method": config.method, **report.to_dict()}))
        return 0
    rows = [
        ("model", args.model),
        ("method", config.method),
        ("total", f"{report.total:,}"),
        ("trainable", f"{report.trainable:,}"),
        ("percent", f"{report.percent:.2f} %"),
        ("  adapters", f"{report.adapters:,}"),
        ("  prompts", f"{report.prompts:,}"),
        ("  head", f"{report.head:,}"),
        ("  norms", f"{report.norms:,}"),
        ("frozen", f"{report.frozen:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>14}")
    return 0


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    return parse


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"drop_path_rate\": 0.1}}', got {text!r}")
    return value


TYPE_PARSERS = {
    "dict | None": _json_mapping,
    "int": int,
    "float": float,
    "str": str,
    "int | None": _optional(int),
    "float | None": _optional(float),
    "str | None": _optional(str),
    "float | str": parse_scale,
}
TRAIN_HELP = {
    "dataset": "cifar10 | cifar100 | svhn | food101 | imagefolder | digits | lfw-faces",
    "data_root": "dataset directory (torchvision layout; see README)",
    "effective_batch": "batch per optimizer step over all processes (gradient accumulation fills it)",
    "blr": "base lr: lr = blr * effective_batch / 256",
    "out": "run directory (default runs/<dataset>-<method>)",
    "verify": "MD5-check CIFAR/SVHN files (--no-verify for re-packed files)",
    "precision": "auto | fp32 | bf16 | fp16 (auto: bf16 on CPUs with native bf16 and on recent GPUs)",
}


def add_dataclass_arguments(parser, cls, help_texts: dict[str, str], only: tuple[str, ...] | None = None) -> None:
    """One ``--option`` per dataclass field (or per field in ``only``), parsed by its type; unset options stay
    None (= the default)."""
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "required" if f.default is dataclasses.MISSING else f"default: {f.default}"
        text = f"{help_texts.get(f.name, '')} ({default})".strip()
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=TYPE_PARSERS[f.type], default=None, help=text)


def add_train_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults come from --config (then the dataclass)."""
    from .train.config import TrainConfig

    parser.add_argument(
        "--config", default=None, help="YAML file or packaged config name, e.g. image/cifar100_adaptformer"
    )
    add_dataclass_arguments(parser, TrainConfig, TRAIN_HELP)


def train_config_from_args(args: argparse.Namespace):
    from .train.config import FIELD_TYPES, load_config_file, make_config

    file_values = load_config_file(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in FIELD_TYPES if getattr(args, name, None) is not None}
    return make_config(file_values, overrides)


@command(
    "train",
    "train a method on a dataset with the paper's recipe (torchrun for several processes)",
    add_train_config_arguments,
)
def run_train(args: argparse.Namespace) -> int:
    from .train.loop import fit

    summary = fit(train_config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(summary))
    return 0


def _task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task file (.safetensors) written by train / save_task")
    parser.add_argument("--model", default=None, help="backbone name (default: the one recorded in the task)")
    parser.add_argument("--checkpoint", default=None, help="local backbone weights file")
    parser.add_argument(
        "--no-check-backbone",
        dest="check_backbone",
        action="store_false",
        help="load even if the backbone weights differ from those the task was trained on",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print JSON")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    _task_arguments(parser)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("--max-samples", type=int, default=None)


def _load_task(args: argparse.Namespace):
    from .inference import load_for_inference

    return load_for_inference(
        args.task,
        args.model,
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        check_backbone=args.check_backbone,
    )


@command("eval", "top-1 / top-5 of a task file on a dataset split", _eval_arguments)
def run_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_task

    loaded = _load_task(args)
    result = evaluate_task(
        loaded,
        args.dataset,
        args.data_root,
        train_split=args.split == "train",
        batch_size=args.batch_size,
        workers=args.workers,
        verify=args.verify,
        max_samples=args.max_samples,
    )
    if args.json:
        print(json.dumps({"task": args.task, "dataset": args.dataset, "split": args.split, **result}))
    else:
        print(
            f"{args.dataset} {args.split}: top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  "
            f"loss {result['loss']:.4f}  ({result['samples']} images)"
        )
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _task_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files and/or folders")
    parser.add_argument("--top-k", type=int, default=5)


@command("predict", "top-k labels for image files or folders", _predict_arguments)
def run_predict(args: argparse.Namespace) -> int:
    from .inference import collect_images, predict_files

    files = collect_images(args.images)
    loaded = _load_task(args)
    results = predict_files(loaded, files, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results))
        return 0
    for row in results:
        if "error" in row:
            print(f"{row['file']}  ERROR {row['error']}")
        else:
            print(f"{row['file']}  " + "  ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"]))
    return 1 if all("error" in row for row in results) else 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-report", help="report directory (default: %(default)s)")
    parser.add_argument("--config", default="demo", help="demo config (default: the packaged demo.yaml)")
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. linear,adaptformer")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of every method")


@command(
    "demo", "adapt the embedded ViT to a real offline dataset with every method; table, report, plot", _demo_arguments
)
def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    overrides = {"epochs": args.epochs} if args.epochs else {}
    if args.epochs:
        overrides["warmup_epochs"] = min(args.epochs, 2)
        overrides["eval_every"] = args.epochs
    run_demo(args.out, args.config, args.methods.split(",") if args.methods else None, overrides)
    print(f"report: {args.out}/report.md, plot: {args.out}/accuracy_vs_params.png")
    return 0


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    from .pretrain import PretrainConfig

    add_dataclass_arguments(
        parser,
        PretrainConfig,
        {
            "data": "ImageFolder root with train/ and test/ (e.g. the CIFAR-10 JPEG copy)",
            "out": "run directory; an existing checkpoint.pt there is resumed",
        },
    )
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")


@command(
    "pretrain", "train a small ViT from scratch (how the embedded backbone was made); resumable", _pretrain_arguments
)
def run_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import PretrainConfig, pretrain

    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig) if getattr(args, f.name) is not None
    }
    for required in ("data", "out"):
        if required not in values:
            raise AdaptFormerError(f"--{required} is required")
    card = pretrain(PretrainConfig(**values), resume=args.resume)
    print(json.dumps({k: card[k] for k in ("test_top1", "epochs_done", "train_minutes")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"adaptformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
        child.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AdaptFormerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
