"""Commands on one prompt: predict, lens, attention."""

from __future__ import annotations

import argparse

import pandas as pd

from core import story
from core.cli.common import Command, answer_flags, layer_int, load, positive_int, print_table
from core.frames import by_magnitude
from core.jsonable import to_jsonable


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=story.CLEAN)
    p.add_argument("--top-k", type=positive_int, default=10)


def lens_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=story.CLEAN)
    answer_flags(p)


def attention_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", type=layer_int, required=True)
    p.add_argument("--head", type=layer_int, required=True)
    p.add_argument("--prompt", default=story.CLEAN)


def cmd_predict(args: argparse.Namespace) -> dict:
    from core.analyses import predict
    from core.engine import tokens

    model = load(args)
    prompt = tokens.prompt(model, args.prompt)
    predict.check_top_k(args.top_k, model.d_vocab)
    top = predict.top_k(model, predict.last_logits(model, prompt), args.top_k)
    if not args.json:
        print(f"{model.name}: {len(prompt.ids)} tokens; {model.bos_convention()}")
        print_table("top predictions", top)
    return {
        "model": model.facts(),
        "token_ids": prompt.ids,
        "tokens": prompt.pieces,
        "top": top[["token", "id", "prob", "logit"]].to_dict("records"),
    }


def cmd_lens(args: argparse.Namespace) -> dict:
    from core.analyses import lens, predict
    from core.engine import tokens

    model = load(args)
    prompt = tokens.prompt(model, args.prompt)
    answer, wrong = tokens.answer_pair(model, args.answer, args.wrong)
    result = lens.logit_lens(model, prompt, answer, wrong)
    top = predict.top_k(model, predict.last_logits(model, prompt), 10)  # as many as the Logit lens page shows
    if not args.json:
        print(f"{model.name}: logit diff {args.answer!r} − {args.wrong!r} = {result.logit_diff:.4f}")
        print_table("logit lens (residual after each sublayer, through the final norm)", result.layers)
        strongest = by_magnitude(result.components, "logit_diff").head(10)
        print_table("direct logit attribution, top 10 by |value|", strongest)
    # the same JSON as the Logit lens page's download (tests/test_app.py checks)
    return {"model": model.facts(), **result.to_json(), "top": to_jsonable(top)}


def cmd_attention(args: argparse.Namespace) -> dict:
    from core.analyses import drivers
    from core.engine import tokens

    model = load(args)
    prompt = tokens.prompt(model, args.prompt)
    result = drivers.attention_pattern(model, prompt, args.layer, args.head)
    if not args.json:
        frame = pd.DataFrame(result.pattern, columns=[tokens.shown(t) for t in prompt.pieces])
        frame.insert(0, "query", [tokens.shown(t) for t in prompt.pieces])
        print(f"{result.label()} on {len(prompt.ids)} tokens; {model.bos_convention()}")
        print(frame.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return {"model": model.facts(), **result.to_json()}


COMMANDS = [
    Command("predict", "top-k next tokens of a prompt", predict_arguments, cmd_predict),
    Command("lens", "logit lens and direct logit attribution of answer − wrong", lens_arguments, cmd_lens),
    Command("attention", "one head's attention pattern (query × key) on a prompt", attention_arguments, cmd_attention),
]
