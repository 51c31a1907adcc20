"""OuluVS2 (Anina et al., FG 2015) as manifest records, from the layout it is distributed in.

The cropped-mouth archives unpack to::

    ROOT/cropped_mouth_mp4_phrase/<speaker>/<view>/s<speaker>_v<view>_u<utterance>.mp4
    ROOT/cropped_mouth_mp4_digit/<speaker>/<view>/s<speaker>_v<view>_u<utterance>.mp4

with speakers 1..53 (folder names are the bare numbers), views 1..5 = 0, 30, 45, 60 and
90 degrees of yaw, utterances 1..30 = ten digit sequences x 3 repetitions and 31..60 = ten
phrases x 3 repetitions (utterance u is item (u - 1) % 30 // 3). A clip is one
(speaker, utterance) with one file per view; its label is the phrase or the digit string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mplstm.core.manifest import SPLITS, ClipRecord, ManifestError, assign_splits

log = logging.getLogger(__name__)

PHRASES: tuple[str, ...] = (
    "Excuse me",
    "Goodbye",
    "Hello",
    "How are you",
    "Nice to meet you",
    "See you",
    "I am sorry",
    "Thank you",
    "Have a good time",
    "You are welcome",
)
DIGITS: tuple[str, ...] = (
    "1 7 3 5 1 6 2 6 6 7",
    "4 0 2 9 1 8 5 9 0 4",
    "1 9 0 7 8 8 0 3 2 8",
    "4 9 1 2 1 1 8 5 5 1",
    "8 6 3 5 4 0 2 1 1 2",
    "2 3 9 0 0 1 6 7 6 4",
    "5 2 7 1 6 1 3 6 7 0",
    "9 7 4 4 4 3 5 5 8 7",
    "6 3 8 5 3 9 8 5 6 5",
    "7 3 2 4 0 1 9 9 5 0",
)
CORPORA: dict[str, tuple[str, range, tuple[str, ...]]] = {
    # corpus: (folder, utterance numbers, labels)
    "phrase": ("cropped_mouth_mp4_phrase", range(31, 61), PHRASES),
    "digit": ("cropped_mouth_mp4_digit", range(1, 31), DIGITS),
}


@dataclass(frozen=True)
class OuluView:
    """One OuluVS2 camera: its number in the file names, manifest name and yaw."""

    number: int
    name: str
    yaw: float


VIEWS: tuple[OuluView, ...] = (
    OuluView(1, "0deg", 0.0),
    OuluView(2, "30deg", 30.0),
    OuluView(3, "45deg", 45.0),
    OuluView(4, "60deg", 60.0),
    OuluView(5, "90deg", 90.0),
)
_FILE = re.compile(r"s(\d+)_v(\d+)_u(\d+)\.(mp4|avi|mov|mkv)", re.IGNORECASE)


def utterance_label(corpus: str, utterance: int) -> str:
    """The phrase or digit string spoken in an utterance number of a corpus."""
    _, numbers, labels = CORPORA[corpus]
    if utterance not in numbers:
        raise ValueError(f"utterance {utterance} is not in the {corpus} corpus ({numbers})")
    return labels[(utterance - 1) % 30 // 3]


def read_oulu(
    root: str | Path,
    *,
    corpus: str = "phrase",
    views: Sequence[int] = (1, 2, 3, 4, 5),
    splits: Mapping[str, str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
    skip_incomplete: bool = True,
) -> list[ClipRecord]:
    """Records for every (speaker, utterance) of an OuluVS2 tree, one path per chosen view.

    `root` is the folder that holds `cropped_mouth_mp4_<corpus>` (or that folder itself).
    Splits are by speaker: `splits` maps speaker names ('s1'..) to a split; speakers it
    does not name are spread over `fractions` by a shuffle seeded with `split_seed`. A clip
    missing one of the chosen views is skipped (logged) or, without `skip_incomplete`, an
    error.
    """
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, got {corpus!r}")
    folder, _, _ = CORPORA[corpus]
    by_number = {v.number: v for v in VIEWS}
    unknown = [v for v in views if v not in by_number]
    if unknown or not views:
        raise ValueError(f"OuluVS2 views are 1..5, got {list(views)}")
    root = Path(root)
    base = root if root.name == folder else root / folder
    if not base.is_dir():
        raise ManifestError(f"no {folder}/ folder here: is this the OuluVS2 root?", path=root)

    clips = _scan(base, root, corpus, views)
    wanted = [by_number[v].name for v in views]
    complete = _complete_clips(clips, wanted, root, skip_incomplete=skip_incomplete)
    speakers = sorted({s for s, _ in complete})
    split_of = _speaker_splits(speakers, splits, fractions, split_seed)
    return [
        ClipRecord(
            id=f"s{speaker}_u{utterance}",
            label=utterance_label(corpus, utterance),
            speaker=f"s{speaker}",
            split=split_of[f"s{speaker}"],
            views={name: clips[(speaker, utterance)][name] for name in wanted},
        )
        for speaker, utterance in complete
    ]


def _scan(
    base: Path, root: Path, corpus: str, views: Sequence[int]
) -> dict[tuple[int, int], dict[str, Path]]:
    """The files of the chosen views under `base`, by (speaker, utterance) and view name."""
    _, numbers, _ = CORPORA[corpus]
    by_number = {v.number: v for v in VIEWS}
    clips: dict[tuple[int, int], dict[str, Path]] = {}
    for path in sorted(base.glob("*/*/*")):
        match = _FILE.fullmatch(path.name)
        if not path.is_file() or not match:
            continue
        speaker, view, utterance = (int(g) for g in match.groups()[:3])
        if path.parent.parent.name != str(speaker) or path.parent.name != str(view):
            raise ManifestError(
                f"file for speaker {speaker}, view {view} is in folder "
                f"{path.parent.parent.name}/{path.parent.name}: expected {speaker}/{view}",
                path=path,
            )
        if view not in views:
            continue
        if utterance not in numbers:
            raise ManifestError(
                f"utterance {utterance} does not belong to the {corpus} corpus "
                f"({numbers.start}..{numbers.stop - 1})",
                path=path,
            )
        clips.setdefault((speaker, utterance), {})[by_number[view].name] = path.absolute()
    if not clips:
        raise ManifestError(f"no s<k>_v<view>_u<utt>.mp4 files under {base}", path=root)
    return clips


def _complete_clips(
    clips: dict[tuple[int, int], dict[str, Path]],
    wanted: list[str],
    root: Path,
    *,
    skip_incomplete: bool,
) -> list[tuple[int, int]]:
    """The (speaker, utterance) keys, sorted, of the clips that have every wanted view."""
    incomplete = sorted(k for k, found in clips.items() if set(found) != set(wanted))
    complete = sorted(set(clips) - set(incomplete))
    if incomplete and not skip_incomplete:
        speaker, utterance = incomplete[0]
        missing = sorted(set(wanted) - set(clips[incomplete[0]]))
        raise ManifestError(
            f"{len(incomplete)} clips lack views, e.g. speaker {speaker} utterance {utterance} "
            f"has no {', '.join(missing)}",
            path=root,
        )
    if incomplete:
        log.warning(
            "skipped %d OuluVS2 clips that lack one of the views %s", len(incomplete), wanted
        )
    return complete


def _speaker_splits(
    speakers: list[int],
    splits: Mapping[str, str] | None,
    fractions: Sequence[float],
    split_seed: int,
) -> dict[str, str]:
    """The split of each speaker name: as `splits` says, the rest spread over `fractions`."""
    split_of = dict(splits or {})
    bad = {s: v for s, v in split_of.items() if v not in SPLITS}
    if bad:
        raise ValueError(f"unknown split(s) {bad}: use {', '.join(SPLITS)}")
    rest = [f"s{s}" for s in speakers if f"s{s}" not in split_of]
    split_of.update(assign_splits(rest, fractions, np.random.default_rng(split_seed)))
    return split_of
