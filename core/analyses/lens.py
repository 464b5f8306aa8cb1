"""Logit lens and direct logit attribution (DLA) of the answer-minus-wrong logit diff.

Logit lens: the residual stream after the embedding and after every attention and MLP sublayer, put through the
final norm (its own scale) and the unembedding. DLA: the final residual at the last position is a sum of
component outputs (embedding, each head, each attention bias, each MLP); with the final norm's scale frozen at
its value on the real residual, the logit diff splits exactly into one term per component.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from core.engine import forward as fw
from core.engine.metric import LogitDiff
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.errors import UserError
from core.jsonable import to_jsonable


@dataclass
class LensResult:
    layers: pd.DataFrame  # label, layer, stage, logit_diff, answer_prob, wrong_prob
    components: pd.DataFrame  # component, kind, layer, logit_diff (embed, attn L, mlp L, bias): sums to the diff
    heads: pd.DataFrame  # layer, head, logit_diff
    logit_diff: float
    prompt: Prompt | None = None
    answer: tuple[str, int] | None = None  # (token, id)
    wrong: tuple[str, int] | None = None
    notes: tuple[str, ...] = ()  # where the architecture changes what DLA means

    def to_json(self) -> dict:
        head: dict = {"dla_notes": list(self.notes)} if self.notes else {}
        if self.answer is not None and self.wrong is not None:
            head["metric"] = f"logit({self.answer[0]!r}) − logit({self.wrong[0]!r}) at the last position"
            head["answer"] = {"token": self.answer[0], "id": self.answer[1]}
            head["wrong"] = {"token": self.wrong[0], "id": self.wrong[1]}
        if self.prompt is not None:
            head.update(prompt=self.prompt.text, token_ids=self.prompt.ids, tokens=self.prompt.pieces)
        return to_jsonable(
            {
                **head,
                "logit_diff": self.logit_diff,
                "layers": self.layers,
                "components": self.components,
                "heads": self.heads,
            }
        )


@torch.no_grad()
def logit_lens(model: Model, prompt: Prompt, answer: int, wrong: int) -> LensResult:
    if answer == wrong:
        raise UserError("answer and wrong are the same token; the logit diff would be 0 everywhere")
    w = model.weights
    trace = fw.run(w, prompt.tensor(model.device))
    metric = LogitDiff.of(model, answer, wrong)

    streams = [("embed", -1, "embed", trace.resid_pre[0])]
    for layer in range(w.n_layers):
        streams.append((f"L{layer} attn", layer, "attn", trace.resid_mid[layer]))
        streams.append((f"L{layer} mlp", layer, "mlp", trace.resid_after(layer)))
    last = torch.stack([s[3][0, -1] for s in streams])  # [stages, d]
    logits = fw.unembed(w, last).float()
    probs = logits.softmax(-1)
    layers = pd.DataFrame(
        {
            "label": [s[0] for s in streams],
            "layer": [s[1] for s in streams],
            "stage": [s[2] for s in streams],
            "logit_diff": (logits[:, answer] - logits[:, wrong]).tolist(),
            "answer_prob": probs[:, answer].tolist(),
            "wrong_prob": probs[:, wrong].tolist(),
        }
    )

    dla = direct_attribution(w, trace, -1, metric.direction, metric.bias)
    head_dla, bias_dla, mlp_dla, embed_dla, final_bias = dla.heads, dla.attn_bias, dla.mlp, dla.embed, dla.final_bias
    notes = list(dla.notes)
    if w.arch.final_softcap is not None:
        notes.append(
            f"DLA splits the logit diff before the final soft-cap ({w.arch.final_softcap}); the lens and "
            "the total are after it"
        )

    rows = [("embed", "embed", -1, embed_dla)]
    for layer in range(w.n_layers):
        rows.append((f"attn L{layer}", "attn", layer, float(head_dla[layer].sum() + bias_dla[layer])))
        rows.append((f"mlp L{layer}", "mlp", layer, float(mlp_dla[layer])))
    rows.append(("final bias", "bias", -1, final_bias))
    components = pd.DataFrame(rows, columns=["component", "kind", "layer", "logit_diff"])
    heads = pd.DataFrame(
        [(layer, head, float(head_dla[layer, head])) for layer in range(w.n_layers) for head in range(w.n_heads)],
        columns=["layer", "head", "logit_diff"],
    )
    return LensResult(
        layers,
        components,
        heads,
        float(layers["logit_diff"].iloc[-1]),
        prompt,
        (model.token_str(answer), answer),
        (model.token_str(wrong), wrong),
        tuple(notes),
    )


@dataclass
class DirectAttribution:
    """Each component's share of a linear readout of the residual at one position, with the final norm's scale
    (and each post-attention norm's) frozen at the real run: embed + Σ heads + Σ attn_bias + Σ mlp + final_bias
    equals the readout of the final residual exactly.

    heads [L, H], attn_bias [L] (b_O, after the post-norm where there is one), mlp [L] (mlp_out: all neurons and
    b_out together), embed (token + learned position embedding), final_bias (the final norm's bias + `bias`).
    """

    heads: torch.Tensor
    attn_bias: torch.Tensor
    mlp: torch.Tensor
    embed: float
    final_bias: float
    notes: tuple[str, ...] = ()


def direct_attribution(
    w: fw.Weights, trace: fw.Trace, position: int, direction: torch.Tensor, bias: float
) -> DirectAttribution:
    """DLA at `position` of a batch-1 trace onto `direction` [d] (+ `bias`, e.g. b_U[answer] − b_U[wrong]).

    The readout is direction · norm(resid_final) + bias with the final norm's scale frozen at this run: linear in
    the residual, so it splits exactly over the components that sum to it. Shared by the logit lens and
    core.analyses.effects (which adds each neuron's share of its MLP).
    """
    # DLA: each component's output through the frozen final norm, onto the direction.
    scale = fw.norm_scale(w, trace.resid_final[0, position])

    def through_norm(vectors: torch.Tensor) -> torch.Tensor:
        return fw.norm_scale_apply(w, vectors, scale, w.lnf_w, None) @ direction

    head_out = torch.einsum("lnh,lnhd->lnd", trace.stacked("z")[:, 0, position], w.W_O)  # [L, H, d]
    bias_out = w.b_O
    notes = []
    if w.attn_post_w is not None:
        # attn_out = RMSNorm(Σ heads + b_O): with its scale frozen too, each head's share is exact and they sum.
        pre = head_out.sum(1) + w.b_O  # [L, d]
        scale_post = fw.rms_scale(pre, w.eps)  # [L, 1]
        head_out = head_out / scale_post[:, None] * w.attn_post_w[:, None]
        bias_out = w.b_O / scale_post * w.attn_post_w
        notes.append("heads: through the post-attention norm with its scale frozen at the real run's")
    return DirectAttribution(
        heads=through_norm(head_out).float(),  # [L, H]
        attn_bias=through_norm(bias_out).float(),  # [L]
        mlp=through_norm(trace.stacked("mlp_out")[:, 0, position]).float(),  # [L]
        embed=float(through_norm(trace.resid_pre[0][0, position])),
        final_bias=bias + (float(w.lnf_b @ direction) if w.lnf_b is not None else 0.0),
        notes=tuple(notes),
    )
