"""Non-UTF-8 data and empty files: a DataError naming the file, the line/byte and the fix,
for load_file, the --data-dir loaders and raw text; a header-only file is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptatlas.cli import main
from promptatlas.tasks import DataError, load_file, load_split
from promptatlas.tasks.rawtext import load_raw_text

KOREAN = "정말 재미있는 영화"  # cp949 bytes are not UTF-8


def test_load_file_names_file_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"input1,label\ngood film,positive\n" + f"{KOREAN},긍정\n".encode("cp949"))
    with pytest.raises(DataError) as info:
        load_file(path, "sa", "ko")
    message = str(info.value)
    assert message.startswith(f"{path}:3: not utf-8 text")
    assert "byte 0xc1 at offset 32, byte 1 of the line" in message
    assert "encoding=" in message and "re-encode" in message
    # The fix it names works.
    examples = load_file(path, "sa", "ko", encoding="cp949")
    assert examples[1].inputs == (KOREAN,) and examples[1].label == "positive"
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        load_file(path, "sa", "ko", encoding="klingon")


@pytest.mark.parametrize("suffix", ["tsv", "json", "jsonl"])
def test_every_format_reports_the_codec_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data.{suffix}"
    if suffix == "tsv":
        path.write_bytes(b"input1\tlabel\n" + KOREAN.encode("euc-kr") + b"\t1\n")
    elif suffix == "json":
        path.write_bytes(b'[{"input1": "' + KOREAN.encode("euc-kr") + b'", "label": 1}]')
    else:
        path.write_bytes(b'{"input1": "ok", "label": 1}\n{"input1": "'
                         + KOREAN.encode("euc-kr") + b'", "label": 0}\n')  # fmt: skip
    with pytest.raises(DataError, match=r"not utf-8 text \(byte 0x") as info:
        load_file(path, "sa", "ko")
    line = {"tsv": 2, "json": 1, "jsonl": 2}[suffix]
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert len(load_file(path, "sa", "ko", encoding="euc-kr")) == (2 if suffix == "jsonl" else 1)


def test_header_only_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("input1,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: no examples.*header without rows"):
        load_file(path, "sa", "en")


def _sst2(root: Path, train: bytes) -> Path:
    folder = root / "en" / "sst2"
    folder.mkdir(parents=True)
    rows = b"label\tsentence\n1\ta fine film\n0\ta dull film\n"
    (folder / "train.tsv").write_bytes(train)
    (folder / "dev.tsv").write_bytes(rows)
    (folder / "test.tsv").write_bytes(rows)
    return folder / "train.tsv"


def test_data_dir_loader_reports_encoding(tmp_path: Path) -> None:
    train = _sst2(tmp_path, b"label\tsentence\n1\tgood\n0\tcaf\xe9 au lait\n")
    with pytest.raises(DataError) as info:
        load_split("sa", "en", "train", data_dir=tmp_path)
    assert str(info.value).startswith(f"{train}:3: not utf-8 text (byte 0xe9")
    assert "re-encode" in str(info.value)


def test_data_dir_header_only_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = _sst2(tmp_path, b"label\tsentence\n")
    with pytest.raises(DataError, match="no train examples for sa-en") as info:
        load_split("sa", "en", "train", data_dir=tmp_path)
    assert str(train) in str(info.value) and "header but no rows" in str(info.value)
    code = main(["train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en", "--steps", "1",
                 "--data-dir", str(tmp_path), "--out", str(tmp_path / "p"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("promptatlas: error: ")
    assert str(train) in err.splitlines()[-1] and "Traceback" not in err


def test_raw_text_reports_encoding(tmp_path: Path) -> None:
    path = tmp_path / "ko.txt"
    path.write_bytes("첫 줄\n".encode() + KOREAN.encode("cp949") + b"\n")
    with pytest.raises(DataError, match=r"ko\.txt:2: not utf-8 text"):
        load_raw_text("ko", [path])
