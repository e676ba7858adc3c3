"""The ``promptatlas`` command: a thin layer over the library.

Errors a person can act on (unknown task or model, a prompt that does not fit the model, a
corrupt file, a bad config) are printed as one line ``promptatlas: error: …`` with exit code 2,
not as a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _name(text: str) -> str:
    """Task and language names are case-insensitive: ``--task SA`` = ``--task sa``; a task file
    path (``--task my-task.yaml``) is kept as given."""
    from promptatlas.tasks.taskfile import is_task_file

    return text.strip() if is_task_file(text) else text.strip().lower()


_SCORINGS: dict[str, dict[str, Any]] = {
    "sum": {"length_normalise": False},
    "mean": {"length_normalise": True},
    "first": {"first_token": True},
}


def _add_scoring(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scoring",
        choices=tuple(_SCORINGS),
        default=None,
        help="rank classification: the summed (default), mean (length-normalised) or first-token "
        "log-probability of each label word",
    )


def _eval_options(args: argparse.Namespace) -> dict[str, Any]:
    scoring = getattr(args, "scoring", None)
    return dict(_SCORINGS[scoring]) if scoring else {}


def _scored(result: Any) -> str:
    """``71.2 [65.0, 77.1] (majority 52.7)``: the main score ×100 with its 95% interval and
    the majority-class baseline of the evaluated examples."""
    text = f"{100 * result.score:.1f}"
    est = result.ci() if hasattr(result, "ci") else None
    if est is not None:
        text += f" [{100 * est.low:.1f}, {100 * est.high:.1f}]"
    if "majority" in result.metrics:
        text += f" (majority {100 * result.metrics['majority']:.1f})"
    return text


def _add_common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    p.add_argument(
        "--db",
        default=None,
        help="results database (default $PROMPTATLAS_DB or ./.promptatlas/results.sqlite)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a prompt already at --out (default: refuse, unless resuming this run)",
    )


def _add_checkpoint_every(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        metavar="N",
        help="write a resumable checkpoint every N steps (default 50; 0 = only on Ctrl-C/kill, "
        "which always saves the current step)",
    )


def _add_precision(p: argparse.ArgumentParser) -> None:
    from promptatlas.models.precision import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): bf16 autocast of the frozen model where the hardware runs bf16 "
        "natively (AVX512-BF16/AMX CPUs, bf16 GPUs), else float32; fp32; bf16 (slow where "
        "emulated, e.g. AVX2-only CPUs). The prompt stays float32",
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from promptatlas.training.defaults import DEFAULTS, describe_lr

    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 200)")
    p.add_argument("--epochs", type=float, default=None, help="epochs instead of steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument(
        "--lr", type=float, default=None, help=f"learning rate (default {describe_lr()})"
    )
    p.add_argument(
        "--objective",
        choices=("auto", "lm", "rank"),
        default="auto",
        help="training loss: lm = -log p(label words, eos) (SPEC), rank = cross-entropy over the "
        "labels' rank-classification scores; auto (default) = "
        + ", ".join(f"{m}: {d.objective}" for m, d in DEFAULTS.items())
        + " for classification, lm for generation",
    )
    p.add_argument("--eval-every", type=int, default=0, help="dev evaluation every N steps")
    p.add_argument("--patience", type=int, default=None, help="early stopping patience (evals)")
    _add_checkpoint_every(p)
    p.add_argument("--seed", type=int, default=42)
    _add_precision(p)
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
        help="folder laid out like shared/data for the full datasets (default: bundled sample); "
        "for a task file: the folder its relative data paths start from",
    )
    _add_scoring(p)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptatlas",
        description="Train, evaluate, store and export soft prompts on frozen causal LMs.",
    )
    from promptatlas import __version__

    parser.add_argument("--version", action="version", version=f"promptatlas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_runs(sub)
    _add_export(sub)
    _add_run(sub)
    _add_lang_prompt(sub)
    _add_transfer(sub)
    _add_zero_shot(sub)
    _add_grid(sub)
    _add_project(sub)
    _add_analyze(sub)
    _add_models(sub)
    _add_tasks(sub)
    _add_import(sub)
    _add_report(sub)
    _add_neurons(sub)
    _add_indicators(sub)
    _add_suggest(sub)
    _add_compose(sub)
    _add_ipt(sub)
    return parser


def _add_train(sub: Any) -> None:
    """The ``train`` command."""
    from promptatlas.models import DEFAULT_MODEL
    from promptatlas.training.defaults import DEFAULTS

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
        "--task",
        type=_name,
        required=True,
        help="sts, nli, sa, tc, qa, cg (see `promptatlas tasks`), or your task file "
        "(my-task.yaml; README 'Your own task')",
    )
    p.add_argument("--lang", type=_name, required=True, help="en or ko")
    p.add_argument(
        "--method",
        choices=("v1", "v2"),
        default=None,
        help="v1 or v2 (default v2, or the language prompt's method)",
    )
    p.add_argument("--length", type=int, default=20, help="prompt length k (default 20)")
    p.add_argument(
        "--kv",
        choices=("shared", "separate"),
        default="shared",
        help="v2: shared key=value prefix (thesis) or separate (PEFT prefix tuning)",
    )
    p.add_argument("--layers", default=None, help="v2 layer subset, e.g. 0,1,2,15,16,17")
    p.add_argument(
        "--init",
        choices=("uniform", "vocab", "labels"),
        default=None,
        help="prompt initialisation (default "
        + ", ".join(f"{m}: {d.init}" for m, d in DEFAULTS.items())
        + ")",
    )
    p.add_argument(
        "--lang-prompt",
        default=None,
        help="a language prompt directory (`promptatlas lang-prompt`): train a task sub-prompt "
        "after its frozen language segment (method, kv and layers follow it)",
    )
    _add_train_options(p)
    p.add_argument("--out", required=True, help="prompt directory to create")
    _add_overwrite(p)
    _add_tensorboard(p)
    _add_common_model(p)
    p.add_argument(
        "--device-map",
        default=None,
        help="'auto': spread a backbone larger than one GPU over this machine's GPUs "
        "(accelerate; --device is then ignored)",
    )


def _add_tensorboard(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="also log loss, lr and dev score as TensorBoard event files in DIR (one subfolder "
        "per prompt; needs pip install 'promptatlas[tensorboard]'). The curves are always "
        "written as JSONL and PNG under curves/ beside the prompts",
    )


def _add_executor(p: argparse.ArgumentParser) -> None:
    """The executor options of a grid (they override the grid file's ``executor`` block)."""
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="where the cells run: local (default; one after another here) or ray (Ray tasks "
        "on this machine's CPUs/GPUs or a cluster; pip install 'promptatlas[ray]'; see "
        "docs/executors.md)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="ray: the cluster to join (auto, or ray://HOST:10001; default: start Ray here)",
    )
    p.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        help="ray: GPUs per cell (fractions share a GPU: 0.5 = two cells per GPU; default 0)",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help="ray: tries again a failed cell this many times (default 0)",
    )


def _add_eval(sub: Any) -> None:
    """The ``eval`` command."""
    p = sub.add_parser(
        "eval",
        help="evaluate a stored prompt",
        description="Evaluate a prompt directory on a split of its task, or of "
        "another task/language (zero-shot).",
    )
    p.add_argument("prompt_dir")
    p.add_argument("--split", choices=("train", "dev", "test"), default="test")
    p.add_argument(
        "--task",
        type=_name,
        default=None,
        help="evaluate on another task (zero-shot), or on the prompt's own task from a task file "
        "(e.g. with moved data files); default: the task stored in the prompt",
    )
    p.add_argument(
        "--lang", type=_name, default=None, help="evaluate on another language (zero-shot)"
    )
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--mode",
        choices=("auto", "rank", "generate"),
        default="auto",
        help="classification: rank the label words (default) or generate",
    )
    _add_scoring(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--force", action="store_true", help="load even if the model weights' fingerprint differs"
    )
    _add_common_model(p)


def _add_predict(sub: Any) -> None:
    """The ``predict`` command."""
    p = sub.add_parser(
        "predict",
        help="predict the rows of a file (labelled or not) with a stored prompt",
        description="Predict every row of a CSV/TSV/JSON/JSONL file with a stored prompt's own "
        "task (from its metadata) and write one JSON line per row: uid, inputs, prediction, "
        "label word and per-label scores (and gold when the row has a label). The file is read "
        "like the task's test file unless options say otherwise.",
    )
    p.add_argument("prompt_dir")
    p.add_argument("--file", required=True, help="the rows to predict")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument(
        "--columns",
        nargs="+",
        default=(),
        metavar="FIELD=COLUMN",
        help="column mapping, e.g. input1=sentence1 input2=sentence2",
    )
    p.add_argument("--format", choices=("csv", "tsv", "json", "jsonl"), default=None)
    p.add_argument("--delimiter", default=None, help="CSV/TSV field delimiter ('\\t' for tab)")
    p.add_argument(
        "--no-quoting",
        dest="quoting",
        action="store_false",
        default=None,
        help="double quotes are plain text (GLUE-style TSV)",
    )
    p.add_argument(
        "--no-header", dest="header", action="store_false", default=None, help="no header row"
    )
    p.add_argument("--encoding", default=None, help="text encoding (default utf-8)")
    p.add_argument("--limit", type=int, default=None)
    _add_scoring(p)
    _add_common_model(p)


def _add_runs(sub: Any) -> None:
    """The ``runs`` command."""
    p = sub.add_parser(
        "runs",
        help="list runs in the results database",
        description="List and filter recorded train/eval runs, newest first.",
    )
    for name in ("kind", "model", "task", "lang", "method", "split"):
        p.add_argument(f"--{name}", default=None, type=_name if name in ("task", "lang") else str)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="DB",
        default=None,
        help="copy the runs of these database files (e.g. grid shards from other machines) "
        "into --db",
    )
    p.add_argument(
        "--db",
        default=None,
        help="results database to read (default $PROMPTATLAS_DB or ./.promptatlas/results.sqlite)",
    )


def _add_export(sub: Any) -> None:
    """The ``export`` command."""
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


def _add_run(sub: Any) -> None:
    """The ``run`` command."""
    p = sub.add_parser(
        "run",
        help="run an experiment file (YAML)",
        description="Run every cell of an experiment file that is not done yet "
        "(resumable) and write its results tables: results.csv and results.json (scores "
        "with 95% intervals; results.json also holds method_differences, each pair of "
        "methods of a task, language and seed with a paired interval).",
    )
    p.add_argument("experiment", help="e.g. configs/quickstart.yaml")
    p.add_argument("--out", default=None, help="override the experiment's output folder")
    p.add_argument("--data-dir", default=None, help="override the experiment's data folder")
    _add_tensorboard(p)
    _add_executor(p)
    _add_common_model(p)


def _add_lang_prompt(sub: Any) -> None:
    """The ``lang-prompt`` command."""
    from promptatlas.models import DEFAULT_MODEL
    from promptatlas.training.defaults import describe_lr

    p = sub.add_parser(
        "lang-prompt",
        help="train a language sub-prompt on raw text",
        description="Train the language segment of a factorised prompt by next-token LM loss "
        "on raw text of one language, with a random frozen task segment after it (thesis Eq. 8). "
        "Use it with `train --lang-prompt`, `transfer` and `zero-shot --lang-segment target`.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"(default {DEFAULT_MODEL})")
    p.add_argument("--lang", type=_name, required=True, help="language code, e.g. en or ko")
    p.add_argument(
        "--text",
        nargs="+",
        default=None,
        help="text files or folders, one sentence/paragraph per line (default: the bundled "
        "1,000-sentence sample of en/ko)",
    )
    p.add_argument("--method", choices=("v1", "v2"), default=None, help="default v2")
    p.add_argument("--kv", choices=("shared", "separate"), default="shared")
    p.add_argument("--layers", default=None, help="v2 layer subset, e.g. 0,1,2,15,16,17")
    p.add_argument("--init", choices=("uniform", "vocab"), default=None, help="default vocab")
    p.add_argument("--length", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--lang-length", type=int, default=10, help="language positions (default 10)")
    p.add_argument("--task-length", type=int, default=10, help="task positions (default 10)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help=f"default {describe_lr(language=True)}")
    p.add_argument("--max-length", type=int, default=64, help="tokens per training sequence")
    p.add_argument("--text-limit", type=int, default=None, help="use at most this many lines")
    p.add_argument("--seed", type=int, default=42)
    _add_precision(p)
    _add_checkpoint_every(p)
    p.add_argument("--out", required=True, help="prompt directory to create")
    _add_overwrite(p)
    _add_common_model(p)


def _add_transfer(sub: Any) -> None:
    """The ``transfer`` command."""
    p = sub.add_parser(
        "transfer",
        help="transfer a prompt to another task or language and train it",
        description="Cross-task (same language: the source task segment initialises the "
        "target's, the language segment stays frozen) or cross-language (same task: the source "
        "task segment stays frozen, the language segment is trained) transfer. With --baseline "
        "it reports transferred − baseline and the steps to reach 90% of the baseline's best "
        "dev score (give --eval-every).",
    )
    p.add_argument("--from", dest="source", required=True, help="source prompt directory")
    p.add_argument("--to", type=_name, default=None, help="target task (default: the source's)")
    p.add_argument(
        "--lang", type=_name, default=None, help="target language (default: the source's)"
    )
    p.add_argument(
        "--lang-prompt",
        default=None,
        help="cross-language: the target language's language prompt (initialises the trained "
        "language segment)",
    )
    p.add_argument("--baseline", default=None, help="the target's own prompt, for the comparison")
    p.add_argument("--out", required=True, help="prompt directory to create")
    _add_overwrite(p)
    _add_train_options(p)
    _add_common_model(p)


def _add_zero_shot(sub: Any) -> None:
    """The ``zero-shot`` command."""
    p = sub.add_parser(
        "zero-shot",
        help="evaluate a prompt on another task or language without training",
        description="Zero-shot transfer (thesis Tables 13-14): the source's label words, and "
        "the source's language segment or (--lang-segment target) the one of a target-language "
        "prompt.",
    )
    p.add_argument("--prompt", required=True, help="source prompt directory")
    p.add_argument("--task", type=_name, default=None, help="target task (default: the prompt's)")
    p.add_argument(
        "--lang", type=_name, default=None, help="target language (default: the prompt's)"
    )
    p.add_argument("--lang-segment", choices=("source", "target"), default="source")
    p.add_argument("--lang-prompt", default=None, help="target language prompt (for target)")
    p.add_argument("--label-words", choices=("source", "target"), default="source")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--mode", choices=("auto", "rank", "generate"), default="auto")
    p.add_argument("--data-dir", default=None)
    _add_common_model(p)


def _add_grid(sub: Any) -> None:
    """The ``grid`` command."""
    p = sub.add_parser(
        "grid",
        help="run a transfer grid (YAML): all sources × all targets",
        description="Run every cell of a transfer grid not done yet (resumable through the "
        "results database) and write its tables (thesis Tables 7-14 layout) and heatmaps. "
        "--executor ray spreads the cells over this machine's GPUs or a Ray cluster "
        "(docs/executors.md); separate studies are combined with `promptatlas runs --merge`.",
    )
    p.add_argument("grid", help="e.g. configs/transfer-grid.yaml")
    p.add_argument(
        "--shard",
        default=None,
        help="deprecated (use --executor ray): i/n runs the cells ≡ i (mod n)",
    )
    p.add_argument("--out", default=None, help="override the grid's output folder")
    p.add_argument("--no-report", action="store_true", help="skip tables, heatmaps and the page")
    _add_tensorboard(p)
    _add_executor(p)
    _add_common_model(p)


def _add_import(sub: Any) -> None:
    """The ``import`` command."""
    p = sub.add_parser(
        "import",
        help="import a PEFT adapter as a prompt directory",
        description="Import a PEFT prompt-tuning adapter (→ v1) or prefix-tuning adapter (→ v2) "
        "trained on --model as a prompt directory (the inverse of `promptatlas export`).",
    )
    p.add_argument("--from-peft", required=True, metavar="DIR", help="the PEFT adapter folder")
    p.add_argument("--model", required=True, help="the base model the adapter was trained on")
    p.add_argument("--out", required=True, help="prompt directory to create")
    p.add_argument(
        "--kv",
        choices=("auto", "separate", "shared"),
        default="auto",
        help="v2: keep separate keys and values (PEFT's layout), or shared (needs equal keys "
        "and values); auto: shared when they are equal, else separate (default)",
    )
    p.add_argument("--task", type=_name, default=None, help="the task the adapter solves")
    p.add_argument("--lang", type=_name, default=None, help="its language")
    _add_overwrite(p)
    p.add_argument("--device", default=None)


def _add_report(sub: Any) -> None:
    """The ``report`` command."""
    p = sub.add_parser(
        "report",
        help="write one HTML page of a study's results folder",
        description="Write one self-contained HTML page (summary, tables, figures, configs) of "
        "a results folder: <folder>/index.html, or --out.",
    )
    p.add_argument("--html", required=True, metavar="RESULTS_DIR", help="the results folder")
    p.add_argument("--out", default=None, help="the page to write (default RESULTS_DIR/index.html)")


def _add_project(sub: Any) -> None:
    """The ``project`` command."""
    p = sub.add_parser(
        "project",
        help="carry prompts across models with a trained projector",
        description="Cross-model transfer (Su et al. 2022): train a 2-layer tanh MLP mapping "
        "prompts of --from-model to --to-model with the task loss through the frozen target, "
        "then project other prompts (--apply) zero-shot and, with --init-steps, as an "
        "initialisation. --objective distance fits the MLP instead to map each task prompt of "
        "--from-model (--source-prompt and --fit) onto the same task's prompt of --to-model "
        "in --target-bank (Su et al.'s distance minimisation; no model runs while it fits).",
    )
    p.add_argument("--from-model", required=True)
    p.add_argument("--to-model", required=True)
    p.add_argument("--source-prompt", default=None, help="a prompt of --from-model to learn on")
    p.add_argument(
        "--train-task", type=_name, default=None, help="or: train a source prompt on this task"
    )
    p.add_argument("--lang", type=_name, default=None, help="language of --train-task")
    p.add_argument("--method", choices=("v1", "v2"), default=None, help="for --train-task")
    p.add_argument("--length", type=int, default=20, help="for --train-task")
    p.add_argument("--source-steps", type=int, default=100, help="for --train-task")
    p.add_argument("--apply", nargs="*", default=None, help="more prompts of --from-model")
    p.add_argument(
        "--objective",
        default="task",
        help="task (the task loss through --to-model) or distance (MSE to --to-model's "
        "prompts of the same tasks) (default task)",
    )
    p.add_argument(
        "--fit", nargs="*", default=None, help="distance: more --from-model prompts to fit on"
    )
    p.add_argument(
        "--target-bank",
        default=None,
        help="distance: folder with --to-model prompts of the same tasks, languages and method",
    )
    p.add_argument("--hidden", type=int, default=512, help="projector hidden size")
    p.add_argument("--steps", type=int, default=100, help="projector training steps")
    p.add_argument("--lr", type=float, default=1e-3, help="projector learning rate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--init-steps", type=int, default=0, help="train projected prompts N steps")
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    _add_precision(p)
    p.add_argument("--separator", default="sep_token")
    _add_checkpoint_every(p)
    p.add_argument("--out", required=True, help="folder for the projector and projected prompts")
    _add_overwrite(p)
    _add_common_model(p)


def _add_analyze(sub: Any) -> None:
    """The ``analyze`` command."""
    p = sub.add_parser(
        "analyze",
        help="what prompts do inside the model: attention, neurons, geometry, PCA, layers",
        description="Analyses of stored prompts (SPEC §5). Each writes PNG figures, CSV/JSON "
        "tables and summary.txt into --out.",
    )
    asub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    helps = {
        "attention": "attention variability per head (base model), KL(prompted ‖ base) per "
        "head and layer, and their Pearson correlation",
        "neurons": "ON scores of FFN activations between task prompts per layer, and "
        "source-vs-target without and with transfer",
        "geometry": "isotropy and label space per layer, base vs prompted, before vs after "
        "transfer",
        "pca": "PCA of the prompt vectors (v2: one panel per layer)",
        "all": "attention, neurons, geometry and PCA into subfolders of --out, then layers",
    }
    for name, text in helps.items():
        a = asub.add_parser(name, help=text, description=text.capitalize() + ".")
        a.add_argument(
            "--prompts",
            nargs="+",
            required=True,
            help="prompt directories or folders holding them (one model)",
        )
        a.add_argument("--out", required=True, help="output folder")
        a.add_argument("--model", default=None, help="default: the prompts' model")
        if name != "pca":
            a.add_argument("--n-examples", type=int, default=64, help="inputs per task/language")
            a.add_argument("--split", choices=("train", "dev", "test"), default="test")
            a.add_argument("--batch-size", type=int, default=16)
            a.add_argument(
                "--n-tokens", type=int, default=10, help="variability window (cg uses 2)"
            )
            a.add_argument("--data-dir", default=None)
        a.add_argument("--device", default=None)
    a = asub.add_parser(
        "layers",
        help="peak/trough layer groups from an attention analysis → a compression config",
        description="Pick peak and trough layer groups from the per-layer KL curve of "
        "`analyze attention` (keeping the first and last layers, as the thesis does) and write "
        "an experiment file comparing v2 on them with full v2 and v1 (thesis Table 3).",
    )
    a.add_argument("--from", dest="source", required=True, help="an `analyze attention` folder")
    a.add_argument("--out", required=True, help="experiment file to write, e.g. configs/c.yaml")
    a.add_argument("--method", default="v2", help="whose mean KL curve to use (default v2)")
    a.add_argument("--size", type=int, default=None, help="layers per group (default depth/2)")


def _add_models(sub: Any) -> None:
    """The ``models`` command."""
    sub.add_parser("models", help="list registered models", description="List registered models.")


def _add_tasks(sub: Any) -> None:
    """The ``tasks`` command."""
    from promptatlas.models import DEFAULT_MODEL

    p = sub.add_parser(
        "tasks",
        help="list tasks and languages, or check a task file",
        description="List every task/language pair with its data source; with --check, load "
        "everything a task file names and print the counts per split and label, the majority "
        "baseline and the label words' token counts.",
    )
    p.add_argument("--check", default=None, metavar="TASK", help="a task file (or task name)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"whose tokenizer counts the label words' tokens (default {DEFAULT_MODEL})",
    )
    p.add_argument("--data-dir", default=None, help="folder relative data paths start from")
    p.add_argument("--quiet", action="store_true", help="no library progress bars or warnings")


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
    init = {"init": args.init} if getattr(args, "init", None) else {}
    return PromptConfig(method=args.method, length=args.length, kv=args.kv, layers=layers, **init)


def _unescape(text: str) -> str:
    """Let a shell user write a newline or tab separator as a backslash escape."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _method_of(args: argparse.Namespace) -> str:
    """--method, else the language prompt's method, else v2."""
    if args.method:
        return str(args.method)
    if getattr(args, "lang_prompt", None):
        from promptatlas.bank import read_metadata

        return str(read_metadata(args.lang_prompt).prompt.get("method", "v2"))
    return "v2"


def _train_config(args: argparse.Namespace, method: str, *, default_steps: int = 200) -> Any:
    from promptatlas.training import TrainConfig

    steps = args.steps if args.steps is not None or args.epochs is not None else default_steps
    return TrainConfig(
        steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,  # None: the method's default (promptatlas.training.defaults)
        objective=args.objective,
        eval_every=args.eval_every,
        patience=args.patience,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )


def _run_config(args: argparse.Namespace, task: str, lang: str, model: str, prompt: Any) -> Any:
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.formatting import FormatConfig
    from promptatlas.runs.train import RunConfig

    return RunConfig(
        task=task,
        lang=lang,
        model=model,
        prompt=prompt,
        train=_train_config(args, prompt.method),
        format=FormatConfig(separator=_unescape(args.separator)),
        precision=args.precision,
        data_dir=args.data_dir,
        lang_prompt=getattr(args, "lang_prompt", None),
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        device=args.device,
        device_map=getattr(args, "device_map", None),
        eval=EvalConfig(**_eval_options(args)),
    )


def _tensorboard(args: argparse.Namespace) -> Any:
    """--tensorboard, or None (with a one-line notice) when TensorBoard is not installed."""
    from promptatlas.runs.train import tensorboard_available

    if not getattr(args, "tensorboard", None) or not tensorboard_available():
        return None
    return args.tensorboard


def _executor(args: argparse.Namespace, grid: Any) -> Any:
    """The grid's executor with the command line's options over the file's ``executor``."""
    import dataclasses

    from promptatlas.studies.executors import ExecutorSpec

    given = {
        "kind": getattr(args, "executor", None),
        "address": getattr(args, "address", None),
        "gpus_per_cell": getattr(args, "gpus_per_cell", None),
        "max_retries": getattr(args, "max_retries", None),
    }
    options = {
        **dataclasses.asdict(grid.executor),
        **{k: v for k, v in given.items() if v is not None},
    }
    if (
        given["kind"] is None
        and options["kind"] == "local"
        and (given["address"] or given["gpus_per_cell"])
    ):
        options["kind"] = "ray"  # --address / --gpus-per-cell only make sense on Ray
    return ExecutorSpec.from_dict(options, path="executor")


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptatlas.bank import ResultsDB
    from promptatlas.runs.train import curve_path, train_run

    args.method = _method_of(args)
    cfg = _run_config(args, args.task, args.lang, args.model, _prompt_config(args))
    out = Path(args.out)
    with ResultsDB(args.db) as db:
        result = train_run(
            cfg, out, db=db, progress=not args.quiet, overwrite=args.overwrite,
            curve=curve_path(out.parent, out), tensorboard=_tensorboard(args),
        )  # fmt: skip
    from promptatlas.tasks import get_task

    metric = get_task(cfg.task, cfg.lang).spec.metric
    base = _scored(result.untrained) if result.untrained else "-"
    print(
        f"{cfg.task}-{cfg.lang} {args.method}: {metric} untrained {base} → trained "
        f"{_scored(result.trained)} on test (n={result.trained.n}); saved {result.path}"
    )
    return 0


def _cmd_lang_prompt(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB
    from promptatlas.training import TrainConfig
    from promptatlas.transfer import LanguagePromptConfig, train_language_prompt

    args.method = args.method or "v2"
    cfg = LanguagePromptConfig(
        lang=args.lang,
        model=args.model,
        prompt=_prompt_config(args),
        lang_length=args.lang_length,
        task_length=args.task_length,
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,  # None: the method's language-prompt default
            warmup=0.1,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
        ),
        text=tuple(args.text or ()),
        text_limit=args.text_limit,
        max_length=args.max_length,
        precision=args.precision,
        device=args.device,
    )
    with ResultsDB(args.db) as db:
        result = train_language_prompt(
            cfg, args.out, db=db, progress=not args.quiet, overwrite=args.overwrite
        )
    print(
        f"language prompt {args.lang} ({args.method}): {result.describe()} after "
        f"{result.steps} steps; saved {result.path}"
    )
    return 0


def _cmd_transfer(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB, read_metadata
    from promptatlas.prompts import PromptConfig
    from promptatlas.runs.transfer import transfer_run

    meta = read_metadata(args.source)
    if meta.task is None:
        raise ValueError(f"{args.source} is a language prompt; transfer a task prompt")
    lang = str(args.lang or meta.lang)
    task = str(args.to or meta.task)
    from promptatlas.tasks import get_task

    task = get_task(task, lang).spec.name  # a task file is read and named by its task name
    prompt = PromptConfig.from_dict(meta.prompt)
    args.lang_prompt_target = args.lang_prompt
    args.lang_prompt = None
    cfg = _run_config(args, task, lang, meta.model, prompt)
    with ResultsDB(args.db) as db:
        result = transfer_run(
            args.source,
            cfg,
            args.out,
            lang_prompt=args.lang_prompt_target,
            baseline_dir=args.baseline,
            db=db,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    line = f"{result.source} → {task}-{lang} ({result.kind}): {100 * result.score:.1f}"
    if result.delta is not None:
        line += f" ({100 * result.delta:+.1f} vs baseline {100 * (result.baseline or 0):.1f})"
    if result.steps_to_90 is not None or result.baseline_steps_to_90 is not None:
        line += (
            f"; steps to 90% of the baseline's best dev: {result.steps_to_90} "
            f"(baseline {result.baseline_steps_to_90})"
        )
    print(line + f"; saved {result.run.path}")
    return 0


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB, read_metadata
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.runs.transfer import zero_shot

    meta = read_metadata(args.prompt)
    task, lang = args.task or meta.task, args.lang or meta.lang
    if task is None or lang is None:
        raise ValueError(f"{args.prompt} is a language prompt; give a task prompt")
    from promptatlas.tasks import get_task

    task = get_task(task, lang).spec.name  # a task file is read and named by its task name
    with ResultsDB(args.db) as db:
        result = zero_shot(
            args.prompt,
            task,
            lang,
            lang_segment=args.lang_segment,
            lang_prompt=args.lang_prompt,
            label_words=args.label_words,
            limit=args.limit,
            data_dir=args.data_dir,
            eval_config=EvalConfig(mode=args.mode),
            db=db,
        )
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in result.metrics.items() if k != "score")
    print(
        f"{result.extra['source']} → {task}-{lang} zero-shot "
        f"({result.extra['lang_segment']} language segment, {result.extra['label_words']} label "
        f"words, n={result.n}): {shown}"
    )
    return 0


def _check_folder(path: Any) -> None:
    """The output folder of an experiment or grid (--out or the file's ``out:``), checked
    before any model loads."""
    from promptatlas.outputs import check_output_path

    check_output_path(path, kind="folder", what="results folder", option="output folder")


def _cmd_grid(args: argparse.Namespace) -> int:
    import dataclasses

    from promptatlas.bank import ResultsDB
    from promptatlas.studies.grid import load_grid, parse_shard, run_grid

    grid = load_grid(args.grid)
    if args.out:
        grid = dataclasses.replace(
            grid, experiment=dataclasses.replace(grid.experiment, out=args.out)
        )
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    if args.shard:
        print(
            "promptatlas: --shard is deprecated and will be removed: a shard retrains the "
            "dependencies it does not own; run the whole grid with --executor ray (this "
            "machine's GPUs or a Ray cluster, docs/executors.md). `promptatlas runs --merge` "
            "still combines separate studies",
            file=sys.stderr,
        )
    executor = _executor(args, grid)
    _check_folder(grid.experiment.out)
    with ResultsDB(args.db) as db:
        run_grid(
            grid, db=db, shard=shard, progress=not args.quiet, report=not args.no_report,
            html=not args.no_report, executor=executor, tensorboard=_tensorboard(args),
        )  # fmt: skip
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptatlas.bank import ResultsDB
    from promptatlas.models import load_model
    from promptatlas.prompts import PromptConfig
    from promptatlas.runs.crossmodel import (
        ProjectConfig,
        check_project_target,
        project_across_models,
    )
    from promptatlas.runs.train import train_run
    from promptatlas.training import TrainConfig
    from promptatlas.transfer import ProjectorConfig

    out = Path(args.out)
    source_prompt = args.source_prompt
    cfg = None
    if source_prompt is None:
        if not (args.train_task and args.lang):
            raise ValueError("give --source-prompt, or --train-task and --lang to train one")
        from promptatlas.formatting import FormatConfig
        from promptatlas.runs.train import RunConfig

        method = args.method or "v1"
        source_prompt = str(out / f"source-{args.train_task}-{args.lang}-{method}")
        cfg = RunConfig(
            task=args.train_task,
            lang=args.lang,
            model=args.from_model,
            prompt=PromptConfig(method=method, length=args.length),  # type: ignore[arg-type]
            train=TrainConfig(
                steps=args.source_steps,
                checkpoint_every=args.checkpoint_every,
                seed=args.seed,
            ),
            format=FormatConfig(separator=_unescape(args.separator)),
            test_limit=args.test_limit,
            precision=args.precision,
            device=args.device,
        )
    cfg_p = ProjectConfig(
        source_model=args.from_model,
        target_model=args.to_model,
        source_prompt=source_prompt,
        apply=tuple(args.apply or ()),
        projector=ProjectorConfig(hidden=args.hidden),
        train=TrainConfig(
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
        ),
        init_steps=args.init_steps,
        test_limit=args.test_limit,
        precision=args.precision,
        device=args.device,
        objective=args.objective,
        fit=tuple(args.fit or ()),
        target_bank=args.target_bank,
    )
    check_project_target(out, cfg_p, overwrite=args.overwrite)  # before any model loads
    source_handle = load_model(args.from_model, device=args.device)
    target_handle = load_model(args.to_model, device=args.device)
    with ResultsDB(args.db) as db:
        if cfg is not None and (
            args.overwrite or not (Path(source_prompt) / "prompt.json").exists()
        ):
            print(f"training the source prompt {args.train_task}-{args.lang} on {args.from_model}")
            train_run(
                cfg,
                source_prompt,
                handle=source_handle,
                db=db,
                progress=not args.quiet,
                overwrite=args.overwrite,
            )
        project_across_models(
            cfg_p,
            out,
            source_handle=source_handle,
            target_handle=target_handle,
            db=db,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    print(f"projector and projected prompts in {out} (summary.json)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from promptatlas.bank import ResultsDB, read_metadata
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.models import load_model
    from promptatlas.runs.train import eval_target, evaluate_stored

    meta = read_metadata(args.prompt_dir)
    target = eval_target(args.prompt_dir, meta, args.task, args.lang)  # before the model loads
    # The prompt's own evaluation settings (e.g. its scoring), then the options given here.
    options = {**meta.run.eval_options, "mode": args.mode}
    eval_config = EvalConfig(**{**options, **_eval_options(args)})
    handle = load_model(meta.model, device=args.device)
    with ResultsDB(args.db) as db:
        result = evaluate_stored(
            args.prompt_dir,
            split=args.split,
            handle=handle,
            task=target.spec.name,
            lang=target.lang,
            limit=args.limit,
            data_dir=args.data_dir,
            eval_config=eval_config,
            db=db,
            check_model=not args.force,
        )
    task = target.name
    shown = ", ".join(
        f"{k} {100 * v:.1f}" for k, v in result.metrics.items() if k not in ("score", "majority")
    )
    print(
        f"{args.prompt_dir} on {task} {args.split} (n={result.n}, {result.mode}): "
        f"{target.spec.metric} {_scored(result)}; {shown}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.outputs import check_output_path
    from promptatlas.prediction import FileOptions, predict_file

    columns = {}
    for item in args.columns:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise ValueError(f"--columns takes FIELD=COLUMN pairs, got {item!r}")
        columns[field.strip()] = column.strip()
    check_output_path(args.out, kind="file", what="predictions file")  # before the model loads
    options = FileOptions(
        columns=columns,
        fmt=args.format,
        delimiter=_unescape(args.delimiter) if args.delimiter else None,
        quoting=args.quoting,
        header=args.header,
        encoding=args.encoding,
    )
    eval_config = None
    if args.scoring:
        from promptatlas.bank import read_metadata

        meta = read_metadata(args.prompt_dir)
        eval_config = EvalConfig(**{**meta.run.eval_options, **_eval_options(args)})
    result = predict_file(
        args.prompt_dir,
        args.file,
        out=args.out,
        options=options,
        limit=args.limit,
        eval_config=eval_config,
        device=args.device,
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    line = f"{len(result.rows)} rows of {args.file} predicted as {result.task}"
    line += f" ({counts})" if counts else ""
    if result.metrics is not None:
        line += "; against the file's labels: " + ", ".join(
            f"{k} {100 * v:.1f}" for k, v in result.metrics.items() if k != "score"
        )
    print(f"{line}; written to {result.out}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptatlas.bank import ResultsDB, default_db_path, format_runs_table

    filters = {k: getattr(args, k) for k in ("kind", "model", "task", "lang", "method", "split")}
    if args.merge:
        with ResultsDB(args.db) as db:
            for other in args.merge:
                print(f"merged {db.merge(other)} new runs from {other} into {db.path}")
        return 0
    path = (Path(args.db).expanduser() if args.db else default_db_path()).absolute()
    choose = "choose another with --db or $PROMPTATLAS_DB"
    if not path.exists():
        print(
            f"no results database at {path} yet: train a prompt or run an experiment first, or "
            f"{choose}"
        )
        return 0
    with ResultsDB(path, readonly=True) as db:
        records = db.find(limit=args.limit, **filters)
        total = len(db)
    # Which database this is goes to stderr with --json, so the JSON lines stay clean.
    print(
        f"results database {path} ({total} runs; {choose})",
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        for r in records:
            print(
                json.dumps({k: v for k, v in r.__dict__.items()}, default=str, ensure_ascii=False)
            )
    elif records:
        print(format_runs_table(records))
    elif total:
        given = " ".join(f"--{k} {v}" for k, v in filters.items() if v is not None)
        print(f"no runs match {given} ({total} runs recorded; drop or change a filter)")
    else:
        print("no runs recorded yet (train a prompt or run an experiment first)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from promptatlas.bank import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft, read_metadata
    from promptatlas.models import load_model
    from promptatlas.outputs import check_output_path

    meta = read_metadata(args.prompt_dir)
    check_output_path(
        args.out,
        kind="directory",
        what="PEFT adapter",
        owned_files=(ADAPTER_CONFIG, ADAPTER_WEIGHTS),
    )
    handle = load_model(meta.model, device=args.device)
    path = export_peft(args.prompt_dir, args.out, handle)
    print(f"exported {args.prompt_dir} as a PEFT adapter to {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """An experiment file; one with a ``transfer`` block is a transfer grid, one with a
    ``compose`` block a composition study."""
    import dataclasses
    from pathlib import Path

    from promptatlas.bank import ResultsDB
    from promptatlas.studies.experiment import load_experiment, read_yaml, run_experiment
    from promptatlas.studies.grid import load_grid, run_grid

    overrides = {
        k: v
        for k, v in (("out", args.out), ("device", args.device), ("data_dir", args.data_dir))
        if v
    }
    from promptatlas.studies.compose import (
        is_composition_file,
        load_composition,
        run_composition,
    )

    data = read_yaml(Path(args.experiment))
    with ResultsDB(args.db) as db:
        if is_composition_file(data):  # a `compose` block: the composition study
            study = dataclasses.replace(load_composition(args.experiment), **overrides)
            _check_folder(study.out)
            run_composition(study, db=db, progress=not args.quiet)
        elif "transfer" in data:
            grid = load_grid(args.experiment)
            grid = dataclasses.replace(
                grid, experiment=dataclasses.replace(grid.experiment, **overrides)
            )
            executor = _executor(args, grid)
            _check_folder(grid.experiment.out)
            run_grid(
                grid, db=db, progress=not args.quiet, executor=executor,
                tensorboard=_tensorboard(args),
            )  # fmt: skip
        else:
            exp = dataclasses.replace(load_experiment(args.experiment), **overrides)
            _check_folder(exp.out)
            run_experiment(exp, db=db, progress=not args.quiet, tensorboard=_tensorboard(args))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from promptatlas.bank.peft_import import import_peft
    from promptatlas.bank.store import check_prompt_target
    from promptatlas.models import load_model

    check_prompt_target(args.out, overwrite=args.overwrite)  # before the model loads
    handle = load_model(args.model, device=args.device)
    path = import_peft(
        args.from_peft, args.out, handle, kv=args.kv, task=args.task, lang=args.lang,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"imported the PEFT adapter {args.from_peft} as the prompt directory {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from promptatlas.report.html import write_html

    print(f"wrote {write_html(args.html, args.out)}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptatlas.outputs import check_output_path
    from promptatlas.studies import atlas as suite

    if args.analysis == "layers":
        check_output_path(args.out, kind="file", what="experiment file")
    else:
        check_output_path(args.out, kind="folder", what="analysis folder")  # before models load
    if args.analysis == "layers":
        suite.select_compression_layers(args.source, args.out, method=args.method, size=args.size)
        return 0
    handle = None
    if args.model:
        from promptatlas.models import load_model

        handle = load_model(args.model, device=args.device)
    handle, entries = suite.load_bank(args.prompts, handle)
    out = Path(args.out)
    cfg = None
    if args.analysis != "pca":
        cfg = suite.AnalysisConfig(
            n_examples=args.n_examples,
            split=args.split,
            batch_size=args.batch_size,
            n_tokens=args.n_tokens,
            data_dir=args.data_dir,
        )
    print(f"analysing {len(entries)} prompts on {handle.name}")
    if args.analysis in ("attention", "all"):
        suite.analyze_attention(
            entries, handle, out / "attention" if args.analysis == "all" else out, cfg
        )
    if args.analysis in ("neurons", "all"):
        suite.analyze_neurons(entries, handle, out / "neurons" if args.analysis == "all" else out)
    if args.analysis in ("geometry", "all"):
        suite.analyze_geometry(
            entries, handle, out / "geometry" if args.analysis == "all" else out, cfg
        )
    if args.analysis in ("pca", "all"):
        suite.analyze_pca(entries, out / "pca" if args.analysis == "all" else out)
    if args.analysis == "all":
        suite.select_compression_layers(out / "attention", out / "compression.yaml")
    from promptatlas.report.html import write_html

    print(f"figures, tables and summaries in {out}; page: {write_html(out)}")
    return 0


def _cmd_models(_: argparse.Namespace) -> int:
    from promptatlas.models import list_models

    for entry in list_models():
        print(f"{entry.name:14s} {entry.description}")
    print("…or any Hugging Face hub id / local directory (offline unless PROMPTATLAS_ONLINE=1)")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from promptatlas.tasks import list_tasks

    if args.check:
        from promptatlas.evaluation.taskcheck import check_task
        from promptatlas.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
        print(check_task(args.check, tokenizer=tokenizer, data_dir=args.data_dir))
        print(f"(label-word tokens counted with the {args.model} tokenizer)")
        return 0

    for t in list_tasks():
        labels = ", ".join(t.verbalizers[lab] for lab in t.labels) or "(generation)"
        split = "official" if t.official_split else "carved"
        print(f"{t.name:7s} {t.dataset:14s} {t.spec.metric:10s} {split:8s} {labels}")
    return 0


# -- skill neurons and transferability indicators ----------------------------------------------


def _skill_default(cls_name: str, name: str) -> Any:
    """A default of the skill-neuron run configs (promptatlas.runs.neurons), for help texts."""
    from promptatlas.runs import neurons

    return getattr(getattr(neurons, cls_name)(), name)


def _study_default(func: str, name: str) -> Any:
    """A keyword default of a function of promptatlas.studies.skill, for help texts."""
    import inspect

    from promptatlas.studies import skill

    return inspect.signature(getattr(skill, func)).parameters[name].default


def _given(**values: Any) -> dict[str, Any]:
    """The options given on the command line (None = the library default)."""
    return {k: v for k, v in values.items() if v is not None}


def _pct(values: Any) -> str:
    return ",".join(f"{v:g}" for v in values)


def _add_neurons(sub: Any) -> None:
    """The ``neurons`` command: find, perturb, prune, overlap."""
    from promptatlas.analysis.skill import MODES, POSITIONS, STATES

    p = sub.add_parser(
        "neurons",
        help="skill neurons of a stored prompt: find, perturb, prune, overlap, matrix, lora",
        description="Skill neurons (Wang et al. 2022) of a stored task prompt: the FFN neurons "
        "whose activation at the decoding token predicts the label. `find` scores every "
        "neuron, `perturb` and `prune` test what the top ones do, `overlap` compares tasks or "
        "languages. Definitions: docs/skill-neurons.md.",
    )
    nsub = p.add_subparsers(dest="neurons_command", required=True, metavar="STEP")
    f = nsub.add_parser(
        "find",
        help="predictivity of every FFN neuron; skill neurons per p",
        description="Predictivity of every FFN neuron for the prompt's task: thresholds = "
        "training means, accuracy on the dev split, max over polarity (multi-class: "
        "one-vs-rest balanced accuracy, averaged). Writes predictivity.npz/.json (read by "
        "perturb/prune/overlap), by_layer.csv/.png, skill_<p>pct.csv/.json, best_neuron.png and "
        "run.json into --out.",
    )
    f.add_argument(
        "--prompt",
        required=True,
        help="a task prompt directory (its model and task), or a `neurons lora` folder",
    )
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument(
        "--state",
        choices=STATES,
        default=None,
        help="down_input (default): the input of the FFN down-projection; gate: the gate "
        "pre-activation (gated FFNs; GPT-2: c_fc output)",
    )
    f.add_argument(
        "--position",
        choices=POSITIONS,
        default=None,
        help="where to read: decoding (default; the last context token), input_mean, "
        "input_max, last_k",
    )
    f.add_argument("--k", type=int, default=None, help="positions for last_k (default 1)")
    f.add_argument("--layers", default=None, help="layers to score, e.g. 4-17 (default: all)")
    f.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help=f"training examples for the thresholds (default "
        f"{_skill_default('FindConfig', 'train_limit')})",
    )
    f.add_argument(
        "--dev-limit",
        type=int,
        default=None,
        help=f"held-out examples for the accuracies (default "
        f"{_skill_default('FindConfig', 'dev_limit')})",
    )
    f.add_argument(
        "--p",
        default=None,
        help=f"skill-neuron fractions to store (default "
        f"{_pct(_skill_default('FindConfig', 'ps'))})",
    )
    f.add_argument("--batch-size", type=int, default=None)
    f.add_argument("--data-dir", default=None, help="folder laid out like shared/data")

    q = nsub.add_parser(
        "perturb",
        help="perturb the top-p skill neurons vs random and least predictive ones",
        description="Evaluate the prompt on its test split with the top-p skill neurons of "
        "--skill perturbed (every position), against the same per-layer number of random "
        "neurons (disjoint, several seeds: mean ± std) and of the least predictive neurons. "
        "Writes perturbation.csv/.png/.json and run.json into --out.",
    )
    q.add_argument(
        "--prompt",
        required=True,
        help="the prompt to evaluate (a task prompt), or a `neurons lora` folder",
    )
    q.add_argument("--skill", required=True, help="a `neurons find` output folder")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help=f"zero, mean (training mean at the decoding token) or gaussian noise (default "
        f"{_skill_default('PerturbConfig', 'mode')})",
    )
    q.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"gaussian σ (default {_skill_default('PerturbConfig', 'sigma')})",
    )
    q.add_argument(
        "--top",
        default=None,
        help=f"fractions p of skill neurons per layer, e.g. 0.01,0.02,0.05 or 1%%,2%% (default "
        f"{_pct(_skill_default('PerturbConfig', 'ps'))})",
    )
    q.add_argument(
        "--random-seeds",
        type=int,
        default=None,
        help=f"random controls (default {_skill_default('PerturbConfig', 'n_random')})",
    )
    q.add_argument("--test-limit", type=int, default=None, help="test examples (default: all)")
    q.add_argument("--data-dir", default=None, help="folder laid out like shared/data")

    r = nsub.add_parser(
        "prune",
        help="slice FFNs to the skill neurons; parameters, score, forward time",
        description="Keep ⌈keep·D⌉ neurons in each chosen layer (the skill neurons first, "
        "then the next most predictive), fold the removed neurons' training mean into the "
        "down-projection bias, and compare with the unpruned model and random pruning: kept "
        "parameters, test score, forward-time ratio. Writes pruning.csv/.json and run.json.",
    )
    r.add_argument("--prompt", required=True, help="a task prompt directory")
    r.add_argument("--skill", required=True, help="a `neurons find` output folder")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--layers", default=None, help="layers to prune, e.g. 4-17 (default ⌊L/4⌋..L−1)")
    r.add_argument(
        "--keep",
        type=float,
        default=None,
        help=f"fraction of neurons kept per pruned layer (default "
        f"{_skill_default('PruneConfig', 'keep')})",
    )
    r.add_argument(
        "--mean",
        choices=("tokens", "decoding", "zero"),
        default=None,
        help="μ folded into the bias: mean over training tokens (default), at the decoding "
        "token, or zero",
    )
    r.add_argument("--no-random", action="store_true", help="skip the random-pruning control")
    r.add_argument("--test-limit", type=int, default=None, help="test examples (default: all)")
    r.add_argument("--data-dir", default=None, help="folder laid out like shared/data")

    o = nsub.add_parser(
        "overlap",
        help="skill-neuron overlap and predictivity correlation between find folders",
        description="Overlap |S_a ∩ S_b| / |S_a| of the top-p skill neurons (chance level: p) "
        "and Spearman ρ of the predictivity vectors between `neurons find` folders, e.g. the "
        "same task in English and Korean. No model is loaded.",
    )
    o.add_argument("--skill", nargs="+", required=True, help="two or more `neurons find` folders")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--p", default="0.01", help="fractions, e.g. 0.01,0.05 (default 0.01)")
    m = nsub.add_parser(
        "matrix",
        help="task x task (or language x language) perturbation matrix",
        description="Perturb the top-p skill neurons of each --skill folder (rows) inside the "
        "model prompted with each --prompts prompt (columns), evaluated on that prompt's test "
        "split: is a skill specific to its task, shared across languages? Writes matrix.csv, "
        "matrix.png (drop x100), matrix_relative.png and run.json.",
    )
    m.add_argument("--prompts", nargs="+", required=True, help="task prompt directories")
    m.add_argument("--skill", nargs="+", required=True, help="`neurons find` folders")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument(
        "--p",
        type=float,
        default=None,
        help=f"fraction per layer (default {_study_default('perturbation_matrix', 'p')})",
    )
    m.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help=f"default {_study_default('perturbation_matrix', 'mode')}",
    )
    m.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"gaussian σ (default {_study_default('perturbation_matrix', 'sigma')})",
    )
    m.add_argument("--test-limit", type=int, default=None, help="test examples (default: all)")
    m.add_argument("--data-dir", default=None, help="folder laid out like shared/data")

    lo = nsub.add_parser(
        "lora",
        help="tune LoRA on the attention for a prompt's task (for perturb/find/prune)",
        description="The fine-tuned counterpart of a prompt: PEFT LoRA adapters on every "
        "attention projection, tuned on the task of --prompt with its model, input format and "
        "evaluation settings (the prompt itself is not used), the FFN untouched. Writes "
        "lora.safetensors, lora.json (untuned and tuned test scores, paired gain) and "
        "run.json. Give the folder as --prompt to `neurons perturb` (or find, prune) to test "
        "whether the prompt's skill neurons matter in the tuned model too.",
    )
    lo.add_argument("--prompt", required=True, help="a task prompt directory (task, model, format)")
    lo.add_argument("--out", required=True, help="output folder")
    cfg_default = _skill_default("LoRARunConfig", "train")
    lo.add_argument(
        "--steps", type=int, default=None, help=f"training steps (default {cfg_default.steps})"
    )
    lo.add_argument("--lr", type=float, default=None, help=f"default {cfg_default.lr:g}")
    lo.add_argument(
        "--batch-size", type=int, default=None, help=f"default {cfg_default.batch_size}"
    )
    lo.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help=f"dev checks, the best kept (default {cfg_default.eval_every})",
    )
    lora_default = _skill_default("LoRARunConfig", "lora")
    lo.add_argument("--r", type=int, default=None, help=f"rank (default {lora_default.r})")
    lo.add_argument(
        "--alpha",
        type=int,
        default=None,
        help=f"scale numerator (default {lora_default.alpha})",
    )
    lo.add_argument("--seed", type=int, default=None, help=f"default {cfg_default.seed}")
    lo.add_argument("--train-limit", type=int, default=None, help="training examples (all)")
    lo.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help=f"test examples (default {_skill_default('LoRARunConfig', 'test_limit')})",
    )
    lo.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    for a in (f, q, r, m, lo):
        _add_precision(a)
        a.add_argument(
            "--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)"
        )
        a.add_argument("--quiet", action="store_true", help="no progress output")


def _add_indicators(sub: Any) -> None:
    """The ``indicators`` command."""
    p = sub.add_parser(
        "indicators",
        help="Spearman ρ of each transferability indicator with a grid's measured transfer",
        description="Embedding similarity, ON (per layer, per window of 3 layers, overall) and "
        "skill-neuron indicators between the own prompts of a finished `promptatlas grid` run, "
        "correlated with measured transfer T(s→t): by default zero-shot (the source's prompt on "
        "the target's test examples / the target's own prompt on them, every task pair of a "
        "language and every task across languages; no transfer cell needed), or with "
        "--transfer init the grid's transfer cells (transferred / own score): per target, mean "
        "± std, and pooled with its p-value. Writes indicators.csv/.png/.json, scatter.png, "
        "pairs.csv and run.json.",
    )
    p.add_argument("--grid", required=True, help="the output folder of a finished grid")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--p",
        type=float,
        default=None,
        help=f"skill-neuron fraction (default {_study_default('grid_indicators', 'p')})",
    )
    p.add_argument(
        "--no-skill",
        action="store_true",
        help="skip the skill-neuron indicators (they read each task's train/dev examples)",
    )
    for name in ("train_limit", "dev_limit"):
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"per task (default {_study_default('grid_indicators', name)})",
        )
    from promptatlas.studies.skill import TRANSFER_MEASURES

    p.add_argument(
        "--transfer",
        default=None,
        help=f"how T is measured ({' or '.join(TRANSFER_MEASURES)}): zero-shot evaluation of "
        "every pair, or the grid's transfer cells "
        f"(default {_study_default('grid_indicators', 'transfer')})",
    )
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="test examples per target for zero-shot transfer "
        f"(default {_study_default('grid_indicators', 'test_limit')})",
    )
    p.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    p.add_argument("--device", default=None)


def _add_suggest(sub: Any) -> None:
    """The ``suggest`` command."""
    from promptatlas.studies.skill import SKILL_INDICATORS, SUGGEST_INDICATOR

    p = sub.add_parser(
        "suggest",
        help="rank a bank's prompts as transfer sources for a new task, before training",
        description="Rank the task prompts of --bank as sources for a new task by one "
        f"indicator. Skill-neuron indicators ({', '.join(SKILL_INDICATORS)}) need --train-limit "
        "labelled training and --dev-limit held-out examples of the new task (tens suffice) and "
        "no prompt of it; embedding and ON indicators (cos_flat, on_all, ...) need "
        "--probe-prompt, a prompt of the new task trained for a few steps.",
    )
    p.add_argument("--task", required=True, help="the new task (a registered name or task file)")
    p.add_argument("--lang", required=True, help="its language")
    p.add_argument("--bank", required=True, help="a folder of prompt directories (one model)")
    p.add_argument(
        "--top",
        type=int,
        default=None,
        help=f"sources to list (default {_study_default('suggest_sources', 'top')})",
    )
    p.add_argument(
        "--indicator",
        default=SUGGEST_INDICATOR,
        help=f"an indicator name (default {SUGGEST_INDICATOR}), or an `indicators` output folder: "
        "its best measured indicator that the probe can compute",
    )
    p.add_argument("--probe-prompt", default=None, help="a prompt of the new task")
    for name in ("train_limit", "dev_limit"):
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"examples of the new task and of each source's task (default "
            f"{_study_default('suggest_sources', name)})",
        )
    p.add_argument("--model", default=None, help="only the bank's prompts of this model")
    p.add_argument("--out", default=None, help="also write the ranking and values as JSON")
    p.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    p.add_argument("--device", default=None)


def _neurons_config(cls: Any, args: argparse.Namespace, **values: Any) -> Any:
    """The run config: the library defaults, overridden by the options given."""
    given = {k: v for k, v in values.items() if v is not None}
    given["precision"] = args.precision
    return cls(**given)


def _cmd_neurons(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptatlas.outputs import check_output_path
    from promptatlas.runs import neurons as runs

    check_output_path(args.out, kind="folder", what="results folder")  # before models load
    log = print
    if args.neurons_command == "overlap":
        for p in runs.parse_fractions(args.p):
            sub = Path(args.out) if "," not in args.p else Path(args.out) / f"p{p * 100:g}pct"
            runs.overlap_run(args.skill, sub, p=p, log=log)
        print(f"tables and figures in {args.out}")
        return 0
    if args.neurons_command == "matrix":
        from promptatlas.studies.skill import perturbation_matrix

        for d in args.skill:
            runs.load_skill(d)  # before the model loads
        handle = None
        if args.device:
            from promptatlas.bank import read_metadata
            from promptatlas.models import load_model

            handle = load_model(read_metadata(args.prompts[0]).model, device=args.device)
        perturbation_matrix(
            args.prompts,
            args.skill,
            args.out,
            **_given(p=args.p, mode=args.mode, sigma=args.sigma),
            test_limit=args.test_limit,
            data_dir=args.data_dir,
            precision=args.precision,
            handle=handle,
            log=log,
        )
        print(f"tables and figures in {args.out}")
        return 0
    if args.neurons_command == "lora":
        import dataclasses

        base = runs.LoRARunConfig()
        train = dataclasses.replace(
            base.train,
            **_given(
                steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                eval_every=args.eval_every,
                seed=args.seed,
            ),
        )
        lora = dataclasses.replace(base.lora, **_given(r=args.r, alpha=args.alpha))
        cfg = _neurons_config(
            runs.LoRARunConfig,
            args,
            lora=lora,
            train=train,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            data_dir=args.data_dir,
        )
        handle = None
        if args.device:
            from promptatlas.bank import read_metadata
            from promptatlas.models import load_model

            handle = load_model(read_metadata(args.prompt).model, device=args.device)
        runs.lora_run(args.prompt, args.out, cfg, handle=handle, progress=not args.quiet, log=log)
    elif args.neurons_command == "find":
        cfg = _neurons_config(
            runs.FindConfig,
            args,
            state=args.state,
            position=args.position,
            k=args.k,
            layers=runs.parse_layers(args.layers) if args.layers else None,
            train_limit=args.train_limit,
            dev_limit=args.dev_limit,
            ps=runs.parse_fractions(args.p) if args.p else None,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
        )
        source = runs.load_source(args.prompt, device=args.device, precision=cfg.precision)
        runs.find_neurons(args.prompt, args.out, cfg, source=source, log=log)
    elif args.neurons_command == "perturb":
        cfg = _neurons_config(
            runs.PerturbConfig,
            args,
            mode=args.mode,
            sigma=args.sigma,
            ps=runs.parse_fractions(args.top) if args.top else None,
            n_random=args.random_seeds,
            test_limit=args.test_limit,
            data_dir=args.data_dir,
        )
        runs.load_skill(args.skill)  # a wrong folder fails before the model loads
        source = runs.load_source(args.prompt, device=args.device, precision=cfg.precision)
        runs.perturb_neurons_run(args.prompt, args.skill, args.out, cfg, source=source, log=log)
    else:
        cfg = _neurons_config(
            runs.PruneConfig,
            args,
            layers=runs.parse_layers(args.layers) if args.layers else None,
            keep=args.keep,
            mean_source=args.mean,
            random_control=False if args.no_random else None,
            test_limit=args.test_limit,
            data_dir=args.data_dir,
        )
        runs.load_skill(args.skill)
        source = runs.load_source(args.prompt, device=args.device, precision=cfg.precision)
        runs.prune_run(args.prompt, args.skill, args.out, cfg, source=source, log=log)
    print(f"tables, figures and run.json in {args.out}")
    return 0


def _cmd_indicators(args: argparse.Namespace) -> int:
    from promptatlas.outputs import check_output_path
    from promptatlas.studies.skill import grid_indicators, grid_transfer

    check_output_path(args.out, kind="folder", what="results folder")
    given = _given(
        p=args.p,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        transfer=args.transfer,
        test_limit=args.test_limit,
    )
    measure = given.get("transfer", _study_default("grid_indicators", "transfer"))
    # a folder that is not a finished grid fails before the model loads
    grid = grid_transfer(args.grid, measure=measure)
    handle = None
    if args.device:
        from promptatlas.bank import read_metadata
        from promptatlas.models import load_model

        first = next(iter(grid.prompts.values()))
        handle = load_model(read_metadata(first).model, device=args.device)
    grid_indicators(
        args.grid,
        args.out,
        **given,
        skill=not args.no_skill,
        data_dir=args.data_dir,
        handle=handle,
        log=print,
    )
    print(f"tables and figures in {args.out}")
    return 0


def _cmd_suggest(args: argparse.Namespace) -> int:
    from promptatlas.studies.skill import suggest_sources

    if args.out:
        from promptatlas.outputs import check_output_path

        check_output_path(args.out, kind="file", what="JSON file")
    handle = None
    if args.device and args.model:
        from promptatlas.models import load_model

        handle = load_model(args.model, device=args.device)
    ranked, values = suggest_sources(
        _name(args.task),
        _name(args.lang),
        args.bank,
        **_given(top=args.top, train_limit=args.train_limit, dev_limit=args.dev_limit),
        indicator=args.indicator,
        probe_prompt=args.probe_prompt,
        data_dir=args.data_dir,
        model=args.model,
        handle=handle,
        log=print,
    )
    indicator = ranked[0].indicator if ranked else args.indicator
    print(f"sources for {args.task}-{args.lang} by {indicator}:")
    for s in ranked:
        print(f"  {s.rank}. {s.source}  {s.value:+.4f}")
    if args.out:
        from pathlib import Path

        from promptatlas.io import write_json_atomic

        write_json_atomic(
            Path(args.out),
            {
                "task": args.task,
                "lang": args.lang,
                "indicator": indicator,
                "ranking": [{"rank": s.rank, "source": s.source, "value": s.value} for s in ranked],
                "values": values,
            },
        )
    return 0


def _task_list(text: str) -> tuple[str, ...]:
    """``sa,nli,sts`` → ("sa", "nli", "sts") (case-insensitive)."""
    names = tuple(_name(t) for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("give one or more task names, e.g. sa,nli,sts")
    return names


def _add_compose_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-limit", type=int, default=None, help="training examples per task")
    p.add_argument("--dev-limit", type=int, default=64, help="dev examples per task (default 64)")
    p.add_argument(
        "--test-limit", type=int, default=None, help="test examples scored per task (default all)"
    )
    p.add_argument(
        "--data-dir", default=None, help="folder laid out like shared/data (default: bundled)"
    )
    _add_precision(p)


def _add_compose(sub: Any) -> None:
    """The ``compose`` command."""
    from promptatlas.runs.compose import CPU_AMP, CPU_ATTEMPT, CPU_PT

    p = sub.add_parser(
        "compose",
        help="compose a target prompt from source prompts: AMP, ATTEMPT, SPoT, PT",
        description="Compose prompts for target tasks from the task prompts of a bank in one "
        "language (docs/composition.md). Each target writes a prompt directory under "
        "OUT/prompts (ATTEMPT: its mixer, as its prompt depends on the input), test scores with "
        "95% bootstrap intervals (OUT/scores.csv) and OUT/run.json (config, versions, CPU, "
        "precision). Defaults are CPU-sized (tens of steps); the papers' settings are in "
        "configs/compose-gpu.yaml.",
    )
    msub = p.add_subparsers(dest="compose_method", required=True, metavar="METHOD")
    helps = {
        "amp": "AMP: attention over the source prompts (DAM), one psi trained on all targets "
        "mixed; writes the attention matrix and heatmap",
        "attempt": "ATTEMPT: per-input attention over the sources plus a trained target prompt",
        "spot": "SPoT: prompt tuning started from the sources (-s: similarity-weighted average; "
        "-m: one source, default NLI)",
        "pt": "plain prompt tuning of each target (the baseline of the comparison)",
    }
    for name, text in helps.items():
        a = msub.add_parser(name, help=text, description=text + ".")
        a.add_argument(
            "--sources",
            required=True,
            metavar="BANK",
            help="a bank folder of task prompts (one model, one kind of prompt); every target "
            "needs its own task prompt there",
        )
        a.add_argument(
            "--tasks",
            "--task",
            dest="tasks",
            type=_task_list,
            required=True,
            metavar="T[,T...]",
            help="target task(s), comma-separated, e.g. sa,nli,sts",
        )
        a.add_argument("--lang", type=_name, required=True, help="language of sources and targets")
        a.add_argument(
            "--source-tasks",
            type=_task_list,
            default=None,
            metavar="T[,T...]",
            help="which bank tasks are sources (default: every task prompt of --lang)",
        )
        a.add_argument("--model", default=None, help="default: the model of the bank's prompts")
        if name == "spot":
            a.add_argument("--mode", choices=("s", "m"), default="s", help="SPoT-s or SPoT-m")
            a.add_argument(
                "--source", default=None, help="SPoT-m's source task (default nli of --lang)"
            )
        defaults: Any = {"amp": CPU_AMP, "attempt": CPU_ATTEMPT}.get(name, CPU_PT)
        paper = {"amp": "paper 10 epochs", "attempt": "paper 20 epochs"}.get(name, "")
        a.add_argument(
            "--steps",
            type=int,
            default=defaults.steps,
            help=f"training steps (default {defaults.steps}, CPU-sized"
            + (f"; {paper})" if paper else ")"),
        )
        a.add_argument("--batch-size", type=int, default=defaults.batch_size)
        lr_help = {
            "amp": f"psi's learning rate (default {CPU_AMP.lr:g}: the paper's 5e-5 leaves psi "
            "where it started in a CPU run; docs/composition.md)",
            "attempt": f"default {CPU_ATTEMPT.lr:g} (the reference's)",
        }.get(name, "prompt learning rate (default: the prompt method's)")
        a.add_argument("--lr", type=float, default=None, help=lr_help)
        if name == "amp":
            a.add_argument("--k", type=int, default=None, help="query/key size (default d)")
            a.add_argument("--pooling", choices=("dam", "max"), default="dam")
            a.add_argument("--value", choices=("linear", "identity"), default="linear")
        a.add_argument("--seed", type=int, default=42)
        a.add_argument(
            "--source-seed", type=int, default=None, help="which seed's prompt of a task"
        )
        _add_compose_data(a)
        a.add_argument("--out", required=True, help="folder for the run's outputs")
        a.add_argument(
            "--overwrite", action="store_true", help="replace a composition run already at --out"
        )
        _add_common_model(a)


def _add_ipt(sub: Any) -> None:
    """The ``ipt`` command."""
    from promptatlas.runs.compose import CPU_IPT, CPU_IST

    p = sub.add_parser(
        "ipt",
        help="IPT: an intrinsic task subspace of many prompts, and tuning inside it",
        description="Intrinsic prompt tuning (Qin et al.; docs/composition.md): `fit` trains "
        "an autoencoder over many task prompts (tasks x languages x seeds) and stores the "
        "subspace; `tune` trains only z (d_I numbers) for a task, the decoder frozen, and "
        "stores dec(z) as a prompt directory. Defaults are CPU-sized.",
    )
    isub = p.add_subparsers(dest="ipt_command", required=True, metavar="STEP")
    f = isub.add_parser(
        "fit",
        help="fit the subspace on a bank's task prompts",
        description="Fit IPT's autoencoder on the task prompts of a bank; writes a subspace "
        "directory (subspace.safetensors, subspace.json) and the PCA of the intrinsic vectors.",
    )
    f.add_argument("--prompts", required=True, metavar="BANK", help="a bank folder")
    f.add_argument("--dim", type=int, default=5, help="intrinsic dimension d_I (default 5)")
    f.add_argument("--tasks", type=_task_list, default=None, help="only these tasks")
    f.add_argument("--langs", type=_task_list, default=None, help="only these languages")
    f.add_argument(
        "--exclude",
        type=_task_list,
        default=(),
        metavar="T[,T...]",
        help="tasks (or task-lang) left out of the fit: the unseen tasks of a recovery study",
    )
    f.add_argument(
        "--steps", type=int, default=CPU_IPT.steps, help=f"default {CPU_IPT.steps} (paper 100k)"
    )
    f.add_argument(
        "--lr", type=float, default=CPU_IPT.lr, help=f"default {CPU_IPT.lr:g} (paper 3e-5)"
    )
    f.add_argument("--batch-size", type=int, default=CPU_IPT.batch_size)
    f.add_argument(
        "--task-loss",
        action="store_true",
        help="add the decoded prompts' task loss (a model forward per step) to the "
        "reconstruction loss, as the paper does (default: reconstruction only)",
    )
    f.add_argument("--seed", type=int, default=42)
    f.add_argument("--model", default=None, help="default: the model of the bank's prompts")
    f.add_argument("--train-limit", type=int, default=None)
    f.add_argument("--data-dir", default=None)
    _add_precision(f)
    f.add_argument("--out", required=True, help="subspace directory to create")
    _add_common_model(f)
    t = isub.add_parser(
        "tune",
        help="tune a task inside a stored subspace (only z trains)",
        description="Intrinsic subspace tuning: z ~ N(0, 0.02^2), prompt = dec(z), only z "
        "trains; stores the tuned prompt as a prompt directory with its test score and, with "
        "--full, its recovery (IST score / full prompt-tuning score).",
    )
    t.add_argument("--subspace", required=True, help="a directory written by `ipt fit`")
    t.add_argument("--task", type=_name, required=True)
    t.add_argument("--lang", type=_name, required=True)
    t.add_argument(
        "--template",
        default=None,
        help="a prompt directory whose frozen segments (e.g. its language segment) the tuned "
        "prompt keeps (default: the subspace's)",
    )
    t.add_argument(
        "--full",
        default=None,
        help="a fully prompt-tuned prompt of the same task and language: its stored test "
        "score gives the recovery",
    )
    t.add_argument(
        "--steps", type=int, default=CPU_IST.steps, help=f"default {CPU_IST.steps} (paper 100k)"
    )
    t.add_argument(
        "--lr", type=float, default=CPU_IST.lr, help=f"default {CPU_IST.lr:g} (paper 1e-5)"
    )
    t.add_argument("--batch-size", type=int, default=CPU_IST.batch_size)
    t.add_argument("--seed", type=int, default=42)
    _add_compose_data(t)
    t.add_argument("--out", required=True, help="prompt directory to create")
    _add_overwrite(t)
    _add_common_model(t)


def _cmd_compose(args: argparse.Namespace) -> int:
    import dataclasses

    from promptatlas.bank import ResultsDB
    from promptatlas.runs.compose import (
        CPU_AMP,
        CPU_ATTEMPT,
        CPU_PT,
        ComposeRunConfig,
        compose_run,
    )

    method = args.compose_method
    if method == "spot":
        method = f"spot-{args.mode}"
    lr = {} if args.lr is None else {"lr": args.lr}
    common = {"steps": args.steps, "batch_size": args.batch_size, **lr}
    amp, attempt, pt = CPU_AMP, CPU_ATTEMPT, CPU_PT
    if method == "amp":
        amp = dataclasses.replace(
            CPU_AMP, k=args.k, pooling=args.pooling, value=args.value, **common
        )
    elif method == "attempt":
        attempt = dataclasses.replace(CPU_ATTEMPT, **common)
    else:
        pt = dataclasses.replace(CPU_PT, **common)
    cfg = ComposeRunConfig(
        method=method,
        sources=args.sources,
        tasks=args.tasks,
        lang=args.lang,
        model=args.model,
        source_tasks=args.source_tasks,
        source_seed=args.source_seed,
        pt=pt,
        amp=amp,
        attempt=attempt,
        spot_source=getattr(args, "source", None),
        data_dir=args.data_dir,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        test_limit=args.test_limit,
        seed=args.seed,
        precision=args.precision,
        device=args.device,
    )
    with ResultsDB(args.db) as db:
        result = compose_run(
            cfg, args.out, db=db, overwrite=args.overwrite, log=None if args.quiet else print
        )
    for s in result.scores:
        ci = "" if s.low is None else f" [{100 * s.low:.1f}, {100 * s.high:.1f}]"  # type: ignore[operator]
        print(f"{method} {s.key}: {100 * s.score:.1f}{ci} on test (n={s.n})")
    if result.attention is not None:
        print(f"attention (rows: targets, columns: sources {result.keys}):")
        for key, row in zip(result.keys, result.attention.tolist(), strict=True):
            print(f"  {key:10s} " + " ".join(f"{v:.2f}" for v in row))
    print(f"outputs in {result.out} ({result.seconds:.0f}s)")
    return 0


def _cmd_ipt(args: argparse.Namespace) -> int:
    import dataclasses

    from promptatlas.bank import ResultsDB
    from promptatlas.runs.compose import (
        CPU_IPT,
        CPU_IST,
        IPTFitRunConfig,
        IPTTuneRunConfig,
        ipt_fit_run,
        ipt_tune_run,
        subspace_info,
    )

    with ResultsDB(args.db) as db:
        if args.ipt_command == "fit":
            fit = dataclasses.replace(
                CPU_IPT,
                intrinsic_dim=args.dim,
                steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                task_loss=args.task_loss,
                seed=args.seed,
            )
            cfg = IPTFitRunConfig(
                prompts=args.prompts,
                ipt=fit,
                tasks=args.tasks,
                langs=args.langs,
                exclude=args.exclude,
                model=args.model,
                data_dir=args.data_dir,
                train_limit=args.train_limit,
                precision=args.precision,
                device=args.device,
            )
            sub = ipt_fit_run(cfg, args.out, db=db)
            mse = subspace_info(args.out).get("reconstruction_mse", float("nan"))
            print(
                f"subspace d_I = {sub.intrinsic_dim} fitted on {len(sub.keys)} prompts "
                f"({', '.join(sorted(set(sub.keys)))}); reconstruction MSE {mse:.4g}; "
                f"saved {args.out}"
            )
            return 0
        ist = dataclasses.replace(
            CPU_IST, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed
        )
        tune = IPTTuneRunConfig(
            subspace=args.subspace,
            task=args.task,
            lang=args.lang,
            ist=ist,
            template=args.template,
            full=args.full,
            data_dir=args.data_dir,
            train_limit=args.train_limit,
            dev_limit=args.dev_limit,
            test_limit=args.test_limit,
            precision=args.precision,
            device=args.device,
        )
        res = ipt_tune_run(tune, args.out, db=db, overwrite=args.overwrite)
    line = (
        f"IST {tune.task}-{tune.lang} ({'seen' if res.seen else 'unseen'} task): "
        f"{100 * res.score.score:.1f} on test (n={res.score.n})"
    )
    if res.recovery is not None:
        line += f"; recovery {100 * res.recovery:.1f}% of full prompt tuning"
    print(f"{line}; saved {res.path}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "runs": _cmd_runs,
    "export": _cmd_export,
    "run": _cmd_run,
    "lang-prompt": _cmd_lang_prompt,
    "transfer": _cmd_transfer,
    "zero-shot": _cmd_zero_shot,
    "grid": _cmd_grid,
    "project": _cmd_project,
    "analyze": _cmd_analyze,
    "models": _cmd_models,
    "tasks": _cmd_tasks,
    "predict": _cmd_predict,
    "neurons": _cmd_neurons,
    "indicators": _cmd_indicators,
    "suggest": _cmd_suggest,
    "compose": _cmd_compose,
    "ipt": _cmd_ipt,
    "import": _cmd_import,
    "report": _cmd_report,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from promptatlas.bank import ExportError, PromptLoadError
    from promptatlas.launch import LaunchError
    from promptatlas.models import ModelNotAvailableError, UnsupportedArchitectureError
    from promptatlas.prompts import PromptConfigError
    from promptatlas.studies.executors import ExecutorError
    from promptatlas.studies.experiment import ExperimentError
    from promptatlas.tasks import DataError
    from promptatlas.training import TrainConfigError
    from promptatlas.transfer import ProjectorError

    return (
        LaunchError,
        DataError,
        PromptLoadError,
        ExportError,
        ExperimentError,
        ExecutorError,
        ProjectorError,
        ModelNotAvailableError,
        UnsupportedArchitectureError,
        PromptConfigError,
        TrainConfigError,
        ValueError,
        OSError,  # writes and reads: a file in the way, a read-only place, a full disk
        sqlite3.Error,  # the results database (ResultsDB turns most into ResultsDBError)
    )


_OS_FIXES = {
    errno.EEXIST: "remove it or choose another path",
    errno.ENOTEMPTY: "empty it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOENT: "check the path",
    errno.EACCES: "the place is not writable or readable for you; fix its permissions or "
    "choose another path",
    errno.EPERM: "the operation is not permitted there; choose another path",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
}


def _describe(exc: BaseException) -> str:
    """The one-line message of an error a person can act on."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f" {exc.filename}" if exc.filename is not None else ""
        if exc.filename2 is not None:
            where += f" → {exc.filename2}"
        fix = _OS_FIXES.get(exc.errno, "check the path and its permissions, or choose another")
        return f"{exc.strerror}:{where}; {fix}"
    if isinstance(exc, sqlite3.Error):
        return f"results database: {exc}; choose another with --db or $PROMPTATLAS_DB"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PROMPTATLAS_ONLINE") != "1":
        # Offline by default: no library may reach a model hub behind our back.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    from promptatlas.console import quiet_libraries, show_warnings_as_lines

    if "--quiet" in argv:  # before torch/transformers are imported: their switches are read then
        quiet_libraries()
    show_warnings_as_lines()
    args = _parser().parse_args(argv)
    try:
        from promptatlas.launch import refuse_multi_process_launch

        refuse_multi_process_launch()
        return _COMMANDS[args.command](args)
    except _user_errors() as exc:
        if os.environ.get("PROMPTATLAS_DEBUG") == "1":
            raise
        print(f"promptatlas: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from promptatlas.training import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"promptatlas: {exc.describe()}", file=sys.stderr)
            return 128 + (exc.signum or 2)  # 130 for Ctrl-C, 143 for SIGTERM
        print(
            "promptatlas: interrupted (finished work is kept: rerun the same command to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
