"""`python -m core …`: every analysis headless, a table by default, JSON with --json.

Bad input answers with one line `error: …` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import pandas as pd

from core import post
from core.congruence import MATRICES
from core.errors import UserError
from core.jsonable import to_jsonable
from core.model import EMBEDDED, PROCESSINGS
from core.patching import ABLATIONS
from core.search import KINDS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's default prints usage too)
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
    parser.add_argument("--model", default=EMBEDDED, help=f"{EMBEDDED} (embedded), gpt2…gpt2-xl, or a local folder")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--processing",
        default="tl-default",
        choices=PROCESSINGS,
        help="tl-default: fold_ln + centring, as the post; none: raw weights",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _answer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answer", default=post.ANSWER, help="answer token with its leading space")
    parser.add_argument("--wrong", default=post.WRONG, help="the alternative token")


def _ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", action="store_true", help="run on Ray (optional extra, requirements-scale.txt)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray workers (local instance: CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Token Neuron Explorer, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("predict", help="top-k next tokens of a prompt")
    _common(p)
    p.add_argument("--prompt", default=post.CLEAN)
    p.add_argument("--top-k", type=positive_int, default=10)

    p = sub.add_parser("lens", help="logit lens and direct logit attribution of answer − wrong")
    _common(p)
    p.add_argument("--prompt", default=post.CLEAN)
    _answer_flags(p)

    p = sub.add_parser("patch", help="activation patching: layers × positions, heads, or every neuron of a layer")
    _common(p)
    p.add_argument("--clean", default=post.CLEAN)
    p.add_argument("--corrupted", default=post.CORRUPTED)
    _answer_flags(p)
    p.add_argument(
        "--level",
        choices=["layers", "heads", "neurons", "all-neurons"],
        default="layers",
        help="all-neurons: every neuron of every layer (attribution patching, then exact on the top-k)",
    )
    p.add_argument(
        "--method",
        choices=["attribution", "exact-topk"],
        default="exact-topk",
        help="for --level all-neurons: attribution only, or attribution + exact patching of the top-k",
    )
    p.add_argument("--layer", type=layer_int, help="MLP layer for --level neurons (default: the standout late layer)")
    p.add_argument("--top-k", type=positive_int, help="neurons to list (default: all in JSON, 20 in tables)")
    p.add_argument("--ablation", choices=ABLATIONS, default="clean")
    p.add_argument(
        "--screen",
        action="store_true",
        help="full neuron sweeps (--level neurons, all-neurons) screened in bfloat16 where that is faster here, "
        "their top rows recomputed in fp32 (the Patching page does this); default: every row fp32",
    )

    p = sub.add_parser("congruence", help="neuron → tokens (--neuron) or token → neurons (--token): W_out · u_t")
    _common(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--neuron", help="L31.N892 or 31.892")
    target.add_argument("--token", help="a token with its leading space, e.g. ' an'")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=MATRICES, default="W_U", help="W_U: unembedding; W_E: embedding (post's code)")

    p = sub.add_parser("drivers", help="what drives a neuron: its input split over upstream components, path patching")
    _common(p)
    p.add_argument("--neuron", required=True, help="L25.N1527 or 25.1527")
    p.add_argument("--prompt", default=None, help="the prompt to decompose on (default: --clean, else the post's)")
    p.add_argument("--position", type=int, default=None, help="absolute position (default: the last; -1 = last)")
    p.add_argument("--clean", default=None, help="with --corrupted: path patching of every upstream component")
    p.add_argument("--corrupted", default=None)
    _answer_flags(p)
    p.add_argument("--top-k", type=positive_int, help="components to list (default: all in JSON, 15 in tables)")
    p.add_argument("--reads-from", type=int, default=3, help="also where the top N heads read from (0: none)")

    p = sub.add_parser("attention", help="one head's attention pattern (query × key) on a prompt")
    _common(p)
    p.add_argument("--layer", type=layer_int, required=True)
    p.add_argument("--head", type=layer_int, required=True)
    p.add_argument("--prompt", default=post.CLEAN)

    p = sub.add_parser("search", help="stand-out or mutual-exclusive token-neuron pairs over all neurons × tokens")
    _common(p)
    p.add_argument("--kind", choices=KINDS, default="mutual")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=MATRICES, default="W_U")
    _ray_flags(p)

    p = sub.add_parser("atlas", help="every neuron classified by its vocabulary composition (moments, classes)")
    _common(p)
    p.add_argument("--layers", default=None, help="an inclusive layer range, e.g. 20-29 (default: all layers)")
    p.add_argument("--top-k", type=positive_int, default=None, help="neurons to list, by kurtosis (default: all)")

    from core import dashboards

    dashboards.add_parsers(sub, _common, positive_int)

    p = sub.add_parser("scan", help="corpus scan: activation bins vs top-1 share, totals, max-activating examples")
    _common(p)
    p.add_argument(
        "--dataset",
        default="bundled",
        help="'bundled' (State of the Union 1981-2021), a file/folder, "
        "or a hub dataset name such as NeelNanda/pile-10k",
    )
    p.add_argument("--neurons", required=True, help="comma-separated, e.g. L25.N1527,L27.N554")
    p.add_argument("--target", default=post.ANSWER, help="target token with its leading space")
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

    shown_frame = frame.assign(
        **{
            c: frame[c].map(lambda t: shown(t) if isinstance(t, str) else t)
            for c in TOKEN_COLUMNS
            if c in frame.columns
        }
    )
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
    return {
        "model": model.facts(),
        "token_ids": prompt.ids,
        "tokens": prompt.pieces,
        "top": top[["token", "id", "prob", "logit"]].to_dict("records"),
    }


def cmd_lens(args: argparse.Namespace) -> dict:
    from core import lens, predict, tokens

    model = _load(args)
    prompt = tokens.prompt(model, args.prompt)
    answer, wrong = tokens.single_token(model, args.answer, "answer"), tokens.single_token(model, args.wrong, "wrong")
    result = lens.logit_lens(model, prompt, answer, wrong)
    top = predict.top_k(model, predict.last_logits(model, prompt), 10)  # as many as the Logit lens page shows
    if not args.json:
        print(f"{model.name}: logit diff {args.answer!r} − {args.wrong!r} = {result.logit_diff:.4f}")
        _print_table("logit lens (residual after each sublayer, through the final norm)", result.layers)
        by_size = result.components.logit_diff.abs().sort_values(ascending=False).index
        _print_table("direct logit attribution, top 10 by |value|", result.components.reindex(by_size).head(10))
    # the same JSON as the Logit lens page's download (tests/test_app.py checks)
    return {"model": model.facts(), **result.to_json(), "top": to_jsonable(top)}


def cmd_patch(args: argparse.Namespace) -> dict:
    from core import patching, tokens

    model = _load(args)
    clean, corrupted = tokens.pair(model, args.clean, args.corrupted)
    answer, wrong = tokens.single_token(model, args.answer, "answer"), tokens.single_token(model, args.wrong, "wrong")
    if args.layer is not None:
        patching.check_layer(model, args.layer)
    setup = patching.prepare(model, clean, corrupted, answer, wrong, args.ablation)
    out: dict[str, Any] = {"model": model.facts(), **setup.to_json()}
    if not args.json:
        print(
            f"{model.name}: clean logit diff {setup.clean_logit_diff:.4f}, corrupted {setup.corrupted_logit_diff:.4f}; "
            f"{out['score']}"
        )
    if args.level == "layers":
        result = patching.patch_layers(setup)
        out.update(result.to_json())
        if not args.json:
            totals = pd.DataFrame({"layer": range(model.n_layers), **result.all_positions})
            _print_table("all-positions score per layer", totals)
    elif args.level == "heads":
        heads = patching.patch_heads(setup, per_position=True)
        out.update(heads.to_json())
        if not args.json:
            flat = pd.DataFrame(
                [
                    (layer, h, float(heads.all_positions[layer, h]))
                    for layer in range(model.n_layers)
                    for h in range(model.n_heads)
                ],
                columns=["layer", "head", "score"],
            )
            _print_table("top heads (all positions)", flat.sort_values("score", ascending=False).head(10))
    elif args.level == "all-neurons":
        out.update(_all_neurons(args, setup))
    else:
        layer = args.layer
        if layer is None:
            layer = patching.standout_mlp_layer(patching.patch_layers(setup))
        sweep = patching.patch_neurons(setup, layer, screen=args.screen)
        top_k = args.top_k or (None if args.json else 20)  # JSON: every neuron unless --top-k
        if not args.json:
            print(f"layer {layer}: whole-layer score {sweep.layer_score:.4f}")
            _print_table("top neurons", sweep.frame(top_k))
        out.update(layer_choice="user" if args.layer is not None else "standout", **sweep.to_json(top_k))
    return out


def _all_neurons(args: argparse.Namespace, setup) -> dict:
    """--level all-neurons: attribution over every neuron of every layer, then (exact-topk) exact patching."""
    from core import attribution

    approx = attribution.attribute(setup)
    top_k = args.top_k or 50
    out: dict[str, Any] = {"caveat": attribution.CAVEAT, "method": args.method}
    if not args.json:
        print(attribution.CAVEAT)
    if args.method == "exact-topk":
        found = attribution.find_top_neurons(setup, approx, top_k, screen=args.screen)
        frame = found.table
        out.update(found.to_json())
        out["neurons"] = to_jsonable(frame[["layer", "neuron", "exact", "attribution", "source", "disagree"]])
        if not args.json:
            print(found.rule())
            best = found.best
            print(f"top neuron anywhere (exact): {best.label} {best.exact:.4f} (attribution {best.attribution:.4f})")
            _print_table("verified candidates, by exact score", frame.head(top_k))
    else:
        frame = attribution.top_neurons(setup.model, approx, top_k)
        out["neurons"] = to_jsonable(frame[["layer", "neuron", "attribution", "exact"]])  # exact: null
        if not args.json:
            _print_table(f"top {top_k} neurons of all layers by attribution (not verified)", frame)
    return out


def cmd_congruence(args: argparse.Namespace) -> dict:
    from core import congruence, tokens

    model = _load(args)
    out = {"model": model.facts(), **congruence.describe(model, args.matrix)}
    if args.neuron is not None:
        layer, neuron = congruence.parse_neuron(model, args.neuron)
        by_neuron = congruence.neuron_to_tokens(model, layer, neuron, args.matrix, args.top_k)
        if not args.json:
            print(
                f"{congruence.label(layer, neuron)} · {args.matrix}; its top token ranks "
                f"#{by_neuron.top_token_rank_among_neurons} among all neurons for that token"
            )
            _print_table("most congruent tokens", by_neuron.top)
            _print_table("least congruent tokens", by_neuron.bottom)
        return {**out, **by_neuron.to_json()}
    by_token = congruence.token_to_neurons(model, tokens.single_token(model, args.token), args.matrix, args.top_k)
    if not args.json:
        print(f"{args.token!r} (id {by_token.token_id}) · {args.matrix}")
        _print_table("most congruent neurons", by_token.top)
    return {**out, **by_token.to_json()}


def cmd_drivers(args: argparse.Namespace) -> dict:
    from core import congruence, drivers, tokens

    model = _load(args)
    layer, neuron = congruence.parse_neuron(model, args.neuron)
    if (args.clean is None) != (args.corrupted is None):
        raise UserError("give both --clean and --corrupted for path patching, or neither")
    pair = None
    if args.clean is not None:
        clean, corrupted = tokens.pair(model, args.clean, args.corrupted)
        answer = tokens.single_token(model, args.answer, "answer")
        wrong = tokens.single_token(model, args.wrong, "wrong")
        pair = (clean, corrupted, answer, wrong)
    text = args.prompt if args.prompt is not None else (args.clean if args.clean is not None else post.CLEAN)
    prompt = tokens.prompt(model, text)
    if args.reads_from < 0:
        raise UserError(f"--reads-from {args.reads_from} must be 0 or more")
    result = drivers.drivers(model, prompt, layer, neuron, args.position, pair, reads_from_heads=args.reads_from)
    if not args.json:
        keys = " ".join(f"{k} {v:+.4f}" for k, v in result.inputs.items())
        print(
            f"{result.label()} at position {result.position} ({tokens.shown(prompt.pieces[result.position])}): "
            f"{keys}; activation {result.post_activation:+.4f}; input norm scale {result.norm_scale:.4f} (frozen)"
        )
        _print_table("upstream components, by |first-order share|", result.top(args.top_k or 15))
        if result.path_patching is not None:
            facts = result.pair or {}
            print(
                f"\nactivation clean {facts['clean_activation']:+.4f}, corrupted {facts['corrupted_activation']:+.4f}"
            )
            frame = result.path_patching.drop(columns=["patched_activation"])
            _print_table("path patching into the neuron, by neuron_restored", frame.head(args.top_k or 15))
        for name, frame in result.reads_from.items():
            _print_table(
                f"{name} reads from (position {result.position})", frame.sort_values("attention").iloc[::-1].head(5)
            )
    return {"model": model.facts(), **result.to_json(args.top_k)}


def cmd_attention(args: argparse.Namespace) -> dict:
    from core import drivers, tokens

    model = _load(args)
    prompt = tokens.prompt(model, args.prompt)
    result = drivers.attention_pattern(model, prompt, args.layer, args.head)
    if not args.json:
        frame = pd.DataFrame(result.pattern, columns=[tokens.shown(t) for t in prompt.pieces])
        frame.insert(0, "query", [tokens.shown(t) for t in prompt.pieces])
        print(f"{result.label()} on {len(prompt.ids)} tokens; {model.bos_convention()}")
        print(frame.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return {"model": model.facts(), **result.to_json()}


def cmd_search(args: argparse.Namespace) -> dict:
    from core import congruence, search

    model = _load(args)
    progress = _tqdm_progress("congruence blocks") if not args.json else None
    kind = search.check_kind_and_top_k(model, args.kind, args.top_k)
    if args.ray:
        from core import distributed

        tables = distributed.ray_tables(model, args.matrix, args.workers, args.ray_address, progress=progress)
        frame = search.ranked(model, kind, tables, args.top_k)
    else:
        frame = search.search(model, kind, args.matrix, args.top_k, progress)
    if not args.json:
        _print_table(f"{args.kind} search, {args.matrix}", frame)
    return {"model": model.facts(), **congruence.describe(model, args.matrix), **search.to_json(kind, frame)}


def cmd_scan(args: argparse.Namespace) -> dict:
    from core import congruence, scan, tokens

    model = _load(args)
    neurons = [congruence.parse_neuron(model, part) for part in args.neurons.split(",") if part.strip()]
    spec = scan.ScanSpec(
        tuple(neurons),
        tokens.single_token(model, args.target, "target"),
        args.dataset,
        max_tokens=args.max_tokens,
        bin_width=args.bin_width,
        top_examples=args.top_k,
    )
    if args.ray:
        from core import distributed

        result = distributed.ray_scan(
            model, spec, workers=args.workers, address=args.ray_address, progress=_tqdm_progress("tokens scanned")
        )
    else:
        result = scan.scan(model, spec, progress=_tqdm_progress("tokens scanned"))
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
    "drivers": cmd_drivers,
    "attention": cmd_attention,
    "search": cmd_search,
    "scan": cmd_scan,
    "reproduce": cmd_reproduce,
}


def cmd_atlas(args: argparse.Namespace) -> dict:
    from core import atlas

    model = _load(args)
    atlas.check_layers(model, args.layers)
    result = atlas.atlas(model, args.layers, _tqdm_progress("atlas blocks") if not args.json else None)
    if not args.json:
        columns = ["name", "kurtosis", "skew", "std", "null_space_share", "gap", "classes", "label", "top_token"]
        _print_table(f"atlas of {model.name}, by kurtosis", result.ranked(args.top_k or 20)[columns])
        print(pd.DataFrame(result.counts(), index=range(result.layers[0], result.layers[1] + 1)).to_string())
    return {"facts": model.facts(), **result.to_json(args.top_k)}


COMMANDS["atlas"] = cmd_atlas


def cmd_dashboards(args: argparse.Namespace) -> dict:
    from core import dashboards

    return dashboards.cmd_dashboards(args, _load(args))


def cmd_examples(args: argparse.Namespace) -> dict:
    from core import dashboards

    return dashboards.cmd_examples(args, _load(args))


COMMANDS["dashboards"] = cmd_dashboards
COMMANDS["examples"] = cmd_examples


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
