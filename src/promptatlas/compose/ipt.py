"""IPT: intrinsic prompt tuning (Qin et al., arXiv 2110.07867; spec composition.md §D).

**Multi-prompt subspace finding (fit).** Trained task segments of many prompts (tasks ×
languages × seeds), flattened to D = k·d values (v2: every layer's), are encoded and decoded:

    encoder: Linear(D → d_I), no nonlinearity (the reference's AE_type=1)
    decoder: Linear(d_I → h) → tanh → Linear(h → D),  h = d (the reference hard-codes 768)

with the prompts frozen and loss = L_task(P̂) + 200·MSE(P̂, P) (the task loss of the decoded
prompt on its task's data, when there is data for it). Only the encoder and decoder train.

**Intrinsic subspace tuning (IST).** For a task (typically left out of the fit), z ~ N(0, 0.02²)
and the prompt is dec(z) with the decoder frozen: z ∈ R^{d_I} is the only trainable tensor
(asserted before and after every step). **Recovery** = IST score / full prompt-tuning score
(:func:`recovery`). Controls: a random decoder (:func:`random_decoder`) and dec(z) as the
initialisation of full prompt tuning (:func:`decoded_init`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from promptatlas.compose.common import (
    ComposeError,
    ComputedPrompt,
    EncodedTask,
    MethodScore,
    Source,
    TaskData,
    check_frozen,
    composed_segment,
    optimise,
    score_prompt,
    stack_segments,
    warmup_for,
)
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "IPTConfig",
    "ISTConfig",
    "ISTResult",
    "IntrinsicSubspace",
    "PromptAutoencoder",
    "RecoveryResult",
    "RecoveryRow",
    "decoded_init",
    "fit_ipt",
    "ipt_recovery",
    "load_subspace",
    "random_decoder",
    "recovery",
    "save_subspace",
    "tune_intrinsic",
]


class PromptAutoencoder(nn.Module):
    """Encoder Linear(D → d_I); decoder Linear(d_I → h) → tanh → Linear(h → D)."""

    def __init__(
        self,
        size: int,
        intrinsic_dim: int,
        hidden: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size, self.intrinsic_dim, self.hidden = size, intrinsic_dim, hidden
        self.encoder = nn.Linear(size, intrinsic_dim)
        self.decoder = nn.Sequential(
            nn.Linear(intrinsic_dim, hidden), nn.Tanh(), nn.Linear(hidden, size)
        )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """nn.Linear's default range U(±1/√fan_in), drawn from ``generator``."""
        for layer in (self.encoder, self.decoder[0], self.decoder[2]):
            assert isinstance(layer, nn.Linear)
            bound = 1.0 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)

    def encode(self, flat: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(flat)
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z)
        return out

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(flat))


@dataclass(frozen=True)
class IPTConfig:
    """Subspace fitting (the reference: d_I = 250, batch 64, 100k steps, lr 3e-5, weight decay
    0.01, gradient clip 0.1; our study: d_I ∈ {1, 2, 5, 10, 25}). hidden None = d_model.
    ``task_loss=False`` fits by reconstruction alone (the reference's loss without its task
    term). The reference's task loss is label-smoothed NLL (ε = 0.1); here it is the task's
    own objective (``objective``), unsmoothed."""

    intrinsic_dim: int = 5
    hidden: int | None = None
    recon_weight: float = 200.0
    task_loss: bool = True
    steps: int = 100_000
    batch_size: int = 64
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float | None = 0.1
    objective: Literal["auto", "lm", "rank"] = "auto"
    segment: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.intrinsic_dim < 1:
            raise ComposeError(f"intrinsic_dim must be ≥ 1, got {self.intrinsic_dim}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ComposeError("steps, batch_size and lr must be positive")
        if self.recon_weight < 0:
            raise ComposeError("recon_weight must be ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IntrinsicSubspace:
    """A fitted autoencoder with what it was fitted on: the prompt layout (``template``: the
    segments other than the composed one are kept as they are when decoding), the source keys
    (task-lang per prompt), their intrinsic vectors enc(P) and the fit history."""

    autoencoder: PromptAutoencoder
    template: SoftPrompt
    segment: str
    shape: tuple[int, ...]
    keys: list[str]
    tasks: list[str]
    langs: list[str]
    vectors: torch.Tensor  # (n_prompts, d_I)
    history: list[dict[str, float]]
    config: IPTConfig

    @property
    def intrinsic_dim(self) -> int:
        return self.autoencoder.intrinsic_dim

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """dec(z) in the segment layout."""
        return self.autoencoder.decode(z.float()).reshape(self.shape)

    def reconstruction_error(self, sources: Sequence[Source]) -> float:
        """Mean squared error of dec(enc(P)) over ``sources``' composed segments."""
        _, stacked = stack_segments(sources, self.segment)
        device = next(self.autoencoder.parameters()).device
        flat = stacked.reshape(len(sources), -1).to(device)
        with torch.no_grad():
            return float(F.mse_loss(self.autoencoder(flat), flat))


class _Reconstructed(nn.Module):
    """dec(enc(vec P)) of one frozen source prompt, in the segment layout."""

    flat: torch.Tensor

    def __init__(self, autoencoder: PromptAutoencoder, flat: torch.Tensor, shape: Sequence[int]):
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("flat", flat.detach().clone())
        self.shape = tuple(shape)

    def forward(self) -> torch.Tensor:
        return self.autoencoder(self.flat).reshape(self.shape)


def fit_ipt(
    handle: Any,
    sources: Sequence[Source],
    data: Mapping[str, TaskData],
    config: IPTConfig | None = None,
    *,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
) -> IntrinsicSubspace:
    """Fit the autoencoder on the composed segments of ``sources`` (many prompts: tasks ×
    languages × seeds). Each step takes one prompt (cycling through a seeded permutation), adds
    the task loss of its decoded prompt on a batch of its task's data (``data[source.key]``,
    when given and ``task_loss``) to recon_weight × the reconstruction MSE of that prompt."""
    cfg = config or IPTConfig()
    check_frozen(handle.model, "the model")
    name, stacked = stack_segments(sources, cfg.segment)
    n = len(sources)
    flat = stacked.reshape(n, -1)
    shape = tuple(stacked.shape[1:])
    hidden = cfg.hidden or handle.geometry.d_model
    ae = PromptAutoencoder(
        flat.shape[1], cfg.intrinsic_dim, hidden, generator=torch.Generator().manual_seed(cfg.seed)
    ).to(handle.device)
    flat = flat.to(handle.device)
    method = sources[0].prompt.method
    plms: dict[int, PromptedLM] = {}
    encoded: dict[str, EncodedTask] = {}
    if cfg.task_loss:
        for i, s in enumerate(sources):
            if s.key in data:
                if s.key not in encoded:
                    encoded[s.key] = EncodedTask(data[s.key], cfg.objective, method, eval_config)
                prompt = ComputedPrompt(s.prompt, _Reconstructed(ae, flat[i], shape), name)
                plms[i] = PromptedLM(handle, prompt.to(handle.device), autocast_dtype=autocast)
    cursor: dict[str, int] = {}

    def loss_at(step: int) -> torch.Tensor:
        epoch, j = divmod(step, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        i = int(order[j])
        recon = F.mse_loss(ae(flat[i]), flat[i])
        loss = cfg.recon_weight * recon
        if i in plms:
            key = sources[i].key
            idx = encoded[key].batch_indices(cfg.batch_size, cfg.seed, cursor.get(key, 0))
            cursor[key] = cursor.get(key, 0) + 1
            loss = loss + encoded[key].loss(plms[i], idx)
        return loss

    history = optimise(
        ae.parameters(),
        loss_at,
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=warmup_for(cfg.warmup_steps, cfg.steps),
        schedule="constant",
        max_grad_norm=cfg.max_grad_norm,
    )
    ae.zero_grad(set_to_none=True)
    with torch.no_grad():
        for h in history:
            h["prompt"] = float(h["step"] - 1) % n
        vectors = ae.encode(flat).detach().cpu()
    template = copy.deepcopy(sources[0].prompt).cpu()
    template.requires_grad_(False)
    return IntrinsicSubspace(
        autoencoder=ae,
        template=template,
        segment=name,
        shape=shape,
        keys=[s.key for s in sources],
        tasks=[s.task for s in sources],
        langs=[s.lang for s in sources],
        vectors=vectors,
        history=history,
        config=cfg,
    )


def random_decoder(subspace: IntrinsicSubspace, seed: int = 0) -> IntrinsicSubspace:
    """The control: the same architecture with freshly drawn random weights (nothing fitted)."""
    ae = copy.deepcopy(subspace.autoencoder)
    ae.reset_parameters(torch.Generator().manual_seed(seed))
    out = copy.copy(subspace)
    out.autoencoder = ae
    return out


# -- intrinsic subspace tuning -----------------------------------------------------------------


@dataclass(frozen=True)
class ISTConfig:
    """Intrinsic subspace tuning: only z ∈ R^{d_I} trains (z ~ N(0, init_std²)). The reference
    script uses lr 1e-5, batch 4, 100k steps (treat them as a grid)."""

    steps: int = 100_000
    batch_size: int = 4
    lr: float = 1e-5
    init_std: float = 0.02
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    objective: Literal["auto", "lm", "rank"] = "auto"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.init_std < 0:
            raise ComposeError("steps, batch_size and lr must be positive; init_std ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Intrinsic(nn.Module):
    """dec(z): z the only parameter; the decoder is held outside the module tree (so it is not
    among this module's parameters) and frozen."""

    def __init__(self, decoder: nn.Module, z: torch.Tensor, shape: Sequence[int]) -> None:
        super().__init__()
        self.z = nn.Parameter(z.detach().clone())
        self._decoder = [decoder]  # a list: not registered as a submodule
        self.shape = tuple(shape)

    @property
    def decoder(self) -> nn.Module:
        return self._decoder[0]

    def forward(self) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.z)
        return out.reshape(self.shape)


@dataclass
class ISTResult:
    """The tuned z, the decoded prompt (a plain SoftPrompt), its score and the history."""

    z: torch.Tensor
    prompt: SoftPrompt
    score: MethodScore | None
    history: list[dict[str, float]]
    config: ISTConfig
    extra: dict[str, Any] = field(default_factory=dict)


def tune_intrinsic(
    handle: Any,
    subspace: IntrinsicSubspace,
    data: TaskData,
    config: ISTConfig | None = None,
    *,
    template: SoftPrompt | None = None,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    score: bool = True,
    method: str = "ipt",
) -> ISTResult:
    """Tune z for the task of ``data`` with the decoder frozen. ``template`` (default: the
    subspace's) gives the other segments, e.g. the language segment of the target language."""
    cfg = config or ISTConfig()
    check_frozen(handle.model, "the model")
    decoder = subspace.autoencoder.decoder
    was = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    for p in decoder.parameters():
        p.grad = None  # left over from fitting; IST must add none
    try:
        base = template or subspace.template
        name = composed_segment(base, subspace.segment)
        z0 = torch.randn(subspace.intrinsic_dim, generator=torch.Generator().manual_seed(cfg.seed))
        producer = _Intrinsic(decoder, z0 * cfg.init_std, subspace.shape).to(handle.device)
        prompt = ComputedPrompt(base, producer, name).to(handle.device)
        trainable = prompt.trainable_parameters()
        assert len(trainable) == 1 and trainable[0] is producer.z, "IST trains z only"
        plm = PromptedLM(handle, prompt, autocast_dtype=autocast)
        encoded = EncodedTask(data, cfg.objective, base.method, eval_config)
        decoder_before = [p.detach().clone() for p in decoder.parameters()]

        def loss_at(step: int) -> torch.Tensor:
            return encoded.loss(plm, encoded.batch_indices(cfg.batch_size, cfg.seed, step))

        def frozen_check() -> None:
            check_frozen(decoder, "the IPT decoder")
            assert all(p.grad is None for p in decoder.parameters()), "the decoder got gradients"

        history = optimise(
            [producer.z],
            loss_at,
            steps=cfg.steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=warmup_for(cfg.warmup_steps, cfg.steps),
            schedule="constant",
            max_grad_norm=cfg.max_grad_norm,
            check=frozen_check,
        )
        if not all(
            torch.equal(a, b) for a, b in zip(decoder_before, decoder.parameters(), strict=True)
        ):
            raise ComposeError("the IPT decoder changed during intrinsic subspace tuning")
        plain = prompt.to_soft_prompt()
        result_score = None
        if score and (data.test or data.dev):
            result_score = score_prompt(
                method, handle, plain, data, seed=cfg.seed, eval_config=eval_config,
                autocast=autocast,
            )  # fmt: skip
        return ISTResult(
            z=producer.z.detach().cpu().clone(),
            prompt=plain,
            score=result_score,
            history=history,
            config=cfg,
        )
    finally:
        for p, flag in zip(decoder.parameters(), was, strict=True):
            p.requires_grad_(flag)


def decoded_init(subspace: IntrinsicSubspace, z: torch.Tensor) -> torch.Tensor:
    """dec(z) as a segment value (the control: dec(z) as the initialisation of full PT)."""
    with torch.no_grad():
        device = next(subspace.autoencoder.parameters()).device
        return subspace.decode(z.to(device)).detach().cpu()


def recovery(ist: Sequence[float], full: Sequence[float]) -> dict[str, float]:
    """Recovery of IST against full prompt tuning, per task pairs (same order):
    ``mean_ratio`` = mean over tasks of IST/PT (the paper's), ``ratio_of_means`` = mean IST /
    mean PT. [.8, .5] against [1, .5] gives mean_ratio .9."""
    if len(ist) != len(full) or not ist:
        raise ComposeError("recovery needs one full-PT score per IST score")
    if any(f <= 0 for f in full):
        raise ComposeError("recovery is undefined for a full-PT score ≤ 0")
    ratios = [a / b for a, b in zip(ist, full, strict=True)]
    return {
        "mean_ratio": sum(ratios) / len(ratios),
        "ratio_of_means": (sum(ist) / len(ist)) / (sum(full) / len(full)),
        "n": float(len(ratios)),
    }


def gain_recovery(ist: float, full: float, untrained: float) -> float | None:
    """The part of full prompt tuning's gain over the untrained prompt that IST recovers:
    (IST − untrained) / (full − untrained); None where full tuning gained nothing (full ≤
    untrained). IST .7, full .9, untrained .5 give .5. Where the untrained prompt already
    scores well (a base LM reading sentiment), ``recovery`` = IST / full is near 1 for any
    IST that does no harm; this ratio says how much of what training added IST finds."""
    if full <= untrained:
        return None
    return (ist - untrained) / (full - untrained)


@dataclass(frozen=True)
class RecoveryRow:
    """One target task of a recovery study: IST score, full-PT score, the controls, and the
    untrained prompt's score where known (for :func:`gain_recovery`)."""

    key: str
    task: str
    lang: str
    seen: bool  # the task (in this language) was among the prompts the subspace was fitted on
    ist: float
    full: float
    random_decoder: float | None = None
    decoded_init_pt: float | None = None
    untrained: float | None = None

    @property
    def recovery(self) -> float:
        return self.ist / self.full if self.full > 0 else float("nan")

    @property
    def gain_recovery(self) -> float | None:
        if self.untrained is None:
            return None
        return gain_recovery(self.ist, self.full, self.untrained)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recovery": self.recovery, "gain_recovery": self.gain_recovery}


@dataclass
class RecoveryResult:
    """Per-task rows and the recovery of seen and unseen tasks, separately (None when a group
    is empty), at the subspace's d_I; ``ist``: the IST runs by key."""

    intrinsic_dim: int
    rows: list[RecoveryRow]
    seen: dict[str, float] | None
    unseen: dict[str, float] | None
    ist: dict[str, ISTResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intrinsic_dim": self.intrinsic_dim,
            "rows": [r.to_dict() for r in self.rows],
            "seen": self.seen,
            "unseen": self.unseen,
        }


def ipt_recovery(
    handle: Any,
    subspace: IntrinsicSubspace,
    targets: Mapping[str, TaskData],
    full_scores: Mapping[str, float],
    config: ISTConfig | None = None,
    *,
    templates: Mapping[str, SoftPrompt] | None = None,
    controls: bool = True,
    pt_train: Any = None,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    untrained_scores: Mapping[str, float] | None = None,
) -> RecoveryResult:
    """IST on every target task (``targets`` by "task-lang"), recovery against ``full_scores``
    (full prompt tuning's test score per key), seen vs unseen tasks apart; with
    ``untrained_scores`` (the untrained prompt's test score per key) also the gain recovery
    (:func:`gain_recovery`), per row and as ``gain_recovery`` in each group. With ``controls``:
    IST through a random decoder, and full prompt tuning (``pt_train``, a TrainConfig) started
    from the tuned dec(z). ``templates`` give per-key frozen segments (e.g. the language
    segment of the target language; default the subspace's)."""
    from promptatlas.compose.spot import run_prompt_tuning
    from promptatlas.training import TrainConfig

    cfg = config or ISTConfig()
    missing = sorted(set(targets) - set(full_scores))
    if missing:
        raise ComposeError(f"no full prompt-tuning score for {missing}")
    rows: list[RecoveryRow] = []
    runs: dict[str, ISTResult] = {}
    rand = random_decoder(subspace, seed=cfg.seed + 1) if controls else None
    for key, data in targets.items():
        template = (templates or {}).get(key)
        run = tune_intrinsic(
            handle, subspace, data, cfg, template=template, eval_config=eval_config,
            autocast=autocast,
        )  # fmt: skip
        runs[key] = run
        assert run.score is not None
        random_score = init_score = None
        if rand is not None:
            control = tune_intrinsic(
                handle, rand, data, cfg, template=template, eval_config=eval_config,
                autocast=autocast, method="ipt-random",
            )  # fmt: skip
            random_score = control.score.score if control.score else None
            train = pt_train or TrainConfig(seed=cfg.seed)
            init = run_prompt_tuning(
                handle, template or subspace.template, data, train,
                init=decoded_init(subspace, run.z).to(torch.float32),
                method="ipt-init", segment=subspace.segment, eval_config=eval_config,
                autocast=autocast,
            )  # fmt: skip
            init_score = init.score.score
        task = data.formatter.task
        rows.append(
            RecoveryRow(
                key=key,
                task=task.spec.name,
                lang=task.lang,
                seen=key in subspace.keys,
                ist=run.score.score,
                full=float(full_scores[key]),
                random_decoder=random_score,
                decoded_init_pt=init_score,
                untrained=(untrained_scores or {}).get(key),
            )
        )

    def group(seen: bool) -> dict[str, float] | None:
        chosen = [r for r in rows if r.seen == seen]
        if not chosen:
            return None
        out = recovery([r.ist for r in chosen], [r.full for r in chosen])
        gains = [g for g in (r.gain_recovery for r in chosen) if g is not None]
        if gains:
            out["gain_recovery"] = sum(gains) / len(gains)
            out["n_gain"] = float(len(gains))
        return out

    return RecoveryResult(subspace.intrinsic_dim, rows, group(True), group(False), runs)


# -- storing a subspace ----------------------------------------------------------------------------

SUBSPACE_TENSORS = "subspace.safetensors"
SUBSPACE_METADATA = "subspace.json"
SUBSPACE_FORMAT = 1


def save_subspace(subspace: IntrinsicSubspace, directory: Any, *, extra: Any = None) -> Any:
    """Store a fitted subspace as a directory (``subspace.safetensors``: autoencoder weights,
    template segments, intrinsic vectors; ``subspace.json``: sizes, prompt config, geometry,
    keys, fit config and history), written beside the target and renamed into place."""
    import dataclasses as dc

    from safetensors.torch import save_file

    from promptatlas.io import atomic_directory, dumps_json
    from promptatlas.outputs import check_output_path

    # Replaced as a whole: an existing directory must be empty or a subspace directory.
    target = check_output_path(
        directory, kind="directory", what="IPT subspace directory",
        owned_files=(SUBSPACE_TENSORS, SUBSPACE_METADATA),
    )  # fmt: skip
    tensors = {
        f"autoencoder.{k}": v.detach().cpu().contiguous()
        for k, v in subspace.autoencoder.state_dict().items()
    }
    tensors.update(
        {f"template.{k}": v.contiguous() for k, v in subspace.template.state_tensors().items()}
    )
    tensors["vectors"] = subspace.vectors.detach().cpu().contiguous()
    ae = subspace.autoencoder
    meta = {
        "format": "promptatlas-ipt-subspace",
        "format_version": SUBSPACE_FORMAT,
        "size": ae.size,
        "intrinsic_dim": ae.intrinsic_dim,
        "hidden": ae.hidden,
        "segment": subspace.segment,
        "shape": list(subspace.shape),
        "prompt": subspace.template.config.to_dict(),
        "geometry": dc.asdict(subspace.template.geometry),
        "keys": subspace.keys,
        "tasks": subspace.tasks,
        "langs": subspace.langs,
        "config": subspace.config.to_dict(),
        "history": subspace.history,
        "extra": extra or {},
    }
    text = dumps_json(meta)
    with atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / SUBSPACE_TENSORS), metadata={"format": "pt"})
        (tmp / SUBSPACE_METADATA).write_text(text, encoding="utf-8")
    return target


def load_subspace(directory: Any, handle: Any = None) -> IntrinsicSubspace:
    """A subspace stored by :func:`save_subspace` (moved to ``handle``'s device, whose geometry
    must match the stored one)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from promptatlas.models.adapters import ModelGeometry
    from promptatlas.prompts.config import PromptConfig

    path = Path(directory)
    try:
        meta = json.loads((path / SUBSPACE_METADATA).read_text(encoding="utf-8"))
        tensors = load_file(str(path / SUBSPACE_TENSORS))
    except (OSError, ValueError) as exc:
        raise ComposeError(f"{path} is not a readable IPT subspace ({exc})") from exc
    if meta.get("format_version") != SUBSPACE_FORMAT:
        raise ComposeError(
            f"{path} has subspace format {meta.get('format_version')!r}; this reads "
            f"{SUBSPACE_FORMAT}"
        )
    geometry = ModelGeometry(**meta["geometry"])
    if handle is not None and handle.geometry != geometry:
        raise ComposeError(
            f"the subspace in {path} was fitted for geometry {geometry}, not {handle.geometry}"
        )
    ae = PromptAutoencoder(int(meta["size"]), int(meta["intrinsic_dim"]), int(meta["hidden"]))
    ae.load_state_dict(
        {
            k.removeprefix("autoencoder."): v
            for k, v in tensors.items()
            if k.startswith("autoencoder.")
        }
    )
    template = SoftPrompt(PromptConfig.from_dict(meta["prompt"]), geometry)
    template.load_state_tensors(
        {k.removeprefix("template."): v for k, v in tensors.items() if k.startswith("template.")}
    )
    template.requires_grad_(False)
    if handle is not None:
        ae = ae.to(handle.device)
    return IntrinsicSubspace(
        autoencoder=ae,
        template=template,
        segment=str(meta["segment"]),
        shape=tuple(int(i) for i in meta["shape"]),
        keys=list(meta["keys"]),
        tasks=list(meta["tasks"]),
        langs=list(meta["langs"]),
        vectors=tensors["vectors"],
        history=list(meta["history"]),
        config=IPTConfig(**meta["config"]),
    )
