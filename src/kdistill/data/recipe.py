"""A training augmentation recipe applied per batch on the device (Kornia + PyTorch).

``data.recipe`` in a config: RandomResizedCrop, horizontal flip, colour jitter,
TrivialAugment or RandAugment, Mixup/CutMix and label smoothing, then normalisation. The
evaluation transform (resize of the short side, center crop) belongs to the image source
(:mod:`kdistill.data.images`), so evaluation never sees the recipe.

Determinism: every random parameter of a batch is drawn from a NumPy generator seeded by
``(seed, epoch, batch number, rank)``, on the host, and applied on the device. The global
torch RNG is never touched, so a batch is a pure function of its content and that key:
mid-epoch resume gives the same augmented batches, and streamed and resident copies of a
dataset give the same training batches.

Teacher and student see the same augmented (and mixed) view: the recipe changes
``batch["x"]`` once, before the distiller runs both networks ("consistent teaching";
Beyer et al. 2022, arXiv:2106.05237). Mixup/CutMix then is the paper's "function
matching" when the loss is KD only.

Mixed labels: a batch whose recipe mixes (or smooths) labels carries ``"y_soft"``, an
``(N, num_classes)`` float tensor of target probabilities (rows sum to 1), besides the
unchanged hard labels ``"y"`` (the first image's class; methods that need a class index,
such as DKD, read those). The ``ce`` term uses ``y_soft`` when present; KD-style terms
read the teacher's outputs on the mixed input and need no labels. A sample without a
label (-1, a transfer set) mixed with any other gets a zero row and is left out of CE.

Sources of the recipe's defaults: RandomResizedCrop scale (0.08, 1) and ratio (3/4, 4/3)
and its 10-try sampling (Szegedy et al. 2015; torchvision's ``RandomResizedCrop``);
TrivialAugment Wide's op list, 31 magnitude bins and ranges (Müller & Hutter 2021,
arXiv:2103.10158; torchvision ``TrivialAugmentWide``); RandAugment ``n=2, m=9`` (Cubuk et
al. 2020, arXiv:1909.13719); Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) in
timm's batch mode (one ``lam`` per batch, partner = the batch reversed).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from ..errors import ConfigError, DataError
from ..safe_read import refuse_bool_numbers

Frac = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data):
        return refuse_bool_numbers(cls, data)


class CropConfig(_Strict):
    """RandomResizedCrop: a crop of ``scale`` of the area and aspect ``ratio``, resized
    to the dataset's input size."""

    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.08, 1.0)
    ratio: tuple[Annotated[float, Field(gt=0, le=100)], Annotated[float, Field(gt=0, le=100)]] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ordered(self):
        if self.scale[0] > self.scale[1] or self.ratio[0] > self.ratio[1]:
            raise ValueError("random_resized_crop scale and ratio must be (low, high) with low <= high")
        return self


class JitterConfig(_Strict):
    """Colour jitter (torchvision's ``ColorJitter`` factors), applied with probability ``p``
    in the fixed order brightness, contrast, saturation, hue."""

    brightness: Annotated[float, Field(ge=0, le=1)] = 0.4
    contrast: Annotated[float, Field(ge=0, le=1)] = 0.4
    saturation: Annotated[float, Field(ge=0, le=1)] = 0.4
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    p: Frac = 1.0


class RecipeConfig(_Strict):
    """``data.recipe``: the on-device training augmentation (see :mod:`kdistill.data.recipe`).

    ``auto_augment``: ``trivial`` (TrivialAugment Wide) or ``rand`` (RandAugment with
    ``rand_n`` ops of magnitude ``rand_m`` out of 30).
    ``mixup`` / ``cutmix``: Beta(alpha, alpha) parameters (0: off); with both on, CutMix is
    chosen with probability ``switch_prob``; a batch is mixed with probability ``mix_prob``.
    """

    random_resized_crop: bool | CropConfig = False
    flip: Frac = 0.0
    color_jitter: bool | JitterConfig = False
    auto_augment: Literal["none", "trivial", "rand"] = "none"
    rand_n: Annotated[int, Field(ge=1, le=10)] = 2
    rand_m: Annotated[int, Field(ge=0, le=30)] = 9
    mixup: Annotated[float, Field(ge=0, le=100)] = 0.0
    cutmix: Annotated[float, Field(ge=0, le=100)] = 0.0
    mix_prob: Frac = 1.0
    switch_prob: Frac = 0.5
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


def need_kornia():
    """The kornia module, or a clear message naming the extra."""
    try:
        import kornia
    except ImportError:
        raise ConfigError("data.recipe's crops, hue jitter and TrivialAugment/RandAugment need Kornia: "
                          "pip install 'kdistill[images]' (or pip install kornia).") from None
    return kornia


class Recipe:
    """The recipe of a :class:`RecipeConfig`, bound to a dataset's classes and normalisation.

    Args:
        cfg: the configuration.
        num_classes: size of ``y_soft`` rows.
        mean, std: per-channel normalisation of the *output* (and, with ``normalized_input``,
            of the input: the recipe then undoes it first, since colour operations work in
            [0, 1]).
    """

    active = True

    def __init__(self, cfg: RecipeConfig, num_classes: int, mean=None, std=None):
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
        c = cfg.random_resized_crop
        self.crop = CropConfig() if c is True else (c or None)
        j = cfg.color_jitter
        self.jitter = JitterConfig() if j is True else (j or None)
        if self.crop is not None or cfg.auto_augment != "none" or (self.jitter is not None and self.jitter.hue > 0):
            need_kornia()  # at the start, not in the middle of an epoch

    _range_checked = False

    @property
    def needs_unit_range(self) -> bool:
        return self.jitter is not None or self.cfg.auto_augment != "none"

    @property
    def mixes(self) -> bool:
        return self.cfg.mixup > 0 or self.cfg.cutmix > 0

    @property
    def soft_labels(self) -> bool:
        return self.mixes or self.cfg.label_smoothing > 0

    def _norm(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.mean is None:
            return None
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.mean.to(x.device).view(shape), self.std.to(x.device).view(shape)

    # -- the whole recipe ------------------------------------------------------------------
    def __call__(self, x: Tensor, y: Tensor, key: tuple[int, ...], size: tuple[int, int] | None = None,
                 normalized_input: bool = False) -> dict[str, Tensor]:
        """Augment one batch. ``x``: ``(N, C, H, W)`` floats in [0, 1] (or normalised, with
        ``normalized_input``); ``key``: ``(seed, epoch, batch, rank)``; ``size``: output
        height and width (default: the input's). Returns ``{"x"}`` and, when labels are
        mixed or smoothed, ``{"y_soft"}``."""
        rng = np.random.default_rng([abs(int(k)) for k in key])
        norm = self._norm(x)
        if normalized_input and norm is not None:
            x = x * norm[1] + norm[0]
        elif normalized_input and not self._range_checked and self.needs_unit_range:
            lo, hi = float(x.min()), float(x.max())  # once: a host sync
            self._range_checked = True
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise DataError(
                    f"data.recipe's colour and auto-augment steps work on images in [0, 1], but this dataset's "
                    f"inputs range over [{lo:.3g}, {hi:.3g}] and it does not say how they were normalised. "
                    "Use an image source (which normalises after the recipe) or drop those steps.")
        if x.dim() == 4:
            size = size or (x.shape[-2], x.shape[-1])
            if self.crop is not None:
                x = random_resized_crop(x, size, self.crop.scale, self.crop.ratio, rng)
            elif (x.shape[-2], x.shape[-1]) != tuple(size):
                x = center_crop(x, size)
        if self.cfg.flip > 0:
            f = torch.from_numpy(rng.random(x.shape[0]) < self.cfg.flip).to(x.device)
            x = torch.where(f.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
        if x.dim() == 4:
            if self.jitter is not None:
                x = color_jitter(x, self.jitter, rng)
            if self.cfg.auto_augment == "trivial":
                x = auto_augment(x, rng, rounds=1, magnitude=None)
            elif self.cfg.auto_augment == "rand":
                x = auto_augment(x, rng, rounds=self.cfg.rand_n, magnitude=self.cfg.rand_m)
        out: dict[str, Tensor] = {}
        if self.soft_labels:
            x, out["y_soft"] = self.mix(x, y, rng)
        if norm is not None:
            x = (x - norm[0]) / norm[1]
        out["x"] = x
        return out

    # -- Mixup / CutMix ---------------------------------------------------------------------
    def mix(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Mix the batch with itself reversed; the soft labels follow the pixel fractions."""
        cfg, lam = self.cfg, 1.0
        if self.mixes and rng.random() < cfg.mix_prob:
            use_cutmix = cfg.cutmix > 0 and (cfg.mixup == 0 or rng.random() < cfg.switch_prob)
            if use_cutmix and x.dim() == 4:
                lam = float(rng.beta(cfg.cutmix, cfg.cutmix))
                h, w = x.shape[-2:]
                cut = math.sqrt(1.0 - lam)
                ch, cw = int(h * cut), int(w * cut)
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
                y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
                x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
                x = x.clone()
                x[..., y1:y2, x1:x2] = x.flip(0)[..., y1:y2, x1:x2]
                lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)  # the box after clipping
            elif cfg.mixup > 0:
                lam = float(rng.beta(cfg.mixup, cfg.mixup))
                x = x * lam + x.flip(0) * (1.0 - lam)
        k, ls = self.num_classes, cfg.label_smoothing
        labelled = y >= 0
        one = torch.nn.functional.one_hot(torch.where(labelled, y, 0), k).float()
        one = one * (1.0 - ls) + ls / k
        soft = one * lam + one.flip(0) * (1.0 - lam) if lam < 1.0 else one
        keep = labelled & (labelled.flip(0) | (lam == 1.0))
        return x, soft * keep.unsqueeze(1).to(soft.dtype)


# -- geometry ---------------------------------------------------------------------------------
def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The central ``size`` window (integer offsets, rounded as torchvision's CenterCrop)."""
    h, w = x.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        raise ValueError(f"cannot center-crop {th}x{tw} from {h}x{w}")
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def rrc_boxes(n: int, h: int, w: int, scale, ratio, rng: np.random.Generator) -> np.ndarray:
    """``(n, 4)`` crops ``(top, left, height, width)``: torchvision's 10-try sampling,
    vectorised, with its fallback (a center crop of the clamped aspect ratio)."""
    area = h * w
    tries = 10
    target = area * rng.uniform(scale[0], scale[1], (n, tries))
    logr = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, tries))
    ar = np.exp(logr)
    cw = np.rint(np.sqrt(target * ar)).astype(np.int64)
    chh = np.rint(np.sqrt(target / ar)).astype(np.int64)
    ok = (cw > 0) & (cw <= w) & (chh > 0) & (chh <= h)
    first = np.where(ok.any(1), ok.argmax(1), -1)
    u_top, u_left = rng.random(n), rng.random(n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        if first[i] >= 0:
            bh, bw = int(chh[i, first[i]]), int(cw[i, first[i]])
            top = int(u_top[i] * (h - bh + 1))
            left = int(u_left[i] * (w - bw + 1))
        else:
            in_ratio = w / h
            if in_ratio < ratio[0]:
                bw, bh = w, int(round(w / ratio[0]))
            elif in_ratio > ratio[1]:
                bh, bw = h, int(round(h * ratio[1]))
            else:
                bw, bh = w, h
            top, left = (h - bh) // 2, (w - bw) // 2
        boxes[i] = (top, left, bh, bw)
    return boxes


def random_resized_crop(x: Tensor, size, scale, ratio, rng: np.random.Generator) -> Tensor:
    """Per-sample crops resized (bilinear) to ``size``, with Kornia's ``crop_and_resize``."""
    from kornia.geometry.transform import crop_and_resize

    n, _, h, w = x.shape
    b = rrc_boxes(n, h, w, scale, ratio, rng)
    top, left, bh, bw = (torch.from_numpy(b[:, i]).float() for i in range(4))
    x1, y1, x2, y2 = left, top, left + bw - 1, top + bh - 1
    boxes = torch.stack([torch.stack([x1, y1], 1), torch.stack([x2, y1], 1),
                         torch.stack([x2, y2], 1), torch.stack([x1, y2], 1)], 1).to(x.device)
    return crop_and_resize(x, boxes, (int(size[0]), int(size[1])), mode="bilinear", align_corners=True)


# -- colour -----------------------------------------------------------------------------------
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _per(v, x: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)


def _blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """``b + f * (a - b)`` clamped to [0, 1] (PIL's ``ImageEnhance`` blend)."""
    return (b + f * (a - b)).clamp(0, 1)


def adjust_brightness(x, f):
    return _blend(x, torch.zeros_like(x), _per(f, x))


def adjust_contrast(x, f):
    m = _grey(x).mean((1, 2, 3), keepdim=True)
    return _blend(x, m.expand_as(x), _per(f, x))


def adjust_saturation(x, f):
    if x.shape[1] == 1:
        return x
    return _blend(x, _grey(x).expand_as(x), _per(f, x))


def adjust_hue(x, f):
    """Hue shift by ``f`` turns (in [-0.5, 0.5]) through Kornia's HSV conversion."""
    if x.shape[1] != 3:
        return x
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, :1] + _per(f, x) * 2 * math.pi, 2 * math.pi)
    return hsv_to_rgb(torch.cat([h, hsv[:, 1:]], 1)).clamp(0, 1)


def color_jitter(x: Tensor, j: JitterConfig, rng: np.random.Generator) -> Tensor:
    """Brightness, contrast, saturation and hue factors drawn per sample (torchvision's
    ranges: ``U(1 - b, 1 + b)``, hue ``U(-h, h)``), on the samples drawn with probability ``p``."""
    n = x.shape[0]
    on = rng.random(n) < j.p
    out = x
    for amount, fn in ((j.brightness, adjust_brightness), (j.contrast, adjust_contrast),
                       (j.saturation, adjust_saturation)):
        f = rng.uniform(1 - amount, 1 + amount, n) if amount > 0 else np.ones(n)
        if amount > 0:
            out = fn(out, np.where(on, f, 1.0))
    if j.hue > 0:
        f = rng.uniform(-j.hue, j.hue, n)
        out = adjust_hue(out, np.where(on, f, 0.0))
    return out


# -- TrivialAugment / RandAugment -------------------------------------------------------------
BINS = 31
# name -> (top of the magnitude range, signed); TrivialAugment Wide's table (torchvision)
OPS: dict[str, tuple[float, bool]] = {
    "identity": (0.0, False),
    "shear_x": (0.99, True),
    "shear_y": (0.99, True),
    "translate_x": (32.0 / 224.0, True),  # 32 px at 224: a fraction of the width here
    "translate_y": (32.0 / 224.0, True),
    "rotate": (135.0, True),
    "brightness": (0.99, True),
    "color": (0.99, True),
    "contrast": (0.99, True),
    "sharpness": (0.99, True),
    "posterize": (6.0, False),  # bits kept: 8 - round(bin * 6 / 30), 8 down to 2
    "solarize": (1.0, False),  # threshold 1 - bin / 30
    "autocontrast": (0.0, False),
    "equalize": (0.0, False),
}
OP_NAMES = list(OPS)


def _apply_op(name: str, x: Tensor, m: Tensor) -> Tensor:
    """One op on a sub-batch with per-sample signed magnitudes ``m`` (in the op's units)."""
    from kornia.enhance import equalize, sharpness
    from kornia.geometry.transform import warp_affine

    n, _, h, w = x.shape
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        a = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        a[:, 0, 0] = a[:, 1, 1] = 1.0
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        if name == "shear_x":
            a[:, 0, 1] = m
            a[:, 0, 2] = -m * cy
        elif name == "shear_y":
            a[:, 1, 0] = m
            a[:, 1, 2] = -m * cx
        elif name == "translate_x":
            a[:, 0, 2] = m * w
        elif name == "translate_y":
            a[:, 1, 2] = m * h
        else:
            t = m * math.pi / 180.0
            c, s = torch.cos(t), torch.sin(t)
            a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = c, -s, s, c
            a[:, 0, 2] = cx - c * cx + s * cy
            a[:, 1, 2] = cy - s * cx - c * cy
        return warp_affine(x, a, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    if name == "brightness":
        return adjust_brightness(x, 1.0 + m)
    if name == "color":
        return adjust_saturation(x, 1.0 + m)
    if name == "contrast":
        return adjust_contrast(x, 1.0 + m)
    if name == "sharpness":
        return sharpness(x, (1.0 + m).clamp_min(0)).clamp(0, 1)
    if name == "posterize":
        bits = (8 - m.round()).clamp(1, 8).to(torch.int64)
        q = (x * 255).round().to(torch.int64)
        mask = (255 << (8 - bits)) & 255
        return (q & mask.view(-1, 1, 1, 1)).to(x.dtype) / 255.0
    if name == "solarize":
        thr = (1.0 - m).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1.0 - x, x)
    if name == "autocontrast":
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-8), torch.ones_like(hi))
        return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 1)
    if name == "equalize":
        return equalize(x).clamp(0, 1)
    return x


def auto_augment(x: Tensor, rng: np.random.Generator, rounds: int, magnitude: int | None) -> Tensor:
    """TrivialAugment (``rounds=1``, a uniform magnitude bin per sample) or RandAugment
    (``rounds=n``, bin ``magnitude``): per round each sample gets one op uniformly from
    :data:`OPS` (ops that need colour skip grey images); samples are grouped by op."""
    n = x.shape[0]
    for _ in range(rounds):
        op = rng.integers(0, len(OP_NAMES), n)
        bins = rng.integers(0, BINS, n) if magnitude is None else np.full(n, magnitude)
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        out = x.clone()
        for k, name in enumerate(OP_NAMES):
            sel = np.nonzero(op == k)[0]
            if len(sel) == 0 or name == "identity":
                continue
            top, signed = OPS[name]
            m = bins[sel] / (BINS - 1) * top * (sign[sel] if signed else 1.0)
            idx = torch.from_numpy(sel).to(x.device)
            out[idx] = _apply_op(name, x[idx], torch.as_tensor(m, dtype=x.dtype, device=x.device))
        x = out
    return x


# -- stored views for teacher caches (FKD) ------------------------------------------------------
class CropFlip:
    """The replayable part of a recipe: a RandomResizedCrop of the model-size input, resized
    back to its size, and a horizontal flip; what a teacher cache stores per view (the FKD
    idea: region-level soft labels for random crops, Shen & Xing 2021, arXiv:2112.01528).

    ``params`` gives ``(n, 5)`` ints ``(top, left, height, width, flip)``, ``apply`` replays
    them; the cache stores the teacher's output for exactly that input. The crops are cut
    from the model-size (center ``size``) input rather than the larger decoded square a live
    recipe crops from, so that a cache works from the same ``batches()`` every source has.
    """

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True, crop: bool = True):
        self.scale, self.ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        self.flip, self.crop = bool(flip), bool(crop)

    @property
    def active(self) -> bool:
        return self.crop or self.flip

    def describe(self) -> dict:
        return {"kind": "crop_flip", "scale": list(self.scale), "ratio": list(self.ratio), "flip": self.flip,
                "crop": self.crop}

    def params(self, n: int, ndim: int, g: torch.Generator, size: tuple[int, int] | None = None) -> Tensor:
        """``(n, 5)`` view parameters drawn from ``g``; ``size``: the input's height and
        width (default: the shape given to :meth:`bind`)."""
        h, w = size or self.size
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        if self.crop:
            boxes = rrc_boxes(n, h, w, self.scale, self.ratio, rng)
        else:
            boxes = np.tile(np.array([[0, 0, h, w]]), (n, 1))
        flips = (rng.random(n) < 0.5) if self.flip else np.zeros(n, dtype=bool)
        return torch.from_numpy(np.concatenate([boxes, flips[:, None].astype(np.int64)], 1))

    def bind(self, input_shape) -> CropFlip:
        self.size = (int(input_shape[-2]), int(input_shape[-1]))
        return self

    def apply(self, x: Tensor, p: Tensor) -> Tensor:
        if self.crop:
            from kornia.geometry.transform import crop_and_resize

            p = p.to(x.device)
            top, left, bh, bw = (p[:, i].float() for i in range(4))
            x1, y1, x2, y2 = left, top, left + bw - 1, top + bh - 1
            boxes = torch.stack([torch.stack([x1, y1], 1), torch.stack([x2, y1], 1),
                                 torch.stack([x2, y2], 1), torch.stack([x1, y2], 1)], 1)
            x = crop_and_resize(x, boxes, (x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=True)
        if self.flip:
            x = torch.where(p[:, 4].to(x.device).bool().view(-1, 1, 1, 1), x.flip(-1), x)
        return x


def views_augment(augment, input_shape=None):
    """What a teacher cache's views replay for a run's augmentation: an ``Augment`` as it
    is, a recipe as its :class:`CropFlip` (refused if it has colour, auto-augment or mixing
    steps, which a cache cannot replay), ``None`` for no augmentation."""
    if isinstance(augment, Recipe):
        augment = augment.cfg
    if not isinstance(augment, RecipeConfig):
        return augment if augment is not None and getattr(augment, "active", False) else None
    extra = [k for k, on in (("color_jitter", bool(augment.color_jitter)),
                             ("auto_augment", augment.auto_augment != "none"),
                             ("mixup/cutmix", augment.mixup > 0 or augment.cutmix > 0),
                             ("label_smoothing", augment.label_smoothing > 0)) if on]
    if extra:
        raise ConfigError(f"A teacher cache stores views it can replay: RandomResizedCrop and flip. data.recipe "
                          f"also has {', '.join(extra)}; drop those for cached KD (or use a live teacher).")
    if augment.flip not in (0.0, 0.5):
        raise ConfigError("Cached views flip with probability 0.5; set data.recipe.flip to 0.5 or 0.")
    c = augment.random_resized_crop
    crop = CropConfig() if c is True else (c or None)
    view = CropFlip(crop.scale if crop else (1.0, 1.0), crop.ratio if crop else (1.0, 1.0), augment.flip > 0,
                    crop is not None)
    if not view.active:
        return None
    return view.bind(input_shape) if input_shape is not None else view
