"""``model=digits-diffusion``: builds the UNet, loads its weights, declares the guided step.

The step (``sample``, ``timestep``, ``tokens``, ``guidance`` -> ``noise``) is stateless:
every denoising step stands alone, so backends run it through the same signature as a
decoder's step without a special case. The model offers ``"train"`` (the DDPM objective
on its data) and ``"image"`` (the DDIM sampler).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from plugstack.errors import ConfigError, ModelLoadError
from plugstack.files import module_digest
from plugstack.model import Model
from plugstack.signature import FLOAT, StepSignature, TensorSpec

from .captions import MAX_TOKENS, VOCABULARY
from .config import DigitsDiffusionConfig
from .sampler import DigitsSampler, alphas_cumprod
from .unet import GuidedDenoiser, UNet

__all__ = ["SHIPPED", "build_unet", "load", "signature"]

#: The checkpoint in the package, trained with app=train (README, "Training: app=train").
SHIPPED = "weights/digits-diffusion.safetensors"


def signature(size: int) -> StepSignature:
    return StepSignature(
        inputs=(TensorSpec("sample", FLOAT, ("batch", 1, size, size)),
                TensorSpec("timestep", "int64", ("batch",)),
                TensorSpec("tokens", "int64", ("batch", MAX_TOKENS)),
                TensorSpec("guidance", "float32", ("batch",))),
        outputs=(TensorSpec("noise", FLOAT, ("batch", 1, size, size)),),
    )


def build_unet(cfg: Any) -> UNet:
    check(cfg)
    return UNet(len(VOCABULARY), channels=list(cfg.channels), text_width=int(cfg.text_width), max_tokens=MAX_TOKENS)


def check(cfg: Any) -> None:
    """Refuse sizes the UNet cannot take, before building anything."""
    channels = list(cfg.channels)
    if not channels or any(int(c) < 8 or int(c) % 8 for c in channels):
        raise ConfigError(f"model.channels={channels}: give one or more multiples of 8 (GroupNorm uses 8 groups).")
    if int(cfg.size) < 4 or int(cfg.size) % 2 ** (len(channels) - 1):
        raise ConfigError(f"model.size={cfg.size} must be divisible by {2 ** (len(channels) - 1)} for "
                          f"{len(channels)} resolutions of model.channels.")
    if int(cfg.text_width) < 4 or int(cfg.text_width) % 4:
        raise ConfigError(f"model.text_width={cfg.text_width} must be a positive multiple of 4 (4 heads).")
    if int(cfg.timesteps) < 2:
        raise ConfigError(f"model.timesteps={cfg.timesteps} must be at least 2.")
    if not 0 <= float(cfg.caption_dropout) < 1:
        raise ConfigError(f"model.caption_dropout={cfg.caption_dropout} must be in [0, 1).")
    if not 1 <= int(cfg.sample_steps) <= int(cfg.timesteps):
        raise ConfigError(f"model.sample_steps={cfg.sample_steps} must be 1 to model.timesteps ({cfg.timesteps}).")
    if not float(cfg.guidance) >= 0 or float(cfg.guidance) == float("inf"):
        raise ConfigError(f"model.guidance={cfg.guidance} must be a finite scale >= 0 (0 ignores the prompt).")


def load(cfg: Any = None) -> Model:
    cfg = cfg if cfg is not None else DigitsDiffusionConfig()
    with torch.random.fork_rng():  # the initial weights follow model.seed, and the caller's RNG is left alone
        torch.manual_seed(int(cfg.seed))
        unet = build_unet(cfg)
    size = int(cfg.size)
    facts = {"size": size, "channels": [int(c) for c in cfg.channels], "text_width": int(cfg.text_width),
             "timesteps": int(cfg.timesteps), "parameters": sum(p.numel() for p in unet.parameters())}
    source = _load_weights(unet, str(cfg.weights), int(cfg.seed), facts)
    step = GuidedDenoiser(unet).eval()
    abar = alphas_cumprod(int(cfg.timesteps))

    def trainable() -> Any:
        from .data import load_data
        from .trainable import DiffusionTrainable

        return DiffusionTrainable(unet, load_data(str(cfg.data), size), abar,
                                  caption_dropout=float(cfg.caption_dropout), facts=facts)

    def example_inputs(batch: int = 2, **_: Any) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, 1, size, size), torch.randint(0, int(cfg.timesteps), (batch,)),
                torch.randint(0, len(VOCABULARY) + 1, (batch, MAX_TOKENS)), torch.full((batch,), 2.0))

    sampler = DigitsSampler(size, int(cfg.timesteps), int(cfg.sample_steps), float(cfg.guidance))
    return Model(name=str(cfg.name), kind="denoiser", module=step, signature=signature(size),
                 example_inputs=example_inputs, weights_digest=module_digest(step, json.dumps(facts)),
                 source=source, info=facts, offers={"train": trainable, "image": sampler})


def _check_trained_as(path: Path, metadata: dict[str, str], facts: dict[str, Any]) -> None:
    """Refuse weights app=train recorded as trained with another size, schedule or shape
    (a schedule or image size leaves the tensors' shapes alike, so only the record tells)."""
    try:
        trained = json.loads(metadata.get("plugstack.trainable", "{}"))
    except ValueError:
        return  # not written by app=train: the shapes are all there is to check
    differ = {k: trained[k] for k in TRAINED_AS if k in trained and trained[k] != facts[k]}
    if differ:
        sets = " ".join(f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in differ.items())
        raise ModelLoadError(f"model.weights: {path} was trained with {sets}; the model is configured otherwise. "
                             f"Set {sets}.")


#: Options the weights were trained with that a run must share (recorded by app=train).
TRAINED_AS = ("size", "channels", "text_width", "timesteps")


def _load_weights(unet: UNet, weights: str, seed: int, facts: dict[str, Any]) -> str:
    """Fill ``unet`` from ``weights`` (shipped | random | a path); where they came from."""
    if weights == "random":
        return f"random init (seed {seed})"
    path = Path(str(files("plugstack.plugins.diffusion").joinpath(SHIPPED))) if weights == "shipped" else Path(weights)
    if not path.is_file():
        hint = ("the package lacks its shipped checkpoint; reinstall plugstack, or train one (README, "
                "'Training: app=train')" if weights == "shipped" else "give a model.safetensors written by app=train")
        raise ModelLoadError(f"model.weights={weights!r}: no file at {path}: {hint}.")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:  # one read of the header gives the record and the tensors
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"model.weights: {path} is not a readable safetensors file ({exc}). "
                             f"Give a model.safetensors written by app=train, or weights=shipped.") from None
    _check_trained_as(path, metadata, facts)
    want = unet.state_dict()
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    wrong = [k for k in want if k in tensors and tensors[k].shape != want[k].shape]
    if missing or extra or wrong:
        raise ModelLoadError(
            f"model.weights: {path} does not fit this UNet (missing {missing[:3]}, unexpected {extra[:3]}, "
            f"other shapes {wrong[:3]}). Set model.channels/size/text_width to what it was trained with.")
    unet.load_state_dict({k: v.float() for k, v in tensors.items()})
    return str(path)
