"""Open Inference Protocol v2: `tritonclient.http` unchanged, JSON and binary tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from live_server import Server
from service_helpers import DROPOUT_MODEL, FULL_MODEL, LABELS, VIEWS, upload
from tritonclient.utils import InferenceServerException

from mplstm.core.package import load_package
from mplstm.core.preprocess import load_clip
from mplstm.service.errors import BadTensorError
from mplstm.service.oip import parse_infer_request


@pytest.fixture(scope="module")
def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def _inputs(clip: np.ndarray, mask: np.ndarray, binary: bool) -> list[triton.InferInput]:
    clip_in = triton.InferInput("clip", list(clip.shape), "UINT8")
    clip_in.set_data_from_numpy(clip, binary_data=binary)
    mask_in = triton.InferInput("view_mask", list(mask.shape), "BOOL")
    mask_in.set_data_from_numpy(mask, binary_data=binary)
    return [clip_in, mask_in]


def test_tritonclient_sees_a_live_ready_server_and_the_model_metadata(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(DROPOUT_MODEL) and client.is_model_ready(DROPOUT_MODEL, "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata(DROPOUT_MODEL)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "clip", "datatype": "UINT8", "shape": [-1, len(VIEWS), -1, 1, 32, 32]},
        {"name": "view_mask", "datatype": "BOOL", "shape": [-1, len(VIEWS)]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_through_tritonclient_equals_v1_predict_for_the_same_clip(
    server: Server,
    client: triton.InferenceServerClient,
    repo: Path,
    clips: list[dict[str, Path]],
    binary: bool,
) -> None:
    manifest = load_package(repo / FULL_MODEL / "1").manifest
    decoded = load_clip(clips[2], manifest.preprocess_config())
    clip, mask = decoded.frames[None], decoded.view_mask[None]
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "logits")
    ]
    result = client.infer(FULL_MODEL, _inputs(clip, mask, binary), outputs=outputs)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, len(LABELS)) and probabilities.dtype == np.float32
    exp_logits = np.exp(result.as_numpy("logits"))
    np.testing.assert_allclose(
        probabilities, exp_logits / exp_logits.sum(1, keepdims=True), atol=1e-6
    )
    v1 = httpx.post(f"{server.url}/v1/models/{FULL_MODEL}/predict?top_k=4", files=upload(clips[2]))
    scores = {p["label"]: p["score"] for p in v1.json()["predictions"]}
    np.testing.assert_allclose(probabilities[0], [scores[k] for k in LABELS], atol=1e-6)


def test_infer_with_a_batch_and_a_longer_clip_and_default_binary_outputs(
    client: triton.InferenceServerClient,
) -> None:
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (3, len(VIEWS), 12, 1, 32, 32), np.uint8)
    mask = np.array([[True, True, True], [True, False, True], [False, False, True]])
    result = client.infer(DROPOUT_MODEL, _inputs(clip, mask, True))  # no outputs: all, binary
    batch = result.as_numpy("probabilities")
    assert batch.shape == (3, len(LABELS))
    for i in range(3):
        alone = client.infer(DROPOUT_MODEL, _inputs(clip[i : i + 1], mask[i : i + 1], True))
        np.testing.assert_allclose(alone.as_numpy("probabilities")[0], batch[i], atol=1e-6)


def test_v2_refuses_tensors_that_do_not_fit_the_model_with_400(
    server: Server, client: triton.InferenceServerClient
) -> None:
    # tritonclient shows the stable code (the `error` field); `detail` says what to fix.
    wrong_size = np.zeros((1, len(VIEWS), 8, 1, 16, 16), np.uint8)
    with pytest.raises(InferenceServerException, match=r"\[400\] bad_tensor"):
        client.infer(DROPOUT_MODEL, _inputs(wrong_size, np.ones((1, 3), bool), True))
    url = f"{server.url}/v2/models/{FULL_MODEL}/infer"
    cases = [
        b"not json",
        b'{"inputs": [{"name": "clip", "shape": [1], "datatype": "UINT8", "data": [300]}]}',
        b'{"inputs": [{"name": "clip", "shape": [2], "datatype": "UINT8", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1]}]}',
        b'{"inputs": [{"name": "clip", "shape": [1], "datatype": "STRING", "data": [1]}]}',
    ]
    for body in cases:
        r = httpx.post(url, content=body)
        assert (r.status_code, r.json()["error"]) == (400, "bad_tensor"), (body, r.text)
    # A model without view dropout refuses a masked view.
    masked = {
        "inputs": [
            {
                "name": "clip",
                "shape": [1, 3, 4, 1, 32, 32],
                "datatype": "UINT8",
                "data": [0] * 12288,
            },
            {"name": "view_mask", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
        ]
    }
    r = httpx.post(url, json=masked)
    assert (r.status_code, r.json()["error"]) == (400, "bad_tensor")
    assert "view dropout" in r.json()["detail"]
    assert server.healthy()


LAX_JSON = {
    "uint8_fraction": ("clip", "UINT8", [1.5], "integers"),
    "uint8_string": ("clip", "UINT8", ["7"], "integers"),
    "uint8_bool": ("clip", "UINT8", [1, True], "integers"),
    "uint8_over_range": ("clip", "UINT8", [256], "[0, 255]"),
    "uint8_negative": ("clip", "UINT8", [-1], "[0, 255]"),
    "bool_string": ("view_mask", "BOOL", ["false"], "true or false"),
    "bool_number": ("view_mask", "BOOL", [0], "true or false"),
    "ragged_rows": ("clip", "UINT8", [[1, 2], [3]], "equal length"),
    "fp32_string": ("x", "FP32", ["1.5"], "numbers"),
    "fp16_overflow": ("x", "FP16", [1e6], "range"),
}


@pytest.mark.parametrize("case", sorted(LAX_JSON))
def test_json_tensor_values_are_strict_per_datatype(case: str) -> None:
    name, datatype, data, says = LAX_JSON[case]
    tensor = {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}
    body = json.dumps({"inputs": [tensor]}).encode()
    with pytest.raises(BadTensorError, match=re.escape(says)):
        parse_infer_request(body, None)


def test_json_tensors_take_exact_values_flat_or_in_equal_rows() -> None:
    tensors = [
        {"name": "clip", "shape": [2, 2], "datatype": "UINT8", "data": [[0, 255], [7, 8]]},
        {"name": "view_mask", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2.5]},
    ]
    _, arrays = parse_infer_request(json.dumps({"inputs": tensors}).encode(), None)
    np.testing.assert_array_equal(arrays["clip"], np.array([[0, 255], [7, 8]], np.uint8))
    np.testing.assert_array_equal(arrays["view_mask"], [[True, False, True]])
    assert arrays["x"].dtype == np.float32 and arrays["x"].tolist() == [1.0, 2.5]


def test_v2_answers_a_lax_json_tensor_with_400_bad_tensor(server: Server) -> None:
    mask = {"name": "view_mask", "shape": [1, 3], "datatype": "BOOL", "data": ["false"] * 3}
    clip = {"name": "clip", "shape": [1, 3, 4, 1, 32, 32], "datatype": "UINT8", "data": [0] * 12288}
    r = httpx.post(f"{server.url}/v2/models/{DROPOUT_MODEL}/infer", json={"inputs": [clip, mask]})
    assert (r.status_code, r.json()["error"]) == (400, "bad_tensor")
    assert "view_mask" in r.json()["detail"] and "true or false" in r.json()["detail"]
