"""One clip, three paths: the service's /v1 answer, `mplstm score` and `mplstm evaluate` agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from live_server import Server
from scoring_helpers import score_in_process

from mplstm.core.manifest import ClipRecord
from mplstm.core.package import load_package, resolve_package
from mplstm.scoring.output import read_rows
from mplstm.training.checkpoint import load_model
from mplstm.training.data import ClipDataset, make_loader
from mplstm.training.evaluate import predict


@pytest.fixture(scope="module")
def served(package_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("served") / "server.log"
    server = Server(package_dir.parent, log, {"MPLSTM_DEFAULT_MODEL": package_dir.name})
    server.start()
    yield server
    server.stop()


def _service_probabilities(
    server: Server, record: ClipRecord, labels: tuple[str, ...]
) -> np.ndarray:
    files = [(v, (p.name, p.read_bytes(), "video/mp4")) for v, p in record.views.items()]
    answer = httpx.post(f"{server.url}/v1/predict?top_k={len(labels)}", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    scores = {p["label"]: p["score"] for p in answer.json()["predictions"]}
    return np.array([scores[label] for label in labels])


@pytest.mark.parametrize("inference", ["workers", "main"])
def test_service_scorer_and_evaluate_give_the_same_probabilities_for_each_clip(
    inference: str,
    served: Server,
    package_dir: Path,
    checkpoint: Path,
    records: list[ClipRecord],
    dataset: Path,
    tmp_path: Path,
) -> None:
    package = load_package(resolve_package(package_dir))
    labels = package.manifest.labels
    clips = records[:6]

    # The whole `mplstm score` command, inference where --inference puts it.
    out = tmp_path / "out"
    extra = ("--decode-workers", "1", "--inference", inference, "--top-k", str(len(labels)))
    assert score_in_process(package_dir, dataset, out, *extra) == 0
    rows = {row.id: dict(row.top_k) for row in read_rows(out / "scores.jsonl")}
    offline = {r.id: np.array([rows[r.id][label] for label in labels]) for r in clips}

    model, meta = load_model(checkpoint)
    loader = make_loader(ClipDataset(clips, meta.labels, meta.preprocess, None), batch_size=3)
    logits, _ = predict(model, loader, torch.device("cpu"))
    evaluated = torch.from_numpy(next(iter(logits.values()))).softmax(-1).numpy()

    for i, record in enumerate(clips):
        over_http = _service_probabilities(served, record, labels)
        scored = offline[record.id]
        np.testing.assert_allclose(over_http, scored, atol=1e-5)  # same ORT model, same decode
        np.testing.assert_allclose(over_http, evaluated[i], atol=1e-4)  # PyTorch vs ORT
