"""`mplstm predict`: send one multi-view clip to a running service and print the predictions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="ask a running `mplstm serve` for predictions on one multi-view clip",
        description="POST the views of one clip to /v1/predict and print the top labels.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument(
        "--view",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="one view: its name in the model and its video file (repeat per view)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")
    parser.add_argument(
        "--no-camera-checks",
        action="store_true",
        help="ask the service not to check the cameras of this clip (?camera_checks=off)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("MPLSTM_API_KEY"), help="API key (or MPLSTM_API_KEY)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.set_defaults(func=run)


def parse_views(items: list[str], files: bool = True) -> dict[str, Path]:
    """NAME=FILE arguments -> {name: path}; CommandError on a malformed or repeated one.

    files=False: a SOURCE may also be a device or a URL (`mplstm stream`).
    """
    from mplstm.cli import CommandError

    views: dict[str, Path] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise CommandError(f"--view takes NAME=FILE, got {item!r}")
        if name in views:
            raise CommandError(f"view {name!r} given twice")
        path = Path(file)
        if files and not path.is_file():
            raise CommandError(f"view {name!r}: {path} is not a file")
        views[name] = path
    return views


def format_table(answer: dict) -> str:
    """The predictions as an aligned table, with the model and timings underneath."""
    rows = [(p["label"], f"{p['score']:.4f}") for p in answer["predictions"]]
    width = max([len("label"), *(len(r[0]) for r in rows)])
    lines = [f"{'label':<{width}}  score", f"{'-' * width}  ------"]
    lines += [f"{label:<{width}}  {score}" for label, score in rows]
    model, t = answer["model"], answer["timings_ms"]
    lines.append(
        f"\n{model['name']} v{model['version']} ({answer['task']}), views {answer['views_used']}; "
        f"{t['total']:.1f} ms (decode {t['decode']:.1f}, queue {t['queue']:.1f}, "
        f"inference {t['inference']:.1f})"
    )
    for dropped in answer.get("views_dropped") or []:
        lines.append(f"dropped {dropped['view']}: {dropped['reason']} ({dropped['detail']})")
    if answer.get("expected_accuracy") is not None:
        lines.append(f"expected accuracy on these views: {answer['expected_accuracy']:.1%}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mplstm.cli import CommandError
    from mplstm.service.client import ServiceError, predict

    if args.top_k < 1:
        raise CommandError(f"--top-k must be >= 1, got {args.top_k}")
    views = parse_views(args.view)
    try:
        answer = predict(
            args.url,
            views,
            model=args.model,
            top_k=args.top_k,
            api_key=args.api_key,
            timeout_s=args.timeout,
            camera_checks=False if args.no_camera_checks else None,
        )
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(answer, indent=2) if args.json else format_table(answer))
    return 0
