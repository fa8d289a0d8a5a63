"""Factor transfer (FT): match compressed "factors" of the teacher's last stage.

Kim, Park & Kwak (2018), "Paraphrasing Complex Network: Network Compression via Factor
Transfer", arXiv:1802.04977.

* The *paraphraser* is a convolutional autoencoder on the teacher's last-stage
  map: three 3x3 convolutions down to ``round(k * C_t)`` channels (the teacher factor) and
  three 3x3 transposed convolutions back, spatial size kept; rate ``k = 0.5``, the paper's
  CIFAR setting. It is trained alone to reconstruct the teacher's feature (L2 loss) in the
  :class:`FirstPhase` ``ft_paraphraser``, then frozen (eval mode, no gradient).
* The *translator*, three 3x3 convolutions on the student's last-stage map
  to the same factor width, trains with the student.
* Loss: ``|| F_T/||F_T||_2 - F_S/||F_S||_2 ||_p`` with ``p = 1``, factors flattened per
  sample; averaged over elements as in the CRD benchmark (Tian et al. 2020, RepDistiller),
  whose weight 200 and 30 paraphraser epochs (``init_epochs``) are the defaults. Maps of
  different spatial size are pooled to the smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ._base import Context, FirstPhase, Method
from ._pairs import match_spatial, probe_shapes, require_example, require_maps, stage_pairs
from ._registry import register_method


def factor_loss(student_factor: Tensor, teacher_factor: Tensor, p: float = 1.0) -> Tensor:
    """Mean ``|d|^p`` of the difference of the per-sample L2-normalised, flattened factors."""
    s, t = match_spatial(student_factor.float(), teacher_factor.detach().float())
    diff = F.normalize(s.flatten(1), dim=1) - F.normalize(t.flatten(1), dim=1)
    return diff.abs().pow(p).mean()


def _block(conv: type, c_in: int, c_out: int, bn: type) -> list[nn.Module]:
    return [conv(c_in, c_out, 3, padding=1), bn(c_out), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Autoencoder ``C -> m -> C`` (``m = round(rate * C)``) that keeps the spatial size."""

    def __init__(self, channels: int, rate: float, dims: int):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        deconv = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        m = max(1, round(rate * channels))
        self.encoder = nn.Sequential(*_block(conv, channels, channels, bn), *_block(conv, channels, m, bn),
                                     *_block(conv, m, m, bn))
        # the last layer is linear so the reconstruction can take any value the teacher's can
        self.decoder = nn.Sequential(*_block(deconv, m, m, bn), *_block(deconv, m, channels, bn),
                                     deconv(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Sequential):
    """Three 3x3 conv layers from the student's width to the factor width."""

    def __init__(self, c_in: int, c_out: int, dims: int):
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        super().__init__(
            *_block(conv, c_in, c_in, bn), *_block(conv, c_in, c_out, bn), *_block(conv, c_out, c_out, bn)
        )


@register_method("ft")
class FT(Method):
    """Factor transfer on the last stages: paraphraser (teacher) vs translator (student)."""

    default_weight = 200.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: one tap each (default: the last declared stages).
            rate: paraphraser rate k, factor channels = k * teacher channels (paper: 0.5).
            p: norm of the factor distance (paper: 1).
            init_epochs / init_lr: the paraphraser's first phase (RepDistiller: 30 epochs).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        rate: float = 0.5
        p: float = 1.0
        init_epochs: int = 30
        init_lr: float | None = None

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if not 0 < cfg.rate <= 1 or cfg.p <= 0 or cfg.init_epochs < 0:
            raise ConfigError(
                f"ft: need 0 < rate <= 1, p > 0 and init_epochs >= 0; got rate {cfg.rate}, p {cfg.p}, "
                f"init_epochs {cfg.init_epochs}."
            )
        s_specs, t_specs = stage_pairs("ft", cfg.student_layers, cfg.teacher_layers, student, teacher, last=1)
        if len(s_specs) != 1:
            raise ConfigError(f"ft matches one layer pair; got student {s_specs} and teacher {t_specs}.")
        (s,), (t,) = s_specs, t_specs
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, require_example("ft", example))
        require_maps("ft", s, s_shapes[s], t, t_shapes[t])
        dims = len(t_shapes[t]) - 2
        if dims not in (1, 2):
            raise ShapeError(f"ft supports 1-D and 2-D feature maps; {t!r} gives {t_shapes[t]}.")
        self.paraphraser = Paraphraser(t_shapes[t][1], cfg.rate, dims)
        width = self.paraphraser.encoder[-3].out_channels
        self.translator = Translator(s_shapes[s][1], width, dims)
        self.student_taps, self.teacher_taps = s_specs, t_specs

    def teacher_factor(self, feat: Tensor) -> Tensor:
        """The frozen paraphraser's factor (eval-mode BatchNorm, no gradient)."""
        was_training = self.paraphraser.training
        self.paraphraser.eval()
        try:
            with torch.no_grad():
                return self.paraphraser.encoder(feat)
        finally:
            self.paraphraser.train(was_training)

    def forward(self, ctx: Context) -> Tensor:
        f_t = self.teacher_factor(ctx.teacher.features[self.teacher_taps[0]])
        f_s = self.translator(ctx.student_features[self.student_taps[0]])
        return factor_loss(f_s, f_t, self.cfg.p)

    def reconstruction_loss(self, ctx: Context) -> Tensor:
        """The paraphraser's training loss: mean squared reconstruction error of the teacher feature."""
        feat = ctx.teacher.features[self.teacher_taps[0]].detach()
        return F.mse_loss(self.paraphraser(feat)[1].float(), feat.float())

    def first_phase(self) -> FirstPhase | None:
        if self.cfg.init_epochs <= 0:
            return None
        return FirstPhase("ft_paraphraser", self.cfg.init_epochs, list(self.paraphraser.parameters()),
                        self.reconstruction_loss, self.cfg.init_lr)
