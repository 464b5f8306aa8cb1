"""Congruence of a neuron with a token: W_out[L, n] · u_t (the post's §6).

u_t is the token's unembedding column W_U[:, t] ("W_U") or its embedding row W_E[t] ("W_E", what the post's code
used). Both are read after the model's weight processing (fold_ln, centring: see Model.processing): with
TransformerLens's defaults W_U carries the final norm's weight and is centred over the vocabulary, so for a
tied-embedding model (GPT-2, SmolLM2) the two matrices differ only through that processing.

With a post-MLP norm (Gemma 2/3, OLMo 2) a neuron's output reaches the residual as RMSNorm(…) = (…) ⊙ w_post / rms:
the neuron's direction in the residual is W_out[L, n] ⊙ w_post[L] (rms is a positive number per token, so it
scales but never reorders). Congruence uses that product there; raw W_out's top tokens are noise on Gemma 3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast, get_args

import numpy as np
import pandas as pd
import torch

from core.engine.model import Model
from core.errors import UserError
from core.hosting import check_top_k
from core.jsonable import to_jsonable

Matrix = Literal["W_U", "W_E"]
MATRICES: tuple[Matrix, ...] = get_args(Matrix)
MATRIX_HELP = {
    "W_U": "unembedding column W_U[:, t] (what the neuron writes towards predicting t)",
    "W_E": "embedding row W_E[t] (what the post's code used)",
}


def check_matrix(matrix: str) -> Matrix:
    """The boundary check of a matrix name typed by a user (CLI, URL, caller)."""
    if matrix not in MATRICES:
        raise UserError(f"matrix {matrix!r} unknown; use {' or '.join(MATRICES)}")
    return cast(Matrix, matrix)


def token_vectors(model: Model, matrix: str) -> torch.Tensor:
    """[d, V]: one column per token."""
    return model.weights.W_U if check_matrix(matrix) == "W_U" else model.weights.W_E.T


def output_weights(model: Model) -> torch.Tensor:
    """[L, d_mlp, d]: what each neuron writes into the residual (through the post-MLP norm's weight, if any)."""
    w = model.weights
    return w.W_out if w.mlp_post_w is None else w.W_out * w.mlp_post_w[:, None, :]


def neuron_vector(model: Model, layer: int, neuron: int) -> torch.Tensor:
    """[d]: one neuron's row of output_weights."""
    w = model.weights
    row = w.W_out[layer, neuron]
    return row if w.mlp_post_w is None else row * w.mlp_post_w[layer]


def neuron_vectors(model: Model) -> torch.Tensor:
    """[L * d_mlp, d]: every neuron's output direction, neuron (L, n) at row L * d_mlp + n."""
    return output_weights(model).flatten(0, 1)


def formula(model: Model, matrix: str) -> str:
    """The congruence as computed for this model, for the UI and the JSON."""
    row = "W_out[L, n] ⊙ w_post[L]" if model.weights.mlp_post_w is not None else "W_out[L, n]"
    return f"{row} · {'W_U[:, t]' if check_matrix(matrix) == 'W_U' else 'W_E[t]'}"


def describe(model: Model, matrix: str) -> dict:
    matrix = check_matrix(matrix)
    return {
        "matrix": matrix,
        "matrix_meaning": MATRIX_HELP[matrix],
        "processing": model.processing,
        "congruence": formula(model, matrix),
    }


def parse_neuron(model: Model, text: str) -> tuple[int, int]:
    """'L31.N892' or '31.892' → (31, 892), range-checked against the model."""
    match = re.fullmatch(r"\s*L?(-?\d+)\s*[.,:/]\s*N?(-?\d+)\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise UserError(f"neuron {text!r} not understood; write it as L31.N892 or 31.892")
    return check_neuron(model, int(match.group(1)), int(match.group(2)))


def check_neuron(model: Model, layer: int, neuron: int) -> tuple[int, int]:
    if not 0 <= layer < model.n_layers:
        raise UserError(f"layer {layer} is out of range; {model.name} has layers 0..{model.n_layers - 1}")
    if not 0 <= neuron < model.d_mlp:
        raise UserError(f"neuron {neuron} is out of range; {model.name} has neurons 0..{model.d_mlp - 1} per layer")
    return layer, neuron


def label(layer: int, neuron: int) -> str:
    return f"L{layer}.N{neuron}"


@dataclass
class NeuronTokens:
    layer: int
    neuron: int
    matrix: str
    values: np.ndarray  # [V] congruence with every token
    top: pd.DataFrame  # rank, token, id, congruence (most congruent first)
    bottom: pd.DataFrame  # least congruent first
    top_token_rank_among_neurons: int  # 1 = no neuron is more congruent with this neuron's top token

    def to_json(self) -> dict:
        layer, neuron = self.layer, self.neuron
        return to_jsonable(
            {
                "neuron": {"layer": layer, "neuron": neuron, "label": label(layer, neuron)},
                "results": [
                    {"layer": layer, "neuron": neuron, "token": r.token, "id": r.id, "congruence": r.congruence}
                    for r in self.top.itertuples()
                ],
                "least": self.bottom[["token", "id", "congruence"]],
                "top_token_rank_among_neurons": self.top_token_rank_among_neurons,
            }
        )


@torch.no_grad()
def neuron_to_tokens(model: Model, layer: int, neuron: int, matrix: str = "W_U", top_k: int = 20) -> NeuronTokens:
    check_neuron(model, layer, neuron)
    check_top_k(top_k, model.d_vocab)
    vectors = token_vectors(model, matrix)
    values = (neuron_vector(model, layer, neuron) @ vectors).float()
    top_vals, top_ids = values.topk(top_k)
    low_vals, low_ids = (-values).topk(top_k)
    best = int(top_ids[0])
    column = (neuron_vectors(model) @ vectors[:, best]).float()
    rank = int((column > column[layer * model.d_mlp + neuron]).sum()) + 1
    return NeuronTokens(
        layer,
        neuron,
        matrix,
        values.cpu().numpy(),
        _token_frame(model, top_ids, top_vals),
        _token_frame(model, low_ids, -low_vals),
        rank,
    )


@torch.no_grad()
def extreme_tokens(model: Model, neurons: list[tuple[int, int]], matrix: str = "W_U") -> pd.DataFrame:
    """Each neuron's most and least congruent token, in one matmul ([n, d] @ [d, V]): columns layer, neuron,
    top_token, top_congruence, bottom_token, bottom_congruence (rows in the order given)."""
    for layer, neuron in neurons:
        check_neuron(model, layer, neuron)
    columns = ["layer", "neuron", "top_token", "top_congruence", "bottom_token", "bottom_congruence"]
    if not neurons:
        return pd.DataFrame(columns=columns)
    rows = torch.stack([neuron_vector(model, layer, neuron) for layer, neuron in neurons])  # [n, d]
    values = (rows @ token_vectors(model, matrix)).float()  # [n, V]
    top_vals, top_ids = values.max(-1)
    low_vals, low_ids = values.min(-1)
    return pd.DataFrame(
        {
            "layer": [layer for layer, _ in neurons],
            "neuron": [neuron for _, neuron in neurons],
            "top_token": [model.token_str(int(i)) for i in top_ids],
            "top_congruence": top_vals.cpu().numpy(),
            "bottom_token": [model.token_str(int(i)) for i in low_ids],
            "bottom_congruence": low_vals.cpu().numpy(),
        },
        columns=columns,
    )


def _token_frame(model: Model, ids: torch.Tensor, values: torch.Tensor) -> pd.DataFrame:
    ids_list = ids.tolist()
    return pd.DataFrame(
        {
            "rank": range(1, len(ids_list) + 1),
            "token": [model.token_str(i) for i in ids_list],
            "id": ids_list,
            "congruence": values.float().cpu().tolist(),
        }
    )


@dataclass
class TokenNeurons:
    token_id: int
    matrix: str
    values: np.ndarray  # [L, d_mlp] congruence of every neuron with the token
    top: pd.DataFrame  # rank, layer, neuron, label, congruence
    per_layer: pd.DataFrame  # layer, neuron (argmax), congruence (max)
    token_rank_for_top_neuron: int  # 1 = the top neuron likes no token more than this one
    token: str = ""  # the token's text

    def to_json(self) -> dict:
        return to_jsonable(
            {
                "token": {"token": self.token, "id": self.token_id},
                "results": [
                    {
                        "layer": r.layer,
                        "neuron": r.neuron,
                        "token": self.token,
                        "id": self.token_id,
                        "congruence": r.congruence,
                    }
                    for r in self.top.itertuples()
                ],
                "per_layer": self.per_layer,
                "token_rank_for_top_neuron": self.token_rank_for_top_neuron,
            }
        )


@torch.no_grad()
def token_to_neurons(model: Model, token_id: int, matrix: str = "W_U", top_k: int = 20) -> TokenNeurons:
    if not 0 <= token_id < model.d_vocab:
        raise UserError(f"token id {token_id} is out of range; {model.name} has ids 0..{model.d_vocab - 1}")
    n_total = model.n_layers * model.d_mlp
    check_top_k(top_k, n_total)
    vectors = token_vectors(model, matrix)
    values = (neuron_vectors(model) @ vectors[:, token_id]).float()  # [N]
    top_vals, top_ids = values.topk(top_k)
    layers, neurons = (top_ids // model.d_mlp).tolist(), (top_ids % model.d_mlp).tolist()
    top = pd.DataFrame(
        {
            "rank": range(1, top_k + 1),
            "layer": layers,
            "neuron": neurons,
            "label": [label(l, n) for l, n in zip(layers, neurons)],
            "congruence": top_vals.tolist(),
        }
    )
    grid = values.view(model.n_layers, model.d_mlp)
    best_vals, best_ids = grid.max(dim=1)
    per_layer = pd.DataFrame(
        {"layer": range(model.n_layers), "neuron": best_ids.tolist(), "congruence": best_vals.tolist()}
    )
    row = (neuron_vector(model, layers[0], neurons[0]) @ vectors).float()
    rank = int((row > row[token_id]).sum()) + 1
    return TokenNeurons(token_id, matrix, grid.cpu().numpy(), top, per_layer, rank, model.token_str(token_id))
