"""`python -m core …`: every analysis headless, a table by default, JSON with --json.

Bad input answers with one line `error: …` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd

from core.errors import UserError
from core.jsonable import to_jsonable

from core.post import CLEAN as POST_CLEAN
from core.post import CORRUPTED as POST_CORRUPTED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def layer_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer number") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (embedded), gpt2…gpt2-xl, or a local folder")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--processing", default="tl-default", choices=["tl-default", "none"],
                        help="tl-default: fold_ln + centring, as the post; none: raw weights")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", action="store_true", help="run on Ray (optional extra, requirements-scale.txt)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray workers (local instance: CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Token Neuron Explorer, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("predict", help="top-k next tokens of a prompt")
    _common(p)
    p.add_argument("--prompt", default=POST_CLEAN)
    p.add_argument("--top-k", type=positive_int, default=10)

    p = sub.add_parser("lens", help="logit lens and direct logit attribution of answer − wrong")
    _common(p)
    p.add_argument("--prompt", default=POST_CLEAN)
    p.add_argument("--answer", default=" an", help="answer token with its leading space")
    p.add_argument("--wrong", default=" a")

    p = sub.add_parser("patch", help="activation patching: layers × positions, heads, or every neuron of a layer")
    _common(p)
    p.add_argument("--clean", default=POST_CLEAN)
    p.add_argument("--corrupted", default=POST_CORRUPTED)
    p.add_argument("--answer", default=" an")
    p.add_argument("--wrong", default=" a")
    p.add_argument("--level", choices=["layers", "heads", "neurons", "all-neurons"], default="layers",
                   help="all-neurons: every neuron of every layer (attribution patching, then exact on the top-k)")
    p.add_argument("--method", choices=["attribution", "exact-topk"], default="exact-topk",
                   help="for --level all-neurons: attribution only, or attribution + exact patching of the top-k")
    p.add_argument("--layer", type=layer_int, help="MLP layer for --level neurons (default: the standout late layer)")
    p.add_argument("--top-k", type=positive_int, help="neurons to list (default: all in JSON, 20 in tables)")
    p.add_argument("--ablation", choices=["clean", "zero", "mean", "negate"], default="clean")

    p = sub.add_parser("congruence", help="neuron → tokens (--neuron) or token → neurons (--token): W_out · u_t")
    _common(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--neuron", help="L31.N892 or 31.892")
    target.add_argument("--token", help="a token with its leading space, e.g. ' an'")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=["W_U", "W_E"], default="W_U", help="W_U: unembedding; W_E: embedding (post's code)")

    p = sub.add_parser("search", help="stand-out or mutual-exclusive token-neuron pairs over all neurons × tokens")
    _common(p)
    p.add_argument("--kind", choices=["standout", "mutual"], default="mutual")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=["W_U", "W_E"], default="W_U")
    _ray_flags(p)

    p = sub.add_parser("scan", help="corpus scan: activation bins vs top-1 share, totals, max-activating examples")
    _common(p)
    p.add_argument("--dataset", default="bundled", help="'bundled' (State of the Union 1981-2021), a file/folder, "
                   "or a hub dataset name such as NeelNanda/pile-10k")
    p.add_argument("--neurons", required=True, help="comma-separated, e.g. L25.N1527,L27.N554")
    p.add_argument("--target", default=" an", help="target token with its leading space")
    p.add_argument("--max-tokens", type=positive_int, default=20_000)
    p.add_argument("--bin-width", type=float, default=0.5)
    p.add_argument("--top-k", type=positive_int, default=10, help="max-activating examples per neuron")
    _ray_flags(p)

    p = sub.add_parser("reproduce", help="the post's whole story on one model: report.md/.html, figures, results.json")
    _common(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", default="bundled", help="corpus for the corpus check (see scan)")
    p.add_argument("--corpus-tokens", type=positive_int, default=20_000, help="token budget of the corpus check")
    return parser


def _load(args: argparse.Namespace):
    from core.model import load_model

    return load_model(args.model, device=args.device, processing=args.processing)


TOKEN_COLUMNS = ("token", "top_token", "answer", "wrong", "prediction")


def _print_table(title: str, frame: pd.DataFrame) -> None:
    """A table for the terminal; tokens show their spaces (" an" as ␣an), as in the UI. JSON keeps them raw."""
    from core.tokens import shown

    shown_frame = frame.assign(**{c: frame[c].map(lambda t: shown(t) if isinstance(t, str) else t)
                                  for c in TOKEN_COLUMNS if c in frame.columns})
    print(f"\n{title}")
    print(shown_frame.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def cmd_predict(args: argparse.Namespace) -> dict:
    from core import predict, tokens

    model = _load(args)
    prompt = tokens.prompt(model, args.prompt)
    predict.check_top_k(args.top_k, model.d_vocab)
    top = predict.top_k(model, predict.last_logits(model, prompt), args.top_k)
    if not args.json:
        print(f"{model.name}: {len(prompt.ids)} tokens; {model.bos_convention()}")
        _print_table("top predictions", top)
    return {"model": model.facts(), "token_ids": prompt.ids, "tokens": prompt.pieces,
            "top": top[["token", "id", "prob", "logit"]].to_dict("records")}


def cmd_lens(args: argparse.Namespace) -> dict:
    from core import lens, tokens

    model = _load(args)
    prompt = tokens.prompt(model, args.prompt)
    answer, wrong = tokens.single_token(model, args.answer, "answer"), tokens.single_token(model, args.wrong, "wrong")
    result = lens.logit_lens(model, prompt, answer, wrong)
    if not args.json:
        print(f"{model.name}: logit diff {args.answer!r} − {args.wrong!r} = {result.logit_diff:.4f}")
        _print_table("logit lens (residual after each sublayer, through the final norm)", result.layers)
        _print_table("direct logit attribution, top 10 by |value|",
                     result.components.reindex(result.components.logit_diff.abs().sort_values(ascending=False).index).head(10))
    return {
        "model": model.facts(),
        "metric": f"logit({args.answer!r}) − logit({args.wrong!r}) at the last position",
        "token_ids": prompt.ids,
        "tokens": prompt.pieces,
        "logit_diff": result.logit_diff,
        "layers": result.layers.to_dict("records"),
        "components": result.components.to_dict("records"),
        "heads": result.heads.to_dict("records"),
    }


def cmd_patch(args: argparse.Namespace) -> dict:
    from core import patching, tokens

    model = _load(args)
    clean, corrupted = tokens.pair(model, args.clean, args.corrupted)
    answer, wrong = tokens.single_token(model, args.answer, "answer"), tokens.single_token(model, args.wrong, "wrong")
    if args.layer is not None:
        patching.check_layer(model, args.layer)
    setup = patching.prepare(model, clean, corrupted, answer, wrong, args.ablation)
    out: dict[str, Any] = {
        "model": model.facts(),
        **setup.describe(),
        "answer": {"token": args.answer, "id": answer},
        "wrong": {"token": args.wrong, "id": wrong},
        "clean_token_ids": clean.ids,
        "corrupted_token_ids": corrupted.ids,
        "tokens": clean.pieces,
        "clean_logit_diff": setup.clean_logit_diff,
        "corrupted_logit_diff": setup.corrupted_logit_diff,
    }
    if not args.json:
        print(f"{model.name}: clean logit diff {setup.clean_logit_diff:.4f}, corrupted {setup.corrupted_logit_diff:.4f}; "
              f"{out['score']}")
    if args.level == "layers":
        result = patching.patch_layers(setup)
        out["scores"] = result.scores
        out["all_positions"] = result.all_positions
        if not args.json:
            totals = pd.DataFrame({"layer": range(model.n_layers), **{k: v for k, v in result.all_positions.items()}})
            _print_table("all-positions score per layer", totals)
    elif args.level == "heads":
        result = patching.patch_heads(setup, per_position=True)
        out["heads_all_positions"] = result.all_positions
        out["heads_per_position"] = result.per_position
        if not args.json:
            flat = pd.DataFrame([(l, h, float(result.all_positions[l, h])) for l in range(model.n_layers)
                                 for h in range(model.n_heads)], columns=["layer", "head", "score"])
            _print_table("top heads (all positions)", flat.sort_values("score", ascending=False).head(10))
    elif args.level == "all-neurons":
        from core import attribution

        approx = attribution.attribute(setup)
        top_k = args.top_k or 50
        out["caveat"] = attribution.CAVEAT
        out["method"] = args.method
        if args.method == "exact-topk":
            found = attribution.find_top_neurons(setup, approx, top_k)
            frame = found.table
            out.update(found.to_json())
            out["neurons"] = frame[["layer", "neuron", "exact", "attribution", "source", "disagree"]].to_dict("records")
            if not args.json:
                print(attribution.CAVEAT)
                print(found.rule())
                best = found.best
                print(f"top neuron anywhere (exact): {best.label} {best.exact:.4f} (attribution {best.attribution:.4f})")
                _print_table("verified candidates, by exact score", frame.head(top_k))
        else:
            frame = attribution.top_neurons(model, approx, top_k)
            out["neurons"] = frame[["layer", "neuron", "attribution", "exact"]].to_dict("records")  # exact: null
            if not args.json:
                print(attribution.CAVEAT)
                _print_table(f"top {top_k} neurons of all layers by attribution (not verified)", frame)
    else:
        layer = args.layer
        if layer is None:
            layer = patching.standout_mlp_layer(patching.patch_layers(setup))
            out["layer_choice"] = "late MLP layer with the highest all-positions mlp_out score (MLP 0 excluded)"
        result = patching.patch_neurons(setup, layer)
        frame = result.frame(args.top_k or (None if args.json else 20))  # JSON: every neuron unless --top-k
        if not args.json:
            print(f"layer {layer}: whole-layer score {result.layer_score:.4f}")
            _print_table("top neurons", frame)
        out["layer"] = layer
        out["layer_score"] = result.layer_score
        out["neurons"] = frame[["layer", "neuron", "score"]].to_dict("records")
    return out


def cmd_congruence(args: argparse.Namespace) -> dict:
    from core import congruence, tokens

    model = _load(args)
    out = {"model": model.facts(), **congruence.describe(model, args.matrix)}
    if args.neuron is not None:
        layer, neuron = congruence.parse_neuron(model, args.neuron)
        result = congruence.neuron_to_tokens(model, layer, neuron, args.matrix, args.top_k)
        rows = [{"layer": layer, "neuron": neuron, "token": r.token, "id": r.id, "congruence": r.congruence}
                for r in result.top.itertuples()]
        out.update(neuron={"layer": layer, "neuron": neuron, "label": congruence.label(layer, neuron)},
                   results=rows,
                   least=result.bottom[["token", "id", "congruence"]].to_dict("records"),
                   top_token_rank_among_neurons=result.top_token_rank_among_neurons)
        if not args.json:
            print(f"{congruence.label(layer, neuron)} · {args.matrix}; its top token ranks "
                  f"#{result.top_token_rank_among_neurons} among all neurons for that token")
            _print_table("most congruent tokens", result.top)
            _print_table("least congruent tokens", result.bottom)
    else:
        token_id = tokens.single_token(model, args.token)
        result = congruence.token_to_neurons(model, token_id, args.matrix, args.top_k)
        rows = [{"layer": r.layer, "neuron": r.neuron, "token": args.token, "id": token_id, "congruence": r.congruence}
                for r in result.top.itertuples()]
        out.update(token={"token": args.token, "id": token_id}, results=rows,
                   per_layer=result.per_layer.to_dict("records"),
                   token_rank_for_top_neuron=result.token_rank_for_top_neuron)
        if not args.json:
            print(f"{args.token!r} (id {token_id}) · {args.matrix}")
            _print_table("most congruent neurons", result.top)
    return out


def cmd_search(args: argparse.Namespace) -> dict:
    from core import congruence, search

    model = _load(args)
    progress = _tqdm_progress("congruence blocks") if not args.json else None
    if args.ray:
        from core import distributed

        search.check_kind_and_top_k(model, args.kind, args.top_k)
        tables = distributed.ray_tables(model, args.matrix, args.workers, args.ray_address, progress=progress)
        frame = (search.standout if args.kind == "standout" else search.mutual)(model, tables, args.top_k)
    else:
        frame = search.search(model, args.kind, args.matrix, args.top_k, progress)
    if not args.json:
        _print_table(f"{args.kind} search, {args.matrix}", frame)
    return {"model": model.facts(), **congruence.describe(model, args.matrix), "kind": args.kind,
            "score": "gap_neuron (token's top-1 − top-2 neuron)" if args.kind == "standout"
            else "gap_token × gap_neuron (neuron's top-2 token gap × token's top-2 neuron gap)",
            "results": frame[["layer", "neuron", "token", "id", "congruence", "score", "gap_token",
                              "gap_neuron"]].to_dict("records")}


def cmd_scan(args: argparse.Namespace) -> dict:
    from core import congruence, scan, tokens

    model = _load(args)
    neurons = [congruence.parse_neuron(model, part) for part in args.neurons.split(",") if part.strip()]
    target = tokens.single_token(model, args.target, "target")
    if args.ray:
        from core import distributed

        result = distributed.ray_scan(model, args.dataset, neurons, target, args.max_tokens, args.bin_width,
                                      args.top_k, workers=args.workers, address=args.ray_address,
                                      progress=_tqdm_progress("tokens scanned"))
    else:
        result = scan.scan(model, args.dataset, neurons, target, args.max_tokens, args.bin_width, args.top_k,
                           progress=_tqdm_progress("tokens scanned"))
    if not args.json:
        print(f"{result.positions} positions of {result.corpus}; target {args.target!r}")
        for name, s in result.neurons.items():
            print(f"\n{name}: {s.totals}; correlation {s.correlation}")
            _print_table("activation bins", s.bins)
            examples = s.examples.assign(context=["".join(t) for t in s.examples.tokens])
            _print_table("max-activating examples", examples[["activation", "doc", "position", "context"]])
    return {"model": model.facts(), **result.to_json()}


def cmd_reproduce(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from tqdm import tqdm

    from core import reproduce

    model = _load(args)
    bar = tqdm(total=len(reproduce.STEPS), desc="reproduce", file=sys.stderr, leave=False)

    def progress(done: int, total: int, name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(done - bar.n)

    try:
        results = reproduce.run(model, args.dataset, args.corpus_tokens, progress)
    finally:
        bar.close()
    written = reproduce.write(to_jsonable(results), Path(args.out))
    if not args.json:
        for row in results["verdicts"]:
            print(f"{row['verdict']:>12}  {row['quantity']}: measured {row['measured']}, expected {row['expected']}")
        print("wrote " + ", ".join(str(p) for p in written.values()))
    return {"written": {k: str(v) for k, v in written.items()}, "verdicts": results["verdicts"]}


def _tqdm_progress(description: str):
    """A progress callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


COMMANDS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "predict": cmd_predict,
    "lens": cmd_lens,
    "patch": cmd_patch,
    "congruence": cmd_congruence,
    "search": cmd_search,
    "scan": cmd_scan,
    "reproduce": cmd_reproduce,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse already printed one line (or --help); hand back its status
        return int(done.code or 0)
    try:
        result = COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        try:
            json.dump(to_jsonable(result), sys.stdout, ensure_ascii=False)
            print()
        except BrokenPipeError:  # `… --json | head` closed the pipe: not an error of ours
            sys.stderr.close()
    return 0
