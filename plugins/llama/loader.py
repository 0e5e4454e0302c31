"""``load(cfg) -> Model``: the llama plugin's model factory.

Picks the weights (``cfg.path`` or a known ``cfg.source``), reads them as GGUF or as a
Hugging Face directory, checks every tensor's name and shape against the ``Llama``
module, merges ``cfg.adapter`` into them (:mod:`.adapter`), and hands back a
:class:`plugstack.Model` (fp32, eval mode) with its tokenizer, offering ``app=train`` the
fine-tuning objective of ``cfg.finetune`` (:mod:`.finetune`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from plugstack.errors import ModelLoadError
from plugstack.model import Model
from plugstack.training import TRAIN

from .weights import known_path, sha256_of

__all__ = ["load", "load_path"]

log = structlog.get_logger("plugstack.model")


def load(cfg: Any) -> Model:
    """The model described by a ``model`` config group (:class:`LlamaModelConfig` fields)."""
    path = getattr(cfg, "path", None)
    source = getattr(cfg, "source", None)
    if path:
        target = Path(str(path)).expanduser()
    elif source:
        target = known_path(str(source))
    else:
        raise ModelLoadError(
            "No weights given: set model.path=/path/to/model.gguf (or a Hugging Face directory), "
            "or model.source=smollm2 for the default model."
        )
    system = getattr(cfg, "system_prompt", None)
    if system is not None and not str(system).strip():
        raise ModelLoadError("model.system_prompt is empty: give it text, or null (model.system_prompt=null) for "
                             "the chat template's own default.")
    adapter = getattr(cfg, "adapter", None)
    model = load_path(target, context_length=getattr(cfg, "context_length", None), name=getattr(cfg, "name", "llama"),
                      adapter=adapter)
    if system:
        if getattr(model.tokenizer, "chat_template", None) is None:
            raise ModelLoadError(f"model.system_prompt is set, but {target} has no chat template to put it in. "
                                 f"Drop model.system_prompt, or use a model that ships a template.")
        model.tokenizer.system_prompt = str(system)
    if getattr(cfg, "finetune", None) is not None:
        def make_trainable():
            from .finetune import make_trainable

            return make_trainable(model, cfg)

        model.offers[TRAIN] = make_trainable
    return model


def load_path(path: str | Path, *, context_length: int | None = None, name: str = "llama",
              adapter: str | Path | None = None) -> Model:
    """Load a ``.gguf`` file or a Hugging Face model directory, with ``adapter`` (a file
    app=train wrote) merged in. Everything is read and checked now; the fp32 module is
    built on first use of ``model.module`` (a run from a cached graph never builds it)."""
    t0 = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"Model path {path} does not exist. Check model.path (a .gguf file or a model directory).")
    if path.is_dir():
        module_cfg, read_tensors, shapes, tokenizer, files, extra = _read_hf(path)
    else:
        module_cfg, read_tensors, shapes, tokenizer, files, extra = _read_gguf(path)
    blocks = extra.pop("blocks", None)  # the file's own blocks, for native quantisation

    if context_length is not None:
        if context_length < 1:
            raise ModelLoadError(f"model.context_length must be positive, got {context_length}.")
        module_cfg.context_length = min(module_cfg.context_length, int(context_length))

    digest = sha256_of(files[0]) if len(files) == 1 else _combined_digest(files)
    merged, no_blocks = None, ""
    if adapter:
        from .adapter import read_adapter

        merged = read_adapter(adapter, hparams=module_cfg.to_dict(), base_digest=digest, base_source=str(path))
        extra["adapter"] = merged.describe()
        digest = merged.folded(digest)
        if blocks and merged.kind == "full":  # new weights: the file's quantised blocks no longer describe them
            blocks, no_blocks = None, (f"model.adapter={merged.path} holds fully fine-tuned weights, which the "
                                       f"file's own quantised blocks do not describe")

    def make_module():
        t = time.perf_counter()
        whole = merged is not None and merged.kind == "full"  # fully fine-tuned weights replace every base tensor
        tensors = {} if whole else read_tensors()
        module = _build_module(module_cfg, merged.apply(tensors) if merged else tensors, path)
        log.info("model.module.built", path=str(path), seconds=round(time.perf_counter() - t, 2),
                 adapter=str(merged.path) if merged else None)
        return module

    seconds = time.perf_counter() - t0
    tied = module_cfg.tie_embeddings
    info = {
        "hparams": module_cfg.to_dict(),
        "params": sum(math.prod(s) for n, s in shapes.items() if not (tied and n == "lm_head.weight")),
        "load_seconds": round(seconds, 3),
        **extra,
    }
    log.info(
        "model.load.done", path=str(path), seconds=round(seconds, 2), params=info["params"],
        layers=module_cfg.num_layers, vocab=module_cfg.vocab_size, tensor_types=extra.get("tensor_types"),
    )  # fmt: skip
    from .hparams import llama_model

    return llama_model(module_cfg, name=name, make_module=make_module, blocks=blocks, no_blocks=no_blocks,
                       low_rank=merged.low_rank if merged is not None and merged.kind == "lora" else None,
                       tokenizer=tokenizer, weights_digest=digest, source=str(path), info=info)


def _combined_digest(files: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_of(f).encode() + b"\n")
    return h.hexdigest()


def _read_gguf(path: Path):
    from .gguf_loader import read_gguf
    from .hparams import LlamaConfig
    from .tokenizer import from_gguf_metadata

    contents = read_gguf(path)
    module_cfg = LlamaConfig(**contents.hparams)
    tokenizer = from_gguf_metadata(contents.tokenizer, source=str(path))

    def read_tensors() -> dict[str, Any]:
        import torch

        return {k: torch.from_numpy(v) for k, v in contents.load_state_dict().items()}

    types = Counter(t for _, t, _ in contents.tensors.values())
    extra = {
        "format": "gguf",
        "architecture": contents.architecture,
        "tensor_types": dict(types),
        "file_name": name if isinstance(name := contents.metadata.get("general.name"), str) else None,
        "blocks": contents.block_matrices(),
    }
    shapes = {ours: shape for ours, _, shape in contents.tensors.values()}
    return module_cfg, read_tensors, shapes, tokenizer, [path], extra


def _read_hf(path: Path):
    from .checks import check_tensors
    from .hf_loader import HF_KEYS, load_hf_state_dict, read_hf_config, tensor_shapes, weight_files
    from .hparams import LlamaConfig
    from .tokenizer import from_hf_dir

    raw, hparams = read_hf_config(path)
    files = weight_files(path)
    shapes, dtypes = tensor_shapes(path, files)
    check_tensors(hparams, shapes, HF_KEYS, path, spell=_hf_name)  # before reading any tensor
    tokenizer = from_hf_dir(path, raw, vocab_size=hparams["vocab_size"])
    module_cfg = LlamaConfig(**hparams)
    extra = {"format": "safetensors", "architecture": raw.get("model_type"), "tensor_types": dtypes}
    return module_cfg, lambda: load_hf_state_dict(files)[0], shapes, tokenizer, files, extra


def _hf_name(ours: str) -> str:
    return ours if ours == "lm_head.weight" else f"model.{ours}"


_NO_INIT_LOCK = threading.Lock()


@contextmanager
def _no_init():
    """Make ``torch.nn.init`` a no-op while the module is built, as transformers'
    ``no_init_weights`` does: the parameters are ``torch.empty`` (pages never touched)
    and replaced by the loaded tensors right after. Building on the meta device instead is
    measurably slower (its first use imports torch's compiler stack, seconds per process).
    The patch is process-wide: loads take a lock so they never interleave, but a module
    another thread initialises at that moment would stay uninitialised."""
    import torch

    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_")  # fmt: skip
    with _NO_INIT_LOCK:
        saved = {n: getattr(torch.nn.init, n) for n in names}
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for n, fn in saved.items():
                setattr(torch.nn.init, n, fn)


def _build_module(cfg, tensors: dict[str, Any], path: Path):
    """A ``Llama`` whose parameters are exactly ``tensors``, whose names and shapes the readers
    checked against ``cfg`` (:func:`checks.check_tensors`) before anything was allocated."""
    from .model import Llama

    with _no_init():
        module = Llama(cfg)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints still store a copy
        tensors["lm_head.weight"] = tensors["embed_tokens.weight"]
    module.load_state_dict(tensors, strict=True, assign=True)
    if cfg.tie_embeddings:
        module.lm_head.weight = module.embed_tokens.weight
    return module.eval()
