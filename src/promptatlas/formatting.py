"""The unified text-to-text format (SPEC §2) and dynamic-padding batches.

Single-input task: ``[P] <bos> x <sep> y <eos>``;
pair task: ``[P] <bos> x1 <sep> x2 <sep> y <eos>``.
The loss covers ``y <eos>`` only. The *decoding token* is the last ``<sep>``: its next-token
prediction is the first target token.

Separator: the tokenizer's sep token when it has one, else its eos token (Gemma and GPT-2 have
no sep token; mGPT in the thesis used ``</s>``). Any literal text can be configured instead.

A cue is a configuration too: ``FormatConfig(template="{text}\nSentiment:", separator="",
target_prefix=" ")`` gives ``<bos> x \nSentiment: y <eos>`` with ``y`` the word-initial label
word (`` positive``), the layout a base LM reads best (docs/defaults.md).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.tasks import Example, TaskVariant
from promptatlas.tasks.taskfile import check_template, template_fields

__all__ = [
    "Batch",
    "EncodedExample",
    "FormatConfig",
    "TaskFormatter",
    "TextLMFormatter",
    "collate",
    "with_template",
]


@dataclass(frozen=True)
class FormatConfig(ConfigBase):
    separator: str = "sep_token"  # "sep_token" (tokenizer sep, else eos) or literal text
    add_bos: bool = True
    add_eos: bool = True  # after the target
    max_length: int | None = None  # total tokens of input + target; None = the task's budget
    # Text around the inputs, with a {name} slot per input of the task ("{text}\nSentiment:"),
    # in place of the task's own layout (``x1 <sep> [x2 <sep>]``); the separator still ends it.
    template: str | None = None
    # Text before every target: label words and answers (" " after a cue ending in ":", so the
    # label word is the word-initial token the model predicts there).
    target_prefix: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"max_length must be ≥ 8 tokens, got {self.max_length}")
        if self.template is not None and not template_fields(self.template, "format.template"):
            raise ConfigError(
                f"format.template {self.template!r} has no input slot; "
                "write each input as {name}, e.g. '{text}\\nSentiment:'"
            )


@dataclass(frozen=True)
class EncodedExample:
    ids: tuple[int, ...]  # context (ending with the decoding token) followed by the target
    n_context: int  # number of context tokens; target tokens are ids[n_context:]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    target_mask: torch.Tensor  # (B, T) True where the token is a target token
    lengths: torch.Tensor  # (B,) real lengths

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.target_mask, self.lengths)
            )
        )


class TaskFormatter:
    """Turns examples of one task into token ids for one tokenizer."""

    def __init__(self, tokenizer: Any, task: TaskVariant, fmt: FormatConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt or FormatConfig()
        if self.fmt.template is not None:
            task = with_template(task, self.fmt.template)
        self.task = task
        self.max_length = self.fmt.max_length or task.max_length
        self.bos = (
            [tokenizer.bos_token_id]
            if self.fmt.add_bos and tokenizer.bos_token_id is not None
            else []
        )
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos token; set one before formatting")
        self.eos_id = int(eos)
        if self.fmt.separator == "sep_token":
            sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else eos
            self.sep = [int(sep)]
        else:
            self.sep = self._tok(self.fmt.separator)
        self._label_ids: dict[str, list[int]] | None = None
        self._pieces: tuple[list[int], list[list[int]], list[int]] | None = None

    @property
    def name(self) -> str:
        return self.task.name

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- encoding ------------------------------------------------------------------------
    def encode_target(self, text: str) -> list[int]:
        ids = self._tok(self.fmt.target_prefix + text)
        return [*ids, self.eos_id] if self.fmt.add_eos else ids

    def _layout(self) -> tuple[list[int], list[list[int]], list[int]]:
        """A task's instruction/template as token pieces: (prefix, the literal pieces before,
        between and after the inputs, the order of the inputs)."""
        if self._pieces is None:
            task = self.task
            prefix = self._tok(task.instruction) + self.sep if task.instruction else []
            n = task.spec.n_inputs
            if task.template is None:
                literals: list[list[int]] = [[]] + [list(self.sep) for _ in range(n)]
                order = list(range(n))
            else:
                literals, order = [[]], []
                names = list(task.inputs)
                for text, name, _, _ in string.Formatter().parse(task.template):
                    if text:
                        literals[-1] = literals[-1] + self._tok(text)
                    if name is not None:
                        order.append(names.index(name) if name in names else int(name[5:]) - 1)
                        literals.append([])
                literals[-1] = literals[-1] + list(self.sep)
            self._pieces = (prefix, literals, order)
        return self._pieces

    def encode_context(self, example: Example, reserve: int = 0) -> list[int]:
        """``<bos> x1 <sep> [x2 <sep>]`` truncated (longest input first, from its end) so that
        context + ``reserve`` target tokens fit ``max_length``. A task with an instruction puts
        ``instruction <sep>`` after ``<bos>``; a template puts its text around the inputs and
        ends with ``<sep>`` (the decoding token)."""
        if self.task.instruction or self.task.template:
            return self._encode_templated(example, reserve)
        parts = [self._tok(x) for x in example.inputs]
        fixed = len(self.bos) + len(self.sep) * len(parts)
        _truncate(parts, max(1, self.max_length - reserve - fixed))
        ids = list(self.bos)
        for p in parts:
            ids += p + self.sep
        return ids

    def _encode_templated(self, example: Example, reserve: int) -> list[int]:
        prefix, literals, order = self._layout()
        parts = [self._tok(example.inputs[i]) for i in order]
        fixed = len(self.bos) + len(prefix) + sum(len(p) for p in literals)
        _truncate(parts, max(1, self.max_length - reserve - fixed))
        ids = [*self.bos, *prefix, *literals[0]]
        for part, literal in zip(parts, literals[1:], strict=True):
            ids += part + literal
        return ids

    def encode(self, example: Example) -> EncodedExample:
        target = self.encode_target(example.target)
        context = self.encode_context(example, reserve=len(target))
        return EncodedExample(tuple(context + target), len(context))

    def label_token_ids(self) -> dict[str, list[int]]:
        """Token ids of each label's verbalizer (classification tasks), without eos."""
        if self._label_ids is None:
            self._label_ids = {
                label: self._tok(self.fmt.target_prefix + self.task.verbalizers[label])
                for label in self.task.labels
            }
            empty = [lab for lab, ids in self._label_ids.items() if not ids]
            if empty:
                raise ValueError(f"label words of {empty} tokenize to nothing")
        return self._label_ids


def with_template(task: TaskVariant, template: str) -> TaskVariant:
    """``task`` laid out by ``template`` (checked against the task's inputs as a task file's
    template is)."""
    inputs = task.inputs or tuple(f"input{i + 1}" for i in range(task.spec.n_inputs))
    check_template(template, inputs, f"format.template for task {task.name}")
    return dataclasses.replace(task, template=template)


def _truncate(parts: list[list[int]], budget: int) -> None:
    """Shorten the longest part (from its end) until all parts fit ``budget`` tokens."""
    while sum(len(p) for p in parts) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        excess = sum(len(p) for p in parts) - budget
        keep = max(1, len(parts[longest]) - excess)
        if keep == len(parts[longest]):
            break
        parts[longest] = parts[longest][:keep]


class TextLMFormatter:
    """Plain next-token language modelling on raw text (language sub-prompts, thesis Eq. 8):
    ``[P] <bos> text`` with the loss on every text token; ``example.inputs[0]`` is the text."""

    def __init__(self, tokenizer: Any, max_length: int, name: str = "lm") -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be ≥ 2 tokens, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._name = name
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    @property
    def name(self) -> str:
        return self._name

    def encode(self, example: Example) -> EncodedExample:
        text = list(self.tokenizer(example.inputs[0], add_special_tokens=False)["input_ids"])
        ids = (self.bos + text)[: self.max_length]
        # Without a bos the first token has nothing before it but the prompt: it is context.
        return EncodedExample(tuple(ids), 1)


def collate(items: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Right-pad to the longest item of this batch (dynamic padding)."""
    width = max(len(it.ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    target = torch.zeros((len(items), width), dtype=torch.bool)
    for i, it in enumerate(items):
        n = len(it.ids)
        ids[i, :n] = torch.tensor(it.ids)
        mask[i, :n] = 1
        target[i, it.n_context : n] = True
    lengths = mask.sum(1)
    return Batch(ids, mask, target, lengths)
