"""Top-k next-token predictions of a prompt."""

from __future__ import annotations

import pandas as pd
import torch

from core.engine import forward as fw
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.hosting import check_top_k


@torch.no_grad()
def last_logits(model: Model, prompt: Prompt) -> torch.Tensor:
    """Logits at the last position: [V]."""
    final = fw.run(model.weights, prompt.tensor(model.device)).resid_final
    assert final is not None  # a full run records it
    return fw.unembed(model.weights, final[0, -1]).float()


def top_k(model: Model, logits: torch.Tensor, k: int = 10) -> pd.DataFrame:
    """Columns rank, token, id, prob, logit; best first."""
    check_top_k(k, model.d_vocab)
    probs = logits.softmax(-1)
    values, ids = probs.topk(k)
    return pd.DataFrame(
        {
            "rank": range(1, k + 1),
            "token": [model.token_str(i) for i in ids.tolist()],
            "id": ids.tolist(),
            "prob": values.tolist(),
            "logit": logits[ids].tolist(),
        }
    )


def token_probs(logits: torch.Tensor, ids: list[int]) -> list[float]:
    probs = logits.softmax(-1)
    return [float(probs[i]) for i in ids]
