"""CLI: --version, import --from-peft (the inverse of export), report --html, training curves
(and the --tensorboard notice), the executor options and the --shard deprecation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas import __version__
from promptatlas.cli import _executor, main
from promptatlas.studies.executors import ExecutorSpec
from promptatlas.training.curves import read_curve


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"promptatlas {__version__}"


def test_train_curve_import_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    out = tmp_path / "prompts" / "sa-en"
    code, text, err = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en", "--method",
        "v2", "--kv", "separate", "--length", "3", "--steps", "3", "--train-limit", "8",
        "--test-limit", "4", "--out", str(out), "--quiet", "--tensorboard", str(tmp_path / "tb"),
    )  # fmt: skip
    assert code == 0, err
    assert err.count("TensorBoard") == 1 and "pip install 'promptatlas[tensorboard]'" in err
    curve = tmp_path / "prompts" / "curves" / "sa-en.jsonl"
    assert [r["step"] for r in read_curve(curve)] == [1, 2, 3]
    assert curve.with_suffix(".png").is_file()

    code, _, err = _run(capsys, "export", str(out), "--out", str(tmp_path / "peft"))
    assert code == 0, err
    back = tmp_path / "back"
    code, text, err = _run(
        capsys, "import", "--from-peft", str(tmp_path / "peft"), "--model", "tiny-gpt2",
        "--out", str(back), "--task", "sa", "--lang", "en",
    )  # fmt: skip
    assert code == 0 and str(back) in text, err
    original, imported = (
        load_file(out / "prompt.safetensors"),
        load_file(back / "prompt.safetensors"),
    )
    assert original.keys() == imported.keys()
    assert all(torch.equal(original[k], imported[k]) for k in original)
    meta = json.loads((back / "prompt.json").read_text())
    assert meta["task"] == "sa" and meta["extra"]["imported_from"]
    # the same target again is refused before the model loads
    code, _, err = _run(capsys, "import", "--from-peft", str(tmp_path / "peft"), "--model",
                        "tiny-gpt2", "--out", str(back))  # fmt: skip
    assert code == 2 and "--overwrite" in err

    code, text, err = _run(capsys, "report", "--html", str(tmp_path / "prompts"))
    assert code == 0 and (tmp_path / "prompts" / "index.html").is_file(), err


class _Grid:
    executor = ExecutorSpec()


def _args(**given: Any) -> argparse.Namespace:
    base = {"executor": None, "address": None, "gpus_per_cell": None, "max_retries": None}
    return argparse.Namespace(**{**base, **given})


def test_executor_options_override_the_file() -> None:
    assert _executor(_args(), _Grid()) == ExecutorSpec()
    spec = _executor(_args(executor="ray", max_retries=2, gpus_per_cell=0.5), _Grid())
    assert spec == ExecutorSpec(kind="ray", max_retries=2, gpus_per_cell=0.5)
    assert _executor(_args(address="auto"), _Grid()).kind == "ray"


def test_shard_is_deprecated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import promptatlas.studies.grid as grid_mod

    calls: list[dict[str, Any]] = []

    def fake_run_grid(grid: Any, **kw: Any) -> int:
        calls.append(kw)
        return 0

    monkeypatch.setattr(grid_mod, "run_grid", fake_run_grid)
    config = Path(__file__).resolve().parents[1] / "configs" / "transfer-grid.yaml"
    code, _, err = _run(capsys, "grid", str(config), "--shard", "0/2", "--out", str(tmp_path / "g"))
    assert code == 0 and calls[0]["shard"] == (0, 2)
    assert "--shard is deprecated" in err and "--executor ray" in err and "runs --merge" in err
    assert calls[0]["executor"] == ExecutorSpec()
