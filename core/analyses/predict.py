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


@torch.no_grad()
def top_k_per_position(model: Model, prompt: Prompt, k: int = 5) -> pd.DataFrame:
    """The top-k next tokens after every position of the prompt (one forward): columns position, token (the
    prompt's token there), rank, prediction, id, prob."""
    check_top_k(k, model.d_vocab)
    final = fw.run(model.weights, prompt.tensor(model.device)).resid_final
    assert final is not None
    parts = [  # 64 positions at a time: [64, V] logits, not [P, V]
        fw.unembed(model.weights, final[0, i : i + 64]).float().softmax(-1).topk(k, dim=-1)
        for i in range(0, final.shape[1], 64)
    ]
    values, ids = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
    P = len(prompt.ids)
    return pd.DataFrame(
        {
            "position": [p for p in range(P) for _ in range(k)],
            "token": [prompt.pieces[p] for p in range(P) for _ in range(k)],
            "rank": [r + 1 for _ in range(P) for r in range(k)],
            "prediction": [model.token_str(int(i)) for i in ids.flatten()],
            "id": ids.flatten().tolist(),
            "prob": values.flatten().tolist(),
        }
    )


def token_probs(logits: torch.Tensor, ids: list[int]) -> list[float]:
    probs = logits.softmax(-1)
    return [float(probs[i]) for i in ids]
