"""Training data of the diffusion model: images with measured attributes.

:class:`CaptionedImages` is the interface: grey images in [0, 1] and, per image, the
attributes captions are phrased from. :func:`digits` builds it from scikit-learn's
handwritten digits (1,797 real 8x8 scans shipped with scikit-learn, no download),
upsampled, each also sheared left and right (so the data's slants span more than the
few writers' own). A plugin brings its own data with ``model.data="package.module:function"``,
a function returning a :class:`CaptionedImages`.

Stroke weight and slant are measured, not labelled: ink mass and the shear of the image's
second moments, each split into thirds *within its digit* (a 7's shape shears right and a
6's left whatever the hand, so "leaning right" means "more than this digit usually does").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plugstack.entries import import_ref
from plugstack.errors import ConfigError

__all__ = ["CaptionedImages", "digits", "ink", "load_data", "slant"]


@dataclass
class CaptionedImages:
    """``images[i]`` (float32 ``[N, H, W]`` in [0, 1]) has attributes ``attributes[i]``
    (``digit``, ``weight``, ``slant``: see :mod:`plugstack.plugins.diffusion.captions`)."""

    images: np.ndarray
    attributes: list[dict[str, str]]
    #: Which source each image comes from (variants of one scan share it), so a split never
    #: holds out a variant of a training image; ``None``: every image is its own.
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or len(self.images) != len(self.attributes):
            raise ConfigError(f"CaptionedImages needs images [N, H, W] and N attribute dicts; got images "
                              f"{self.images.shape} and {len(self.attributes)} attribute dicts")
        if self.groups is None:
            self.groups = np.arange(len(self.images))

    def split(self, every: int = 10) -> tuple[CaptionedImages, CaptionedImages]:
        """(train, held-out): the images of every ``every``-th group are held out."""
        held = self.groups % every == 0
        return self._pick(~held), self._pick(held)

    def _pick(self, mask: np.ndarray) -> CaptionedImages:
        attributes = [a for a, m in zip(self.attributes, mask, strict=True) if m]
        return CaptionedImages(self.images[mask], attributes, self.groups[mask])


def ink(images: np.ndarray) -> np.ndarray:
    """Mean intensity of each image ``[N, H, W]`` (stroke weight)."""
    return images.reshape(len(images), -1).mean(1)


def slant(images: np.ndarray) -> np.ndarray:
    """Shear of each image's ink, ``-mu11 / mu02``: > 0 leans right (the top is right of the
    bottom; rows grow downwards), < 0 leans left."""
    _, h, w = images.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = images.sum((1, 2)) + 1e-9
    cx = (images * xx).sum((1, 2)) / mass
    cy = (images * yy).sum((1, 2)) / mass
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]  # [N, H, W]
    mu11 = (images * dx * dy).sum((1, 2)) / mass
    mu02 = (images * dy * dy).sum((1, 2)) / mass + 1e-9
    return -mu11 / mu02


def thirds(values: np.ndarray, groups: np.ndarray, names: tuple[str, str, str]) -> list[str]:
    """``names[k]`` for the k-th third of ``values`` within each group."""
    out = [""] * len(values)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        low, high = np.quantile(values[idx], [1 / 3, 2 / 3])
        for i in idx:
            out[i] = names[0] if values[i] < low else names[2] if values[i] > high else names[1]
    return out


#: Shears applied to every scan (x shifts by shear * height above the centre).
SHEARS = (-0.25, 0.0, 0.25)


def digits(size: int = 16, shears: tuple[float, ...] = SHEARS) -> CaptionedImages:
    """scikit-learn's digits, bilinearly upsampled to ``size`` x ``size``, each scan once per
    shear in ``shears`` (images of one scan are adjacent and share a group)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    scans = upsample(raw.images.astype(np.float32) / 16.0, size)
    images = np.stack([shear(scans, k) for k in shears], axis=1).reshape(-1, size, size)  # [N * shears, S, S]
    labels = raw.target.repeat(len(shears))
    groups = np.arange(len(scans)).repeat(len(shears))
    weights = thirds(ink(images), labels, ("light", "regular", "bold"))
    slants = thirds(slant(images), labels, ("left", "upright", "right"))
    attributes = [{"digit": str(d), "weight": w, "slant": s} for d, w, s in zip(labels, weights, slants, strict=True)]
    return CaptionedImages(images, attributes, groups)


def shear(images: np.ndarray, k: float) -> np.ndarray:
    """``[N, S, S]`` sheared so the top moves ``k`` pixels right per pixel above the centre."""
    import torch

    if k == 0:
        return images
    theta = torch.tensor([[1.0, k, 0.0], [0.0, 1.0, 0.0]]).expand(len(images), 2, 3)  # x_src = x + k * y
    t = torch.from_numpy(images)[:, None]  # [N, 1, S, S]
    grid = torch.nn.functional.affine_grid(theta, list(t.shape), align_corners=False)
    return torch.nn.functional.grid_sample(t, grid, mode="bilinear", align_corners=False)[:, 0].numpy()


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, h, w]`` -> ``[N, size, size]``, bilinear (torch's, align_corners=False)."""
    import torch

    if images.shape[1:] == (size, size):
        return images
    t = torch.from_numpy(images)[:, None]  # [N, 1, h, w]
    up = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].clamp(0, 1).numpy()


def load_data(name: str, size: int) -> CaptionedImages:
    """``"digits"`` or a ``"package.module:function"`` returning :class:`CaptionedImages`."""
    if name == "digits":
        return digits(size)
    if not name.partition(":")[2]:
        raise ConfigError(f"model.data={name!r} is neither 'digits' nor 'package.module:function'.")
    try:
        data = import_ref(name)()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.data={name!r} cannot be loaded: {exc}. Give 'package.module:function'.") from None
    if not isinstance(data, CaptionedImages):
        raise ConfigError(f"model.data={name!r} returned {type(data).__name__}, not CaptionedImages.")
    if data.images.shape[1:] != (size, size):
        raise ConfigError(f"model.data={name!r} gives images of {data.images.shape[1:]}, the model is "
                          f"{size}x{size}: set model.size={data.images.shape[1]} or resize the data.")
    return data
