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

    # DLA: each component's output through the frozen final norm, onto the answer−wrong direction.
    scale = fw.norm_scale(w, trace.resid_final[0, -1])

    def through_norm(vectors: torch.Tensor) -> torch.Tensor:
        return fw.norm_scale_apply(w, vectors, scale, w.lnf_w, None) @ metric.direction

    head_out = torch.einsum("lnh,lnhd->lnd", trace.stacked("z")[:, 0, -1], w.W_O)  # [L, H, d]
    bias_out = w.b_O
    notes = []
    if w.attn_post_w is not None:
        # attn_out = RMSNorm(Σ heads + b_O): with its scale frozen too, each head's share is exact and they sum.
        pre = head_out.sum(1) + w.b_O  # [L, d]
        scale_post = fw.rms_scale(pre, w.eps)  # [L, 1]
        head_out = head_out / scale_post[:, None] * w.attn_post_w[:, None]
        bias_out = w.b_O / scale_post * w.attn_post_w
        notes.append("heads: through the post-attention norm with its scale frozen at the real run's")
    if w.arch.final_softcap is not None:
        notes.append(
            f"DLA splits the logit diff before the final soft-cap ({w.arch.final_softcap}); the lens and "
            "the total are after it"
        )
    head_dla = through_norm(head_out).float()  # [L, H]
    bias_dla = through_norm(bias_out).float()  # [L]
    mlp_dla = through_norm(trace.stacked("mlp_out")[:, 0, -1]).float()  # [L]
    embed_dla = float(through_norm(trace.resid_pre[0][0, -1]))
    final_bias = metric.bias + (float(w.lnf_b @ metric.direction) if w.lnf_b is not None else 0.0)

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
