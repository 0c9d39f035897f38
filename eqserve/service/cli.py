"""The `eqserve` command: serve, solve, complete, models, train, eval."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eqserve.models.builtin import TRAINERS
from eqserve.models.looped import CRITERIA
from eqserve.models.registry import load_model
from eqserve.service import config
from eqserve.service.client import DEFAULT_URL

PROGRESS_EVERY_S = 0.1
"""How often `eqserve solve --stream` redraws its progress line."""


def _serve(args: argparse.Namespace) -> int:
    settings = config.load(args)
    if settings.api_workers > 1:  # before prometheus_client is imported: its values live in shared files
        from eqserve.service.fronts import share_metrics

        share_metrics()
    from eqserve.service.app import create_app
    from eqserve.service.drain import DrainingServer
    from eqserve.service.server import listen, uvicorn_config

    app = create_app(settings)
    app.state.eq.load_all()  # a model that cannot load is an error line and exit 2, before anything listens
    server = DrainingServer(uvicorn_config(app, settings.host, settings.port, settings.log_level))
    shared = settings.api_workers > 1
    server.run(sockets=[listen(settings.host, settings.port, settings.send_buffer, shared)])
    return 0


def _read_input(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    return json.loads(raw)


def _solve(args: argparse.Namespace) -> int:
    from eqserve.service.client import Client, EqserveError

    options = {
        "max_iters": args.max_iters,
        "tol": args.tol,
        "method": args.method,
        "stop_mode": args.stop_mode,
    }
    with Client(args.url, api_key=args.api_key) as client:
        try:
            if args.stream:
                result = _stream_with_progress(
                    client, args.model, _read_input(args.input), args.every, options
                )
            else:
                result = client.solve(args.model, _read_input(args.input), **options)
        except EqserveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result))
    return 0


def _stream_with_progress(client: Any, model: str, inp: dict[str, Any], every: int, options: dict) -> dict:
    """Stream a solve, redrawing one progress line on stderr; return the result event."""
    start = shown = time.perf_counter()
    with client.stream(model, inp, every=every, **options) as stream:
        for event in stream:
            now = time.perf_counter()
            if event["type"] == "iterate" and now - shown >= PROGRESS_EVERY_S:
                shown = now
                residual = event["residual"] if event["residual"] is not None else float("nan")
                rate = event["t"] / (now - start)
                line = f"\r  t={event['t']:>7}  residual={residual:.3e}  {rate:,.0f} it/s "
                print(line, end="", file=sys.stderr, flush=True)
        result = stream.result
    assert result is not None
    t = result["timing"]
    print(
        f"\n  {result['status']} after {result['iterations']} iterations, residual {result['residual']}, "
        f"{t['solve_ms']:.1f} ms solving ({t['per_iter_us']:.0f} µs/iteration), {result['dropped']} dropped",
        file=sys.stderr,
    )
    return result


def _complete(args: argparse.Namespace) -> int:
    from eqserve.service.client import Client, EqserveError

    options = {
        "max_tokens": args.max_tokens,
        "max_iters": args.max_iters,
        "criterion": args.criterion,
        "threshold": args.threshold,
        "temperature": args.temperature,
        "per_token": True,
    }
    with Client(args.url, api_key=args.api_key) as client:
        try:
            if not args.stream:
                print(json.dumps(client.complete(args.model, args.prompt, **options)))
                return 0
            with client.complete_stream(args.model, args.prompt, **options) as stream:
                shade = _shader(sys.stdout.isatty(), options["max_iters"])
                for event in stream:
                    if event["type"] == "token":
                        print(shade(event["text"], event["iterations"]), end="", flush=True)
                result = stream.result
        except EqserveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    assert result is not None
    rec = result["usage"]["recurrence"]
    print(
        f"\n  {result['choices'][0]['finish_reason']}: {result['usage']['completion_tokens']} tokens, "
        f"iterations per token {rec['per_token']} (mean {rec['mean']:.1f})",
        file=sys.stderr,
    )
    return 0


def _shader(tty: bool, cap: int | None) -> Any:
    """How a streamed token is printed: on a terminal, on a background from light (few iterations) to
    dark (many, up to `cap` or 64); elsewhere as it is."""
    top = cap or 64

    def shade(text: str, iterations: int) -> str:
        if not tty:
            return text
        level = 255 - round(min(iterations, top) / top * 20)  # 256-colour greys: 255 light … 235 dark
        fg = 16 if level > 245 else 231
        return f"\x1b[48;5;{level}m\x1b[38;5;{fg}m{text}\x1b[0m"

    return shade


def _models(args: argparse.Namespace) -> int:
    from eqserve.service.client import Client

    with Client(args.url, api_key=args.api_key) as client:
        for m in client.models():
            d = m["defaults"]["budget"]
            print(f"{m['name']:<12} max_iters={d['max_iters']:<6} tol={d['tol']:<8g} {m['description']}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from eqserve.service.client import Client, EqserveError

    options: dict[str, Any] = {"iters": [int(s) for s in args.iters.split(",") if s.strip()]}
    options |= {"pairs": args.pairs, "delta": args.delta}
    if args.inputs:
        options["inputs"] = _read_input(args.inputs)
    with Client(args.url, api_key=args.api_key) as client:
        try:
            result = client.analyze(args.model, **options)
        except EqserveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.plot:
        _plot_analysis(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']}: {result['inputs']} input(s), {result['pairs']} perturbed pair(s) each")
    print(f"{'t':>6}  {'L_t':>10}  {'E_t':>10}")
    errors = result["error"] or [None] * len(result["t"])
    for t, lip, err in zip(result["t"], result["lipschitz"], errors, strict=True):
        print(f"{t:>6}  {_num(lip):>10}  {_num(err):>10}")
    return 0


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _plot_analysis(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'eqserve[bench]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(result["t"], result["lipschitz"], "o-", label="L_t (empirical Lipschitz)")
    if result["error"] is not None:
        ax.plot(result["t"], result["error"], "s-", label="E_t (error)")
    ax.set(xscale="log", yscale="log", xlabel="t (iterations)", title=f"{result['model']}: the t-step map")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _check(args: argparse.Namespace) -> int:
    import torch

    from eqserve.models.check import check_model

    torch.set_num_threads(1)  # as `eqserve serve` runs a model by default (--torch-threads 1)
    model = load_model(args.spec, args.device)  # a ModelLoadError (a ValueError) names the problem
    report = check_model(model)
    print(report.render())
    return 0 if report.ok else 1


def _train(args: argparse.Namespace) -> int:
    given = {"epochs": args.epochs, "seed": args.seed, "out_dir": args.out, "emb": args.emb}
    given["n_train"] = args.samples
    extra = {k: v for k, v in given.items() if v is not None}
    if args.explicit:
        extra["explicit"] = True
    try:
        summary = TRAINERS[args.model](**extra)
    except ValueError as exc:  # an option this model's trainer does not take, or a value it refuses
        print(f"error: eqserve train {args.model}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    iters = [int(s) for s in args.iters.split(",") if s.strip()]
    try:
        report = load_model(args.model).evaluate(iters)
    except NotImplementedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Every field of the report (a model's report may add per-t series such as psnr), None left out.
    out = {k: v for k, v in dataclasses.asdict(report).items() if v is not None}
    if args.json:
        print(json.dumps(out))
        return 0
    series = [k for k, v in out.items() if k != "t" and isinstance(v, list) and len(v) == len(report.t)]
    print(f"{report.model}: {report.metric} on the held-out set ({report.params:,} parameters)")
    print(f"{'t':>6}" + "".join(f"  {k:>10}" for k in series))
    for i, t in enumerate(report.t):
        print(f"{t:>6}" + "".join(f"  {out[k][i]:>10.4g}" for k in series))
    if report.baseline is not None:
        b = report.baseline
        print(f"baseline {b['name']} ({b['params']:,} parameters): {b['error']:.4g}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="eqserve", description="Serve implicit (fixed-point) models.")
    sub = p.add_subparsers(dest="command", required=True)

    spec_help = "an installed model's name, a model directory, or package.module:attr"
    serve = sub.add_parser("serve", help="serve the given models (default: every installed one)")
    serve.add_argument("specs", nargs="*", metavar="SPEC", help=spec_help)
    config.add_arguments(serve)
    serve.set_defaults(func=_serve)

    analyze = sub.add_parser("analyze", help="E_t and L_t of a served model's t-step map")
    analyze.add_argument("model")
    analyze.add_argument("--iters", default="1,2,4,8,16,32,64")
    analyze.add_argument("--inputs", help="JSON list of {input, reference?}, or @file (default: the example)")
    analyze.add_argument("--pairs", type=int, default=2, help="perturbed copies of each input")
    analyze.add_argument("--delta", type=float, default=1e-3, help="size of each perturbation")
    analyze.add_argument("--plot", type=Path, help="write a PNG of L_t and E_t against t")
    analyze.add_argument("--json", action="store_true", help="print one JSON line")
    analyze.add_argument("--url", default=DEFAULT_URL)
    analyze.add_argument("--api-key", default=os.environ.get("EQSERVE_API_KEY"), help="[EQSERVE_API_KEY]")
    analyze.set_defaults(func=_analyze)

    check = sub.add_parser("check", help="load a model and check its contract on its example input")
    check.add_argument("spec", metavar="SPEC", help=spec_help)
    check.add_argument("--device", default="cpu")
    check.set_defaults(func=_check)

    solve = sub.add_parser("solve", help="solve one request on a running server")
    solve.add_argument("model")
    solve.add_argument("--input", required=True, help="the input as JSON, or @file")
    solve.add_argument("--max-iters", type=int)
    solve.add_argument("--tol", type=float)
    solve.add_argument("--stop-mode", choices=["abs", "rel"])
    solve.add_argument("--method", choices=["picard", "anderson"])
    solve.add_argument("--stream", action="store_true", help="stream iterates with a live progress line")
    solve.add_argument("--every", type=int, default=1, help="with --stream: an event every N iterations")
    solve.add_argument("--url", default=DEFAULT_URL)
    solve.add_argument("--api-key", default=os.environ.get("EQSERVE_API_KEY"), help="[EQSERVE_API_KEY]")
    solve.set_defaults(func=_solve)

    complete = sub.add_parser("complete", help="complete a prompt with a looped LM on a running server")
    complete.add_argument("model")
    complete.add_argument("prompt")
    complete.add_argument("--max-tokens", type=int)
    complete.add_argument("--max-iters", type=int, help="recurrence steps per token at most")
    complete.add_argument("--criterion", choices=list(CRITERIA), help="the per-token exit rule")
    complete.add_argument("--threshold", type=float, help="the exit rule's threshold")
    complete.add_argument("--temperature", type=float)
    complete.add_argument(
        "--stream", action="store_true", help="print tokens as they come, shaded by their iterations"
    )
    complete.add_argument("--url", default=DEFAULT_URL)
    complete.add_argument("--api-key", default=os.environ.get("EQSERVE_API_KEY"), help="[EQSERVE_API_KEY]")
    complete.set_defaults(func=_complete)

    models = sub.add_parser("models", help="list the models of a running server")
    models.add_argument("--url", default=DEFAULT_URL)
    models.add_argument("--api-key", default=os.environ.get("EQSERVE_API_KEY"), help="[EQSERVE_API_KEY]")
    models.set_defaults(func=_models)

    train = sub.add_parser("train", help="train a built-in model and write its weights")
    train.add_argument("model", choices=list(TRAINERS))
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--out", type=Path, help="where to write the weights (default: the shipped ones)")
    train.add_argument("--emb", type=int, help="lp-gnn: embedding size d")
    train.add_argument("--samples", type=int, help="deq-mlp, lp-gnn, ns-fno: training-set size")
    train.add_argument("--explicit", action="store_true", help="lp-gnn: train the explicit GNN instead")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="error on the held-out set after each number of iterations")
    ev.add_argument("model", metavar="SPEC", help="a model that ships a held-out set (e.g. deq-mlp)")
    ev.add_argument("--iters", default="1,2,4,8,16,32,64")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `eqserve` console script."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
