"""`mplstm stream`: a live session with a running service, one JSON line per server message."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="stream cameras (files, /dev/videoN, RTSP/HTTP/UDP URLs) to a live model",
        description=(
            "Open a live session (WebSocket /v1/models/NAME/stream), send every view's frames "
            "with their timestamps and print each server message as one JSON line; the last "
            'line of each utterance has "type": "final". Files for every view and no '
            "--utterance: one utterance over the whole clip."
        ),
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument("--model", required=True, help="a live model's name")
    parser.add_argument(
        "--view",
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="a camera: its view name and anything PyAV opens (repeat per view)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="send files at their own pace (default: as fast as the server takes them)",
    )
    parser.add_argument(
        "--utterance",
        action="append",
        default=[],
        metavar="START:END",
        help="an utterance in seconds of the views' time (repeatable)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels per prediction (default 5)")
    parser.add_argument("--every", type=int, help="running predictions every K steps")
    parser.add_argument(
        "--format",
        choices=["raw", "jpeg", "png"],
        default="raw",
        help="how frames travel (default raw)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("MPLSTM_API_KEY"), help="API key (or MPLSTM_API_KEY)"
    )
    parser.set_defaults(func=run)


def parse_utterances(items: list[str]) -> tuple[tuple[float, float], ...]:
    """START:END arguments → ((start, end), ...); CommandError when malformed or empty."""
    from mplstm.cli import CommandError

    out = []
    for item in items:
        start, sep, end = item.partition(":")
        try:
            pair = (float(start), float(end))
        except ValueError:
            pair = None
        if not sep or pair is None or pair[1] <= pair[0]:
            raise CommandError(f"--utterance {item!r}: use START:END in seconds, END > START")
        out.append(pair)
    return tuple(sorted(out))


def run(args: argparse.Namespace) -> int:
    import asyncio

    from mplstm.cli import CommandError
    from mplstm.cli.predict import parse_views
    from mplstm.service.stream_client import StreamClientError, StreamOptions, run_stream

    views = {
        name: item.split("=", 1)[1]  # as given: a URL must keep its "//"
        for name, item in zip(parse_views(args.view, files=False), args.view, strict=True)
    }
    options = StreamOptions(
        url=args.url,
        model=args.model,
        views=views,
        realtime=args.realtime,
        utterances=parse_utterances(args.utterance),
        api_key=args.api_key,
        top_k=args.top_k,
        every=args.every,
        image_format=args.format,
    )

    def show(message: dict) -> None:
        print(json.dumps(message), flush=True)

    try:
        return asyncio.run(run_stream(options, show))
    except StreamClientError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        print(f"mplstm stream: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
