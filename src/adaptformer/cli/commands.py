"""The commands. Each parses its options and calls library functions with explicit arguments."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from ..errors import AdaptFormerError
from .options import add_dataclass_options, add_grouped_options, add_method_options, given

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return register


# ---- params ------------------------------------------------------------------------------------------------
def _params_arguments(parser: argparse.ArgumentParser) -> None:
    from ..methods.registry import method_names

    group = parser.add_argument_group("backbone")
    group.add_argument(
        "--model", default="adaptformer/vit-tiny-cifar10", help="timm model name or embedded backbone (%(default)s)"
    )
    group.add_argument("--checkpoint", default=None, help="local weights file: only its architecture matters here")
    group.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="accepted; nothing is loaded")
    group.add_argument("--model-kwargs", type=_json_dict, default=None, help="extra timm.create_model keywords (JSON)")
    parser.add_argument("--method", default="adaptformer", help=f"{' | '.join(method_names())} (%(default)s)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the new head")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(method_option_names=add_method_options(parser))


def _json_dict(text: str) -> dict:
    from .options import value_parser

    return value_parser(dict)(text)


@command("params", "count total / trainable parameters of a method on a backbone", _params_arguments)
def run_params(args: argparse.Namespace) -> int:
    from ..adapted.model import create_model
    from ..methods.registry import make_method_config

    config = make_method_config(args.method, **given(args, args.method_option_names))
    # counting needs no weights: the architecture is built with random ones (nothing is downloaded)
    model = create_model(
        args.model, num_classes=args.num_classes, pretrained=False, config=config, timm_kwargs=args.model_kwargs
    )
    report = model.parameter_report()
    stages = model.stages()
    per_stage = model.parameters_per_stage()
    if args.json:
        widths = {stage.name: stage.width for stage in stages}
        by_stage = [{"stage": name, "width": widths[name], "parameters": n} for name, n in per_stage.items()]
        anatomy = {"adapter_input": model.anatomy.adapter_input, "blocks": model.depth}
        print(
            json.dumps({"model": args.model, "method": config.name, **report.to_dict(), "stages": by_stage, **anatomy})
        )
        return 0
    rows = [
        ("model", args.model),
        ("method", config.name),
        ("adapter input", f"{model.anatomy.adapter_input} ({model.depth} blocks)"),
        ("total", f"{report.total:,}"),
        ("trainable", f"{report.trainable:,}"),
        ("percent", f"{report.percent:.2f} %"),
        ("  adapters", f"{report.adapters:,}"),
        ("  prompts", f"{report.prompts:,}"),
        ("  head", f"{report.head:,}"),
        ("  norms", f"{report.norms:,}"),
        ("frozen", f"{report.frozen:,}"),
    ]
    if len(stages) > 1:  # a hierarchical backbone: where the block tensors sit, stage by stage
        at = [key for key, _ in rows].index("  adapters") + 1
        rows[at:at] = [
            (f"    {stage.name} (width {stage.width}, {len(stage.blocks)} blocks)", f"{per_stage[stage.name]:,}")
            for stage in stages
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>14}")
    return 0


# ---- describe ----------------------------------------------------------------------------------------------
def _describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="adaptformer/vit-tiny-cifar10", help="timm name, hf:<folder>, or embedded (%(default)s)"
    )
    parser.add_argument("--model-kwargs", type=_json_dict, default=None, help="extra timm.create_model keywords (JSON)")
    parser.add_argument(
        "--task", default=None, help="a task file: its backbone, and whether its anatomy is found again"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@command(
    "describe",
    "how a backbone is adapted: its blocks, where each adapter reads and writes, what it hosts",
    _describe_arguments,
)
def run_describe(args: argparse.Namespace) -> int:
    from ..adapted.describe import describe_backbone_text, describe_model
    from ..adapted.model import AdaptedModel, BackboneSource
    from ..backbones.timm import create_backbone

    if args.task:
        from ..tasks.files import recorded_backbone
        from ..tasks.format import read_task_file
        from ..tasks.hub import local_task_file

        header, _ = read_task_file(local_task_file(args.task))
        backbone, source = recorded_backbone(header.meta, args.task, pretrained=False)
        recorded = header.meta["backbone"]
    else:
        kwargs = dict(args.model_kwargs or {})
        backbone, source, recorded = create_backbone(args.model, pretrained=False, **kwargs), None, None
        source = BackboneSource(args.model, kwargs)
    description = describe_model(AdaptedModel(backbone, source), recorded)
    print(json.dumps(description) if args.json else describe_backbone_text(description))
    return 0


# ---- methods, merge ------------------------------------------------------------------------------------------
def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object per method")


@command(
    "methods", "every registered method: what it trains, its options, whether it merges, its paper", _methods_arguments
)
def run_methods(args: argparse.Namespace) -> int:
    from ..methods.registry import registered_methods

    for name, method in registered_methods().items():
        config = method.config()
        row = {
            "method": name,
            "label": config.title(),
            "description": method.description,
            "options": config.describe(),
            "merges": method.task.merge_refusal is None,
            "shares_backbone": method.config.shares_backbone,
            "tune_axes": {field: list(values) for field, values in method.config.tune_axes},
            "learning_rates": list(method.config.learning_rates),
            "reference": method.config.reference,
        }
        if args.json:
            print(json.dumps(row))
        else:
            merges = "merges" if row["merges"] else "does not merge"
            print(f"{name:<12} {method.description} [{merges}]\n{'':<12} {row['reference']}")
    return 0


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", help="the task file (.safetensors) to fold into its backbone")
    parser.add_argument("--out", required=True, help="folder for merged.safetensors and head.safetensors")
    parser.add_argument("--checkpoint", default=None, help="local weights of the task's backbone")


@command(
    "merge",
    "fold a task of a linear method (LoRA, DoRA, RepAdapter, FacT, BitFit, SSF, lntune) into its backbone's weights",
    _merge_arguments,
)
def run_merge(args: argparse.Namespace) -> int:
    from ..tasks.hub import local_task_file
    from ..tasks.merge import merge_task

    task = local_task_file(args.task)
    merged, head = merge_task(task, args.out, checkpoint=args.checkpoint, pretrained=args.checkpoint is None)
    print(f"merged backbone: {merged}\nhead-only task:  {head}")
    print(f"predict with: adaptformer predict --task {head} --checkpoint {merged} IMAGES")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    from ..export import FORMATS

    parser.add_argument("task", metavar="TASK", help="the task file (.safetensors) to export")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS), help="%(default)s")
    parser.add_argument("--out", required=True, help="folder for the program, preprocessing.json, labels.json")
    parser.add_argument("--merge", action="store_true", help="fold a linear method into the weights first")
    parser.add_argument("--checkpoint", default=None, help="local weights of the task's backbone")
    parser.add_argument(
        "--no-check-backbone",
        dest="check_backbone",
        action="store_false",
        help="export even if the backbone weights differ from those the task was trained on",
    )


@command(
    "export",
    "one task as one ONNX or torch.export program (dynamic batch), checked against the eager model, with its "
    "preprocessing and labels beside it",
    _export_arguments,
)
def run_export(args: argparse.Namespace) -> int:
    from ..export import export_task
    from ..tasks.hub import local_task_file

    exported = export_task(
        local_task_file(args.task), args.out, args.format, merge=args.merge, checkpoint=args.checkpoint,
        pretrained=args.checkpoint is None, check_backbone=args.check_backbone,
    )  # fmt: skip
    manifest = exported.manifest
    worst = max(manifest["check"]["max_abs_difference"].values())
    print(f"{manifest['format']} program: {exported.directory / manifest['file']}")
    print(f"checked at batch {manifest['check']['batch']}: outputs within {worst:.1e} of the eager model")
    print(f"predict with: adaptformer predict --exported {exported.directory} IMAGES")
    return 0


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", help="the task file (.safetensors) to push")
    parser.add_argument("--repo", required=True, help="the Hub repository, USER/NAME (created when missing)")
    parser.add_argument("--revision", default=None, help="a branch to push to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--message", default=None, help="the commit message")
    parser.add_argument("--folder", default=None, metavar="DIR", help="write the folder here instead of pushing")


@command(
    "push",
    "push a task to the Hugging Face Hub as a task repository (task file, config.json, model card); pull it back "
    "with --task hf:USER/NAME anywhere a task file is accepted",
    _push_arguments,
)
def run_push(args: argparse.Namespace) -> int:
    from ..tasks.hub import push_task, write_task_folder

    if args.folder:
        folder = write_task_folder(args.task, args.folder, repo=args.repo)
        print(f"task repository folder: {folder} (push it with: adaptformer push {args.task} --repo {args.repo})")
        return 0
    url = push_task(args.task, args.repo, revision=args.revision, private=args.private, message=args.message)
    print(f"pushed: {url}\nuse it with: adaptformer predict --task hf:{args.repo} IMAGES")
    return 0


# ---- train -------------------------------------------------------------------------------------------------
def add_train_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field and per method option; defaults come from --config (then the code)."""
    from ..data.registry import dataset_names
    from ..train.config import TrainConfig

    parser.add_argument(
        "--config", default=None, help="YAML file or packaged config name, e.g. image/cifar100_adaptformer"
    )
    group = parser.add_argument_group("training", f"datasets: {', '.join(dataset_names())}")
    names = add_dataclass_options(group, TrainConfig, skip={"method_config"})
    parser.set_defaults(train_option_names=names + add_method_options(parser))


def train_config_from_args(args: argparse.Namespace):
    from ..train.config import load_config_file, make_config

    file_values = load_config_file(args.config) if args.config else {}
    return make_config(file_values, given(args, args.train_option_names))


@command(
    "train",
    "train a method on a dataset with the paper's recipe (torchrun for several processes)",
    add_train_config_arguments,
)
def run_train(args: argparse.Namespace) -> int:
    from ..train.loop import fit

    summary = fit(train_config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(summary))
    return 0


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_arguments(parser)
    group = parser.add_argument_group("search", "Optuna over the method's axes (pip install adaptformer[tune])")
    group.add_argument(
        "--space",
        default=None,
        help="YAML file of field: [values] axes (default: the method's learning rates, crop recipe, crop scale, "
        "flips and its own axes: adaptformer methods --json lists them)",
    )
    group.add_argument("--time-budget", type=float, default=None, help="seconds after which no trial starts")
    group.add_argument("--trials", type=int, default=None, help="at most this many trials (default: no cap)")
    group.add_argument("--pruner", default="median", help="median | halving | none (%(default)s)")
    group.add_argument(
        "--folds",
        type=int,
        default=1,
        help="score every trial by K-fold validation, without pruning (default 1: one held-out split; two close "
        "best trials are settled by 5 folds where the budget allows)",
    )
    _add_ray_options(parser, "trials")


@command(
    "tune",
    "choose lr / crops / flips / the method's options on a validation split carved from the training set, then "
    "retrain the winner on the whole training set",
    _tune_arguments,
)
def run_tune(args: argparse.Namespace) -> int:
    from ..experiments.tune import load_space, tune

    cfg = train_config_from_args(args)
    if cfg.resume or cfg.overwrite:
        raise AdaptFormerError(
            "tune: --resume/--overwrite do not apply: a rerun skips finished trials and resumes the unfinished one"
        )
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.dataset}-{cfg.method}-tune"
    space = load_space(args.space) if args.space else None
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = tune(
        cfg.to_dict(),
        out,
        space,
        cfg.validation_split or 0.2,
        log=log,
        folds=args.folds,
        time_budget=args.time_budget,
        trials=args.trials,
        pruner=args.pruner,
        ray=_ray_options(args),
    )
    print((out / "tune.md").read_text())
    return 0 if result["test_score"] is not None else 1


# ---- eval / predict ----------------------------------------------------------------------------------------
def _task_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument(
            "--task",
            action="append",
            default=[],
            metavar="[NAME=]FILE|NAME",
            help="a task file, or the name of a task in --task-dir; repeat for several tasks on one backbone "
            "(files are named by their stem, or NAME=FILE)",
        )
        _task_store_arguments(parser, "every task file in DIR is listed (headers only) and loaded on first use")
    else:
        parser.add_argument("--task", required=True, help="task file (.safetensors) written by train / save_task")
    parser.add_argument("--model", default=None, help="backbone name (default: the one recorded in the task)")
    parser.add_argument("--checkpoint", default=None, help="local backbone weights file")
    parser.add_argument(
        "--no-check-backbone",
        dest="check_backbone",
        action="store_false",
        help="load even if the backbone weights differ from those the task was trained on",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (%(default)s)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (%(default)s)")
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="the frozen backbone's Linear layers in int8 (CPU; fp32 around them; tasks held as trained"
        + (", or as --task-precision says)" if several else ")"),
    )
    if not several:
        parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--batch-size", type=int, default=128, help="%(default)s")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    _task_arguments(parser)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the MD5 check of CIFAR/SVHN")
    parser.add_argument("--max-samples", type=int, default=None)
    video = parser.add_argument_group("video tasks")
    video.add_argument(
        "--test-clips", type=int, default=1, help="temporal clips per video, logits averaged (%(default)s)"
    )
    video.add_argument("--test-crops", type=int, choices=(1, 3), default=1, help="spatial crops per clip (%(default)s)")
    video.add_argument("--hmdb-split", type=int, default=1, help="hmdb51: official split 1-3 (train's --split)")
    video.add_argument("--train-list", default=None, help="videolist: training list")
    video.add_argument("--test-list", default=None, help="videolist: test list")
    video.add_argument("--label-map", default=None, help="videolist: class names, one per line")


def _load_task(args: argparse.Namespace):
    from ..inference import load_for_inference
    from ..tasks.hub import local_task_file

    return load_for_inference(
        local_task_file(args.task),
        args.model,
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        check_backbone=args.check_backbone,
        compile=args.compile,
        quantize=args.quantize,
    )


def _dataset_options(args: argparse.Namespace) -> dict:
    """Options of the dataset the task is evaluated on (video datasets take them; images take none)."""
    from ..data.registry import get_dataset

    if get_dataset(args.dataset).modality != "video":
        return {}
    return {
        "split": args.hmdb_split,
        "train_list": args.train_list,
        "test_list": args.test_list,
        "label_map": args.label_map,
    }


@command("eval", "top-1 / top-5 (multi-label: mAP) of a task file on a dataset split", _eval_arguments)
def run_eval(args: argparse.Namespace) -> int:
    from ..inference import evaluate_task

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
        test_clips=args.test_clips,
        test_crops=args.test_crops,
        **_dataset_options(args),
    )
    if args.json:
        print(json.dumps({"task": args.task, "dataset": args.dataset, "split": args.split, **result}))
    else:
        print(
            f"{args.dataset} {args.split}: {loaded.objective.describe(result)}  loss {result['loss']:.4f}  "
            f"({result['samples']} samples)"
        )
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _task_arguments(parser, several=True)
    parser.add_argument("images", nargs="+", metavar="FILE", help="image or video files and/or folders")
    parser.add_argument("--top-k", type=int, default=5)
    exported = parser.add_mutually_exclusive_group()
    exported.add_argument(
        "--onnx", default=None, metavar="DIR", help="run the ONNX program adaptformer export wrote in DIR (onnxruntime)"
    )
    exported.add_argument(
        "--exported", default=None, metavar="DIR", help="run the program adaptformer export wrote in DIR (any format)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label tasks: print every label at least this probable (default 0.5)",
    )


@command("predict", "top-k labels of one or several tasks for image or video files or folders", _predict_arguments)
def run_predict(args: argparse.Namespace) -> int:
    from ..inference import collect_media, open_media
    from ..objectives import DEFAULT_THRESHOLD, check_threshold

    threshold = check_threshold(DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    files = collect_media(args.images)
    predict = _exported_predict(args) if args.onnx or args.exported else _bank_predict(args)
    answered = 0
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        media, errors = open_media(chunk)
        opened = [path for path in chunk if str(path) not in errors]
        results = predict([media[str(p)] for p in opened], args.top_k, threshold)
        by_file: dict[str, list[dict]] = {}
        for row in results:
            if "error" in row:
                errors[str(opened[row["index"]])] = row["error"]
            else:
                by_file.setdefault(str(opened[row["index"]]), []).append(row)
        answered += len(by_file)
        for path in chunk:
            _print_predictions(str(path), by_file.get(str(path), []), errors.get(str(path)), args.json)
    return 0 if answered else 1


def _bank_predict(args: argparse.Namespace):
    bank, chosen = _bank_from_args(args)
    return lambda media, top_k, threshold: bank.predict(media, tasks=chosen or None, top_k=top_k, threshold=threshold)


def _exported_predict(args: argparse.Namespace):
    """``predict --onnx DIR`` / ``--exported DIR``: the exported program with its recorded preprocessing."""
    from ..export import ExportedTask

    if args.task or args.task_dir or args.model or args.checkpoint:
        raise AdaptFormerError(f"--{'onnx' if args.onnx else 'exported'}: the folder holds the whole task; drop "
                               "--task, --task-dir, --model and --checkpoint")  # fmt: skip
    task = ExportedTask.open(args.onnx or args.exported, want="onnx" if args.onnx else None)
    return task.predict


def _task_store_arguments(parser: argparse.ArgumentParser, task_dir_help: str) -> None:
    from ..runtime.precision import TASK_PRECISIONS

    parser.add_argument("--task-dir", default=None, metavar="DIR", help=task_dir_help)
    parser.add_argument(
        "--max-resident", type=int, default=None, help="most tasks with their tensors in memory at once (LRU)"
    )
    parser.add_argument(
        "--max-resident-mb", type=float, default=None, help="most megabytes of task tensors in memory at once (LRU)"
    )
    parser.add_argument(
        "--task-precision",
        choices=TASK_PRECISIONS,
        default="auto",
        help="resident tasks' adapters, prompts and updates: auto = the serving precision (bf16 halves their "
        "memory), fp32 = as trained, int8 = their weight matrices in int8 with a scale per row or column (half of "
        "bf16 again, lossy); heads stay fp32 (%(default)s)",
    )


def _bank_from_args(args: argparse.Namespace):
    """The task bank of ``predict`` and ``serve`` and the tasks named on the command line: the --task files and
    every task file of --task-dir, on their recorded (or --model) backbone, loaded on first use."""
    from ..bank import ResidencyLimits, TaskBank, parse_task_argument
    from ..tasks.hub import is_hub_task

    limits = ResidencyLimits(args.max_resident, args.max_resident_mb)
    if args.task_dir is not None and not Path(args.task_dir).is_dir():
        raise AdaptFormerError(f"--task-dir {args.task_dir}: not a directory")
    files, names = [], []
    for text in args.task:
        if args.task_dir is not None and "=" not in text and not Path(text).is_file() and not is_hub_task(text):
            names.append(text)  # a task of --task-dir, by name
        else:
            files.append(text)
            names.append(parse_task_argument(text)[0])
    if not files and args.task_dir is None and not args.model:
        raise AdaptFormerError("give --task FILE (repeatable), --task-dir DIR, or --model to start with no task")
    bank = TaskBank.open(
        files,
        args.task_dir,
        args.model,
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        check_backbone=args.check_backbone,
        limits=limits,
        task_precision=args.task_precision,
        quantize=args.quantize,
    )
    for name in names:
        bank.info(name)  # a name that is not a usable task of the bank: one line, before any work
    return bank, names


def _print_predictions(file: str, rows: list[dict], error: str | None, as_json: bool) -> None:
    if as_json:
        if error:
            print(json.dumps({"file": file, "error": error}))
        for row in rows:
            print(json.dumps({"file": file, **{k: v for k, v in row.items() if k != "index"}}))
        return
    if error:
        print(f"{file}  ERROR {error}")
        return
    cells = [_answer_cell(row) for row in rows]
    if len(rows) == 1:
        print(f"{file}  {cells[0]}")
    else:
        print(f"{file}  " + "  |  ".join(f"{row['task']}: {cell}" for row, cell in zip(rows, cells, strict=True)))


# ---- demo --------------------------------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="report directory (default: demo-report, demo-report-video)")
    parser.add_argument("--config", default=None, help="demo config (default: the packaged demo / demo_video)")
    parser.add_argument(
        "--video", action="store_true", help="the video demo: the embedded ViT inflated to clips of moving digits"
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. linear,adaptformer")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of every method")


@command(
    "demo", "adapt the embedded ViT to a real offline dataset with every method; table, report, plot", _demo_arguments
)
def run_demo_command(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    overrides = {"epochs": args.epochs} if args.epochs else {}
    if args.epochs:
        overrides["warmup_epochs"] = min(args.epochs, 2)
        overrides["eval_every"] = args.epochs
    out = args.out or ("demo-report-video" if args.video else "demo-report")
    config = args.config or ("demo_video" if args.video else "demo")
    run_demo(out, config, args.methods.split(",") if args.methods else None, overrides)
    print(f"report: {out}/report.md, plot: {out}/accuracy_vs_params.png")
    return 0


# ---- pretrain ----------------------------------------------------------------------------------------------
def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    from ..pretrain import PretrainConfig

    names = add_dataclass_options(parser.add_argument_group("pretraining"), PretrainConfig)
    parser.set_defaults(pretrain_option_names=names)


@command(
    "pretrain", "train a small ViT from scratch (how the embedded backbone was made); resumable", _pretrain_arguments
)
def run_pretrain(args: argparse.Namespace) -> int:
    from ..pretrain import PretrainConfig, pretrain

    values = given(args, args.pretrain_option_names)
    for required in ("data", "out"):
        if required not in values:
            raise AdaptFormerError(f"--{required} is required")
    card = pretrain(PretrainConfig(**values))
    print(json.dumps({k: card[k] for k in ("test_top1", "epochs_done", "train_minutes")}))
    return 0


# ---- serve -------------------------------------------------------------------------------------------------
def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", action="append", default=[], metavar="[NAME=]FILE", help="a task file; repeat")
    _task_store_arguments(
        parser,
        "every task file in DIR is listed at start-up (headers only) and loaded on first use; POST /tasks "
        "loads files from it and POST /tasks/refresh scans it again",
    )
    parser.add_argument("--model", default=None, help="backbone (default: the one the first task records)")
    parser.add_argument("--checkpoint", default=None, help="local backbone weights file")
    parser.add_argument("--no-check-backbone", dest="check_backbone", action="store_false")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--quantize", choices=("int8",), default=None, help="the frozen backbone's Linear layers in int8 (CPU)"
    )
    from ..serve.settings import ServeSettings

    parser.set_defaults(serve_settings=add_grouped_options(parser, ServeSettings))
    parser.add_argument("--api-key-file", default=None, help="read the API key from the first line of this file")
    ray = parser.add_argument_group("scale-out (pip install 'adaptformer[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve replicas of one backbone each")
    ray.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (%(default)s)")
    ray.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")


def serve_settings_from_args(args: argparse.Namespace):
    """The settings the command line gave (every other one at its default), the key read as ``read_api_key``
    says."""
    from ..serve.settings import ServeSettings, read_api_key

    options = given(args, args.serve_settings)
    options["api_key"] = read_api_key(options.get("api_key"), args.api_key_file)
    return ServeSettings(**options)


SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client", "fastapi_offline")


@command("serve", "serve task files over HTTP (FastAPI) with cross-task batching", _serve_arguments)
def run_serve(args: argparse.Namespace) -> int:
    from ..utils.extras import require

    for module in SERVE_MODULES:  # the [serve] extra, checked before anything starts
        require(module, "adaptformer serve")
    settings = serve_settings_from_args(args)  # every option checked before the backbone is built
    if args.replicas < 1:
        raise AdaptFormerError(f"--replicas {args.replicas}: expected a positive integer")
    if args.ray:
        from ..serve.ray_serve import run_on_ray

        return run_on_ray(_bank_options(args), args.task_dir, settings, args.replicas, args.ray_address)
    from ..serve.server import run_server

    bank, _ = _bank_from_args(args)
    run_server(bank, args.task_dir, settings)
    return 0


def _bank_options(args: argparse.Namespace) -> dict:
    """What each Ray replica needs to open the same bank as ``_bank_from_args``."""
    _bank_from_args(args)  # fail here, in one line, not inside a replica
    return {
        "tasks": list(args.task),
        "task_dir": args.task_dir,
        "model_name": args.model,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "precision": args.precision,
        "check_backbone": args.check_backbone,
        "max_resident": args.max_resident,
        "max_resident_mb": args.max_resident_mb,
        "task_precision": args.task_precision,
    }


# ---- experiments ---------------------------------------------------------------------------------------------
def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep file (base/grid/points), or a packaged name: sweeps/<name>")
    parser.add_argument("--out", required=True, help="directory of the runs (one sub-directory each)")
    parser.add_argument("--shard", default=None, help="i/n: run every n-th run starting at i (0-based)")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run over this many seeds (%(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs (and validate them) without training")
    _add_set_option(
        parser, "replace a field of the sweep's base (repeatable; the value is YAML), e.g. --set dataset=lfw-faces"
    )
    _add_ray_options(parser)


def _add_ray_options(parser: argparse.ArgumentParser, runs: str = "runs") -> None:
    group = parser.add_argument_group("Ray", f"the {runs} on Ray (pip install adaptformer[ray]); see README")
    group.add_argument("--ray", action="store_true", help=f"train the {runs} on Ray, as many at once as fit")
    group.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start a local Ray)")
    group.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each one asks Ray for (%(default)s)")
    group.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each one asks Ray for (%(default)s)")


def _ray_options(args: argparse.Namespace):
    from ..experiments.dispatch import RayOptions

    if not args.ray:
        if args.ray_address:
            raise AdaptFormerError("--ray-address: needs --ray")
        return None
    return RayOptions(args.ray_address, args.cpus_per_run, args.gpus_per_run).check()


def _add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set FIELD=VALUE`` (repeatable), parsed by ``_overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help=help)


def _overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        field, sep, text = pair.partition("=")
        if not sep or not field:
            raise AdaptFormerError(f"--set {pair!r}: expected FIELD=VALUE, e.g. --set dataset=lfw-faces")
        values[field.replace("-", "_")] = yaml.safe_load(text) if text else None
    return values


@command("sweep", "run a grid of training runs; reruns skip finished runs and resume unfinished ones", _sweep_arguments)
def run_sweep_command(args: argparse.Namespace) -> int:
    from ..experiments.sweep import load_sweep, run_sweep, shard

    overrides = _overrides(args.overrides)
    if args.dry_run:
        for run in shard(load_sweep(args.sweep, args.seeds, overrides), args.shard):
            print(f"{run.name}  {json.dumps(run.varied)}")
        return 0
    rows = run_sweep(args.sweep, args.out, args.shard, args.seeds, overrides, ray=_ray_options(args))
    for row in rows:
        print(json.dumps(row))
    failed = [row["run"] for row in rows if row["status"] == "failed"]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from ..methods.registry import benchmark_default_methods, method_names

    parser.add_argument("suite", help="vtab (the 19 VTAB-1k tasks) or fgvc (the five FGVC datasets)")
    parser.add_argument("--data-root", required=True, help="the folder holding the task (dataset) folders")
    parser.add_argument("--model", required=True, help="the backbone (a timm name, hf:<folder>, ...)")
    parser.add_argument("--checkpoint", default=None, help="local weights of the backbone")
    parser.add_argument(
        "--methods",
        default=",".join(benchmark_default_methods()),
        help=f"comma-separated, of {', '.join(method_names())}; or all (%(default)s)",
    )
    parser.add_argument("--tasks", default=None, help="a comma-separated subset of the tasks (default: all)")
    parser.add_argument("--out", required=True, help="directory of the runs (<task>/<method>) and the report")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run over this many seeds (%(default)s)")
    parser.add_argument("--shard", default=None, help="i/n: run every n-th run starting at i (0-based)")
    parser.add_argument("--tune", action="store_true", help="search the lr per task and method on the tuning split")
    parser.add_argument("--dry-run", action="store_true", help="print every run's train command; train nothing")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the runs there; train nothing"
    )
    _add_set_option(
        parser, "replace a training option of every run (repeatable; the value is YAML), e.g. --set epochs=50"
    )
    _add_ray_options(parser)


@command(
    "benchmark",
    "every task x method of VTAB-1k or FGVC as one resumable sweep, then a report in the papers' layout",
    _benchmark_arguments,
)
def run_benchmark_command(args: argparse.Namespace) -> int:
    from ..experiments.benchmark import (
        benchmark_runs,
        check_data,
        command_line,
        run_benchmark,
        shard_runs,
        write_benchmark_report,
    )

    overrides = _overrides(args.overrides)
    if args.checkpoint:
        overrides.setdefault("checkpoint", args.checkpoint)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == ["all"]:
        from ..methods.registry import method_names

        methods = method_names()
    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    runs = benchmark_runs(args.suite, args.data_root, args.model, methods, overrides, args.seeds, only, args.tune)
    selected = shard_runs(runs, args.shard)
    if args.dry_run:
        for run in selected:
            print(command_line(run, args.out))
        print(f"{len(selected)} runs ({len(runs)} in all)", file=sys.stderr)
        return 0
    failed = []
    if not args.report_only:
        check_data(args.data_root, selected)
        for row in run_benchmark(selected, args.out, ray=_ray_options(args)):
            print(json.dumps(row), flush=True)
            if row["status"] == "failed":
                failed.append(row["run"])
    write_benchmark_report(args.suite, runs, args.out)
    print(f"report: {args.out}/report.md, {args.out}/report.html")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (e.g. a sweep's: runs/bottleneck/*)")
    parser.add_argument("--out", required=True, help="report directory: report.md, report.html, plots")


@command(
    "report", "tables and plots over run directories (markdown and one self-contained HTML file)", _report_arguments
)
def run_report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    result = write_report(args.runs, args.out)
    for path, why in result["skipped"]:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(
        f"report: {args.out}/report.md, {args.out}/report.html ({result['rows']} configurations, "
        f"{len(result['skipped'])} skipped)"
    )
    return 0 if result["rows"] else 1


def _answer_cell(row: dict) -> str:
    """A task's answer on one line: its top-k, or a multi-label task's labels above the threshold."""
    if "labels" not in row:
        return "  ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top_k"])
    if not row["labels"]:
        return f"(no label >= {row['threshold']:g})"
    return "  ".join(f"{t['label']} {t['prob']:.3f}" for t in row["labels"])
