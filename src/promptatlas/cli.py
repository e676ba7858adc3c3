"""The ``promptatlas`` command: a thin layer over the library.

Errors a person can act on (unknown task or model, a prompt that does not fit the model, a
corrupt file, a bad config) are printed as one line ``promptatlas: error: …`` with exit code 2,
not as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _add_common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    p.add_argument(
        "--db",
        default=None,
        help="results database (default $PROMPTATLAS_DB or ./.promptatlas/results.sqlite)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    from promptatlas.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="promptatlas",
        description="Train, evaluate, store and export soft prompts on frozen causal LMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a soft prompt on one task and language",
        description="Train a v1 or v2 soft prompt; evaluates it untrained and "
        "trained on test and stores it as a prompt directory.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name, hub id or path (default {DEFAULT_MODEL}; see `promptatlas models`)",
    )
    p.add_argument(
        "--task", required=True, help="sts, nli, sa, tc, qa, cg (see `promptatlas tasks`)"
    )
    p.add_argument("--lang", required=True, help="en or ko")
    p.add_argument("--method", choices=("v1", "v2"), default="v2")
    p.add_argument("--length", type=int, default=20, help="prompt length k (default 20)")
    p.add_argument(
        "--kv",
        choices=("shared", "separate"),
        default="shared",
        help="v2: shared key=value prefix (thesis) or separate (PEFT prefix tuning)",
    )
    p.add_argument("--layers", default=None, help="v2 layer subset, e.g. 0,1,2,15,16,17")
    p.add_argument("--init", choices=("uniform", "vocab", "labels"), default="uniform")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 200)")
    p.add_argument("--epochs", type=float, default=None, help="epochs instead of steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 0.3 for v1, 0.01 for v2)"
    )
    p.add_argument("--eval-every", type=int, default=0, help="dev evaluation every N steps")
    p.add_argument("--patience", type=int, default=None, help="early stopping patience (evals)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: run the frozen model under bf16 autocast (≈3× faster on CPUs with bf16 "
        "instructions and on GPUs); the prompt stays float32",
    )
    p.add_argument(
        "--separator",
        default="sep_token",
        help="text between inputs and before the answer; default: the tokenizer's "
        "sep token, else its eos token (e.g. '\\n' for a newline)",
    )
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder laid out like shared/data for the full datasets (default: bundled sample)",
    )
    p.add_argument("--out", required=True, help="prompt directory to create")
    _add_common_model(p)

    p = sub.add_parser(
        "eval",
        help="evaluate a stored prompt",
        description="Evaluate a prompt directory on a split of its task, or of "
        "another task/language (zero-shot).",
    )
    p.add_argument("prompt_dir")
    p.add_argument("--split", choices=("train", "dev", "test"), default="test")
    p.add_argument("--task", default=None, help="evaluate on another task (zero-shot)")
    p.add_argument("--lang", default=None, help="evaluate on another language (zero-shot)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--mode",
        choices=("auto", "rank", "generate"),
        default="auto",
        help="classification: rank the label words (default) or generate",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--force", action="store_true", help="load even if the model weights' fingerprint differs"
    )
    _add_common_model(p)

    p = sub.add_parser(
        "runs",
        help="list runs in the results database",
        description="List and filter recorded train/eval runs, newest first.",
    )
    for name in ("kind", "model", "task", "lang", "method", "split"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--db", default=None)

    p = sub.add_parser(
        "export",
        help="export a prompt (e.g. to PEFT)",
        description="Export a prompt directory: --format peft writes a PEFT "
        "adapter (v1 → PromptTuning, v2 → PrefixTuning) loadable with "
        "PeftModel.from_pretrained onto the same base model.",
    )
    p.add_argument("prompt_dir")
    p.add_argument("--format", choices=("peft",), default="peft")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)

    p = sub.add_parser(
        "run",
        help="run an experiment file (YAML)",
        description="Run every cell of an experiment file that is not done yet "
        "(resumable) and write its results tables.",
    )
    p.add_argument("experiment", help="e.g. configs/quickstart.yaml")
    p.add_argument("--out", default=None, help="override the experiment's output folder")
    p.add_argument("--data-dir", default=None, help="override the experiment's data folder")
    _add_common_model(p)

    sub.add_parser("models", help="list registered models", description="List registered models.")
    sub.add_parser(
        "tasks",
        help="list tasks and languages",
        description="List every task/language pair with its data source.",
    )
    return parser


def _prompt_config(args: argparse.Namespace) -> Any:
    from promptatlas.prompts import PromptConfig

    layers = None
    if args.layers:
        try:
            layers = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            raise ValueError(
                f"--layers takes comma-separated integers, got {args.layers!r}"
            ) from None
    return PromptConfig(
        method=args.method, length=args.length, kv=args.kv, layers=layers, init=args.init
    )


def _unescape(text: str) -> str:
    """Let a shell user write a newline or tab separator as a backslash escape."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _cmd_train(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB
    from promptatlas.formatting import FormatConfig
    from promptatlas.training import TrainConfig
    from promptatlas.workflows import RunConfig, train_run

    lr = args.lr if args.lr is not None else (0.3 if args.method == "v1" else 0.01)
    steps = args.steps if args.steps is not None or args.epochs is not None else 200
    cfg = RunConfig(
        task=args.task,
        lang=args.lang,
        model=args.model,
        prompt=_prompt_config(args),
        train=TrainConfig(
            steps=steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=lr,
            eval_every=args.eval_every,
            patience=args.patience,
            seed=args.seed,
        ),
        format=FormatConfig(separator=_unescape(args.separator)),
        precision=args.precision,
        data_dir=args.data_dir,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        device=args.device,
    )
    with ResultsDB(args.db) as db:
        result = train_run(cfg, args.out, db=db, progress=not args.quiet)
    base = result.untrained.score if result.untrained else float("nan")
    print(
        f"{args.task}-{args.lang} {args.method}: untrained {100 * base:.1f} → trained "
        f"{100 * result.trained.score:.1f} on test (n={result.trained.n}); saved {result.path}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB, read_metadata
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.models import load_model
    from promptatlas.workflows import evaluate_stored

    meta = read_metadata(args.prompt_dir)
    handle = load_model(meta.model, device=args.device)
    with ResultsDB(args.db) as db:
        result = evaluate_stored(
            args.prompt_dir,
            split=args.split,
            handle=handle,
            task=args.task,
            lang=args.lang,
            limit=args.limit,
            data_dir=args.data_dir,
            eval_config=EvalConfig(mode=args.mode),
            db=db,
            check_model=not args.force,
        )
    task = f"{args.task or meta.task}-{args.lang or meta.lang}"
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in result.metrics.items() if k != "score")
    print(f"{args.prompt_dir} on {task} {args.split} (n={result.n}, {result.mode}): {shown}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB, format_runs_table

    filters = {k: getattr(args, k) for k in ("kind", "model", "task", "lang", "method", "split")}
    with ResultsDB(args.db) as db:
        records = db.find(limit=args.limit, **filters)
    if args.json:
        for r in records:
            print(
                json.dumps({k: v for k, v in r.__dict__.items()}, default=str, ensure_ascii=False)
            )
    elif records:
        print(format_runs_table(records))
    else:
        print("no runs recorded yet (train a prompt or run an experiment first)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from promptatlas.bank import export_peft, read_metadata
    from promptatlas.models import load_model

    meta = read_metadata(args.prompt_dir)
    handle = load_model(meta.model, device=args.device)
    path = export_peft(args.prompt_dir, args.out, handle)
    print(f"exported {args.prompt_dir} as a PEFT adapter to {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from promptatlas.bank import ResultsDB
    from promptatlas.experiments import load_experiment, run_experiment

    exp = load_experiment(args.experiment)
    if args.out:
        exp = dataclasses.replace(exp, out=args.out)
    if args.device:
        exp = dataclasses.replace(exp, device=args.device)
    if args.data_dir:
        exp = dataclasses.replace(exp, data_dir=args.data_dir)
    with ResultsDB(args.db) as db:
        run_experiment(exp, db=db, progress=not args.quiet)
    return 0


def _cmd_models(_: argparse.Namespace) -> int:
    from promptatlas.models import list_models

    for entry in list_models():
        print(f"{entry.name:14s} {entry.description}")
    print("…or any Hugging Face hub id / local directory (offline unless PROMPTATLAS_ONLINE=1)")
    return 0


def _cmd_tasks(_: argparse.Namespace) -> int:
    from promptatlas.tasks import list_tasks

    for t in list_tasks():
        labels = ", ".join(t.verbalizers[lab] for lab in t.labels) or "(generation)"
        split = "official" if t.official_split else "carved"
        print(f"{t.name:7s} {t.dataset:14s} {t.spec.metric:10s} {split:8s} {labels}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "runs": _cmd_runs,
    "export": _cmd_export,
    "run": _cmd_run,
    "models": _cmd_models,
    "tasks": _cmd_tasks,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from promptatlas.bank import ExportError, PromptLoadError
    from promptatlas.experiments import ExperimentError
    from promptatlas.models import ModelNotAvailableError, UnsupportedArchitectureError
    from promptatlas.prompts import PromptConfigError
    from promptatlas.tasks import DataError
    from promptatlas.training import TrainConfigError

    return (
        DataError,
        PromptLoadError,
        ExportError,
        ExperimentError,
        ModelNotAvailableError,
        UnsupportedArchitectureError,
        PromptConfigError,
        TrainConfigError,
        ValueError,
        FileNotFoundError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PROMPTATLAS_ONLINE") != "1":
        # Offline by default: no library may reach a model hub behind our back.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except _user_errors() as exc:
        if os.environ.get("PROMPTATLAS_DEBUG") == "1":
            raise
        print(f"promptatlas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptatlas: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
