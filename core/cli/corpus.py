"""Commands over a corpus: scan, dashboards build, examples."""

from __future__ import annotations

import argparse
import time

from core import story
from core.cli.common import Command, Parser, load, model_flags, positive_int, print_table, progress_bar, ray_flags
from core.corpus.dashboards import TOP_K as DASHBOARD_TOP_K
from core.corpus.dashboards import DashboardSpec as _Spec
from core.errors import UserError

DASHBOARD_TOKENS = _Spec.max_tokens


def scan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        "--dataset",
        dest="dataset",
        default="bundled",
        help="'bundled' (State of the Union 1981-2021), a file/folder, "
        "or a hub dataset name such as NeelNanda/pile-10k",
    )
    p.add_argument("--neurons", required=True, help="comma-separated, e.g. L25.N1527,L27.N554")
    p.add_argument("--target", default=story.ANSWER, help="target token with its leading space")
    p.add_argument("--max-tokens", type=positive_int, default=20_000)
    p.add_argument("--bin-width", type=float, default=0.5)
    p.add_argument(
        "--spread",
        action="store_true",
        help="contexts spread evenly over the corpus (as dashboards and pairs read it), not its first tokens",
    )
    p.add_argument("--top-k", type=positive_int, default=10, help="max-activating examples per neuron")
    ray_flags(p)


def dashboards_arguments(p: argparse.ArgumentParser) -> None:
    inner = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    b = inner.add_parser("build", help="build the dashboards of every neuron in one pass over a corpus")
    model_flags(b)
    b.add_argument("--corpus", default=None, help="brown (default when installed), bundled, a file/folder, a hub name")
    b.add_argument("--max-tokens", type=positive_int, default=DASHBOARD_TOKENS, help="positions read")
    b.add_argument("--top-k", type=positive_int, default=DASHBOARD_TOP_K, help="examples kept per neuron")
    b.add_argument("--ray", default=None, metavar="ADDRESS", help="run the parts on Ray: 'local' or a cluster")


def examples_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neuron", required=True, help="L25.N1527")
    p.add_argument("--corpus", default=None)
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="the build's token budget (default: the largest built for the model and corpus)",
    )
    p.add_argument("--top-k", type=positive_int, default=None, help="examples shown (default: all kept)")


def cmd_scan(args: argparse.Namespace) -> dict:
    from core.analyses import congruence
    from core.corpus import scan
    from core.engine import tokens

    model = load(args)
    neurons = [congruence.parse_neuron(model, part) for part in args.neurons.split(",") if part.strip()]
    spec = scan.ScanSpec(
        tuple(neurons),
        tokens.single_token(model, args.target, "target"),
        args.dataset,
        max_tokens=args.max_tokens,
        bin_width=args.bin_width,
        top_examples=args.top_k,
        spread=args.spread,
    )
    if args.ray:
        from core.corpus import distributed

        result = distributed.ray_scan(
            model, spec, workers=args.workers, address=args.ray_address, progress=progress_bar("tokens scanned")
        )
    else:
        result = scan.scan(model, spec, progress=progress_bar("tokens scanned"))
    if not args.json:
        print(f"{result.positions} positions of {result.corpus}; target {args.target!r}")
        for name, s in result.neurons.items():
            print(f"\n{name}: {s.totals}; correlation {s.correlation}")
            print_table("activation bins", s.bins)
            examples = s.examples.assign(context=["".join(t) for t in s.examples.tokens])
            print_table("max-activating examples", examples[["activation", "doc", "position", "context"]])
    return {"model": model.facts(), **result.to_json()}


def cmd_dashboards(args: argparse.Namespace) -> dict:
    from core.corpus.dashboards import DashboardSpec, build

    model = load(args)
    spec = DashboardSpec(args.corpus, args.max_tokens, args.top_k)
    started = time.perf_counter()
    dash = build(model, spec, None if args.json else progress_bar("dashboards", unit="tok"), ray_address=args.ray)
    seconds = time.perf_counter() - started
    if not args.json:
        print(
            f"dashboards of {model.n_layers * model.d_mlp:,} neurons of {model.name} over {dash.positions:,} "
            f"positions of {dash.settings['corpus']} ({dash.settings['documents']} documents) in {seconds:.1f} s"
        )
    return {"model": model.facts(), "settings": dash.settings, "seconds": seconds}


def cmd_examples(args: argparse.Namespace) -> dict:
    from core.analyses.congruence import parse_neuron
    from core.corpus.dashboards import DashboardSpec, build, find_built, is_built, neuron_view, plan

    model = load(args)
    layer, neuron = parse_neuron(model, args.neuron)
    if args.max_tokens is None:  # the largest dashboards built for this model and corpus
        found = find_built(model, args.corpus)
        if found is None:
            dataset = plan(model, DashboardSpec(args.corpus), contexts=False).spec.dataset
            raise UserError(
                f"no dashboards built for {model.name} on {dataset}; run: python -m core dashboards build "
                f"--model {model.name} --corpus {dataset}"
            )
        spec = found
    else:
        spec = DashboardSpec(args.corpus, args.max_tokens)
        work = plan(model, spec, contexts=False)
        if not is_built(model, spec):
            raise UserError(
                f"no dashboards built for {model.name} on {work.spec.dataset} with {work.spec.max_tokens:,} tokens; "
                f"run: python -m core dashboards build --model {model.name} --corpus {work.spec.dataset} "
                f"--max-tokens {work.spec.max_tokens} (or leave out --max-tokens to read the largest built)"
            )
    view = neuron_view(model, build(model, spec), layer, neuron, args.top_k)
    if not args.json:
        print(
            f"{view['neuron']} on {view['corpus']}: density {view['density']['share']:.3%} "
            f"at ≥ {view['density']['threshold']:.2f}"
        )
        for ex in view["examples"]:
            text = "".join(ex["context"]["tokens"]).replace("\n", " ")
            print(
                f"{ex['activation']:+7.2f}  {ex['title'][:30]:30s} {ex['token']!r:>12} → {ex['prediction']!r:10} {text}"
            )
    return view


COMMANDS = [
    Command(
        "scan",
        "corpus scan: activation bins vs top-1 share, totals, max-activating examples",
        scan_arguments,
        cmd_scan,
    ),
    # `dashboards build` carries the model flags on its own sub-command
    Command(
        "dashboards",
        "every neuron's max-activating examples and activation profile",
        dashboards_arguments,
        cmd_dashboards,
        model_flags=False,
    ),
    Command("examples", "a neuron's max-activating examples from built dashboards", examples_arguments, cmd_examples),
]
