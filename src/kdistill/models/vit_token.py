"""DeiT's distillation token added to a plain timm Vision Transformer.

Touvron et al. (2021), "Training data-efficient image transformers & distillation through
attention", arXiv:2012.12877: a second learnt token beside the class token, with its own
position embedding and its own linear head; the network's prediction is the average of the
two heads. timm ships this as ``deit_*_distilled_*``; :class:`DistillationToken` gives any
timm ``VisionTransformer`` built with class-token pooling the same two heads
(``timm:vit_tiny_patch16_224`` with ``kwargs: {distillation_token: true}``), for the
``deit`` method (:mod:`kdistill.methods.deit`).

The wrapper adopts the ViT's modules and parameters under their own names, so a plain ViT's
weights load into it under the same keys (only ``dist_token``, ``dist_pos_embed`` and
``head_dist`` are new). With timm's ``VisionTransformerDistilled`` weights mapped
(``pos_embed`` split at position 1) it computes exactly what that model computes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class DistillationToken(nn.Module):
    """A timm ``VisionTransformer`` with a distillation token and a second head; ``forward``
    gives the average of the class head (``head``) and the distillation head (``head_dist``)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        plain = (getattr(vit, "cls_token", None) is not None and getattr(vit, "global_pool", None) == "token"
                 and getattr(vit, "reg_token", None) is None and not getattr(vit, "dynamic_img_size", False)
                 and getattr(vit, "attn_pool", None) is None and getattr(vit, "pos_embed", None) is not None)
        if not plain or getattr(vit, "num_prefix_tokens", 1) != 1:
            raise ConfigError(
                f"distillation_token: {type(vit).__name__} is not a plain timm VisionTransformer with a class "
                "token, class-token pooling and absolute position embeddings (no register tokens, no dynamic "
                "image size); use one of timm's deit_*_distilled_* models instead."
            )
        for name, child in vit.named_children():
            self.add_module(name, child)
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed
        self.no_embed_class = bool(getattr(vit, "no_embed_class", False))
        dim, classes = vit.embed_dim, vit.num_classes
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        nn.init.trunc_normal_(self.dist_pos_embed, std=0.02)
        self.head_dist = nn.Linear(dim, classes) if classes > 0 else nn.Identity()

    def tokens(self, x: Tensor) -> Tensor:
        """Images -> the final normalised tokens ``[class, distillation, patches...]``."""
        x = self.patch_embed(x)
        n = x.shape[0]
        cls = self.cls_token.expand(n, -1, -1)
        if self.no_embed_class:
            x = torch.cat([cls, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([cls, x], dim=1) + self.pos_embed
        dist = (self.dist_token + self.dist_pos_embed).expand(n, -1, -1)
        x = torch.cat([x[:, :1], dist, x[:, 1:]], dim=1)
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        return self.norm(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.tokens(x)
        cls = self.head(self.head_drop(self.fc_norm(x[:, 0])))
        dist = self.head_dist(self.head_drop(self.fc_norm(x[:, 1])))
        return (cls + dist) / 2
