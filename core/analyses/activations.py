"""A neuron's activation at every position of a prompt: the MLP hidden value that multiplies W_out (for gated MLPs
act(gate) · up), the quantity every page calls the neuron's activation."""

from __future__ import annotations

import pandas as pd
import torch

from core.analyses.congruence import check_neuron
from core.engine import forward as fw
from core.engine.model import Model
from core.engine.tokens import Prompt


@torch.no_grad()
def neuron_activations(model: Model, prompt: Prompt, layer: int, neuron: int) -> pd.DataFrame:
    """position, token, id, activation: one row per position of the prompt (one forward)."""
    check_neuron(model, layer, neuron)
    trace = fw.run(model.weights, prompt.tensor(model.device))
    values = trace.mlp_post[layer][0, :, neuron].float().cpu().tolist()
    return pd.DataFrame(
        {"position": range(len(prompt.ids)), "token": prompt.pieces, "id": prompt.ids, "activation": values}
    )
