"""The metric every analysis shares: logit(answer) − logit(wrong) at the last position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.engine import forward as fw
from core.engine.model import Model

DESCRIPTION = "logit diff = logit(answer) − logit(wrong) at the last position"
SCORE = "score = (patched − corrupted) / (clean − corrupted) of the logit diff"


@dataclass(frozen=True)
class LogitDiff:
    """Computes the metric from final residuals, unembedding only the two tokens it needs."""

    answer: int
    wrong: int
    direction: torch.Tensor  # [d] = W_U[:, answer] − W_U[:, wrong]
    bias: float  # b_U[answer] − b_U[wrong]

    @classmethod
    def of(cls, model: Model, answer: int, wrong: int) -> LogitDiff:
        w = model.weights
        return cls(answer, wrong, w.W_U[:, answer] - w.W_U[:, wrong], float(w.b_U[answer] - w.b_U[wrong]))

    def __call__(self, w: fw.Weights, resid_final: torch.Tensor) -> torch.Tensor:
        """resid_final: [..., d] entering the final norm → [...]."""
        normed = fw.norm(w, resid_final, w.lnf_w, w.lnf_b)
        if w.arch.final_softcap is None:
            if self.direction.dtype in fw.HALF:  # accumulated and rounded in float32 (see fw.unembed)
                return normed.float() @ self.direction.float() + self.bias
            return normed @ self.direction + self.bias
        # A soft-capped unembedding (Gemma 2) is not linear: cap both logits, then subtract.
        logits = fw.unembed_columns(w, normed, [self.answer, self.wrong])
        capped = fw.softcap(logits, w.arch.final_softcap)
        return capped[..., 0] - capped[..., 1]
