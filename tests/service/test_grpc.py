"""The Open Inference Protocol over gRPC: `tritonclient.grpc` (sync, asyncio, streams)
against a live server over loopback, answering as `/v2` REST does."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import grpc_inputs, http_inputs, random_clip, wait_pending
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from live_server import Server
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import DROPOUT_MODEL, FULL_MODEL, LABELS, SHARED_ENV, VIEWS
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

# The shared server's tight upload limit (2 MB), so the oversize message stays small.
MAX_UPLOAD = int(SHARED_ENV["MPLSTM_MAX_UPLOAD_BYTES"])


@pytest.fixture(scope="module")
def live(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own (the repository tests unload and reload its models)."""
    srv = Server(repo, tmp_path_factory.mktemp("grpc") / "server.log", dict(SHARED_ENV))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(live: Server) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(live.grpc_target) as c:
        yield c


@pytest.fixture(scope="module")
def rest(live: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(live.url.removeprefix("http://"))


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_health_metadata_config_and_repository_rpcs_answer_like_v2_rest(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(DROPOUT_MODEL) and client.is_model_ready(DROPOUT_MODEL, "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready(DROPOUT_MODEL, "9")
    server_meta = client.get_server_metadata(as_json=True)
    assert server_meta == httpx.get(f"{live.url}/v2").json()
    assert "schedule_policy" in server_meta["extensions"]
    meta = client.get_model_metadata(FULL_MODEL, as_json=True)
    rest_meta = httpx.get(f"{live.url}/v2/models/{FULL_MODEL}").json()
    for tensors in ("inputs", "outputs"):  # proto JSON writes int64 as strings
        for tensor in meta[tensors]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert meta == rest_meta
    config = client.get_model_config(DROPOUT_MODEL).config
    assert config.max_batch_size == 32 and config.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in config.input] == [
        ("clip", [len(VIEWS), -1, 1, 32, 32]),
        ("view_mask", [len(VIEWS)]),
    ]
    batching = config.dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
    assert batching.max_queue_delay_microseconds == 20_000  # MPLSTM_MAX_DELAY_MS=20
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index} == {DROPOUT_MODEL: "READY", FULL_MODEL: "READY"}
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert _status(caught) == "StatusCode.NOT_FOUND" and "model_not_found" in caught.value.message()


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


def test_unload_and_load_over_grpc_move_model_readiness(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    client.unload_model(FULL_MODEL)
    try:
        # Unloaded on purpose: no longer wanted, so the server stays ready (as over REST).
        assert not client.is_model_ready(FULL_MODEL) and client.is_server_ready()
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {m["name"]: m["state"] for m in index}[FULL_MODEL] == "UNLOADED"
        request = service_pb2.RepositoryIndexRequest(ready=True)
        ready_only = client._client_stub.RepositoryIndex(request)  # tritonclient has no `ready`
        assert [m.name for m in ready_only.models] == [DROPOUT_MODEL]
        with pytest.raises(InferenceServerException) as caught:
            client.infer(FULL_MODEL, grpc_inputs(random_clip(1, 8)))
        assert _status(caught) == "StatusCode.UNAVAILABLE"
        assert "model_not_ready" in caught.value.message()
    finally:
        client.load_model(FULL_MODEL)
    assert client.is_model_ready(FULL_MODEL) and client.is_server_ready()
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(FULL_MODEL, config='{"max_batch_size": 1}')
    assert _status(caught) == "StatusCode.INVALID_ARGUMENT" and "bad_parameter" in str(caught.value)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("nope")
    assert _status(caught) == "StatusCode.NOT_FOUND"


def test_health_service_serves_only_while_every_wanted_model_is_ready(
    repo_copy: Path, tmp_path: Path
) -> None:
    # A tampered package keeps the server from being ready until it is unloaded.
    broken = repo_copy / "broken" / "1"
    shutil.copytree(repo_copy / DROPOUT_MODEL / "1", broken)
    onnx = bytearray((broken / "model.onnx").read_bytes())
    onnx[len(onnx) // 2] ^= 0x01
    (broken / "model.onnx").write_bytes(bytes(onnx))
    server = Server(repo_copy, tmp_path / "server.log").start(wait_ready=False)
    try:
        server.wait(f"/v2/models/{DROPOUT_MODEL}/ready")
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        with grpcclient.InferenceServerClient(server.grpc_target) as client:
            assert not client.is_server_ready()
            assert _health(server.grpc_target) == not_serving
            assert _health(server.grpc_target, "inference.GRPCInferenceService") == not_serving
            with pytest.raises(InferenceServerException) as caught:
                client.load_model("broken")
            assert _status(caught) == "StatusCode.FAILED_PRECONDITION"
            assert "does not match its sha256" in caught.value.message()
            client.unload_model("broken")
            assert client.is_server_ready()
            assert _health(server.grpc_target) == serving
            assert _health(server.grpc_target, "inference.GRPCInferenceService") == serving
            with pytest.raises(grpc.RpcError) as unknown:
                _health(server.grpc_target, "no.such.Service")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_reflection_lists_the_inference_health_and_reflection_services(live: Server) -> None:
    with grpc.insecure_channel(live.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed-contents"])
def test_infer_outputs_are_bit_identical_to_v2_rest_for_the_same_tensors(
    client: grpcclient.InferenceServerClient,
    rest: httpclient.InferenceServerClient,
    typed: bool,
) -> None:
    clip = random_clip(3, 12, seed=7)
    mask = np.array([[True, True, True], [True, False, True], [False, False, True]])
    if typed:  # InferTensorContents (uint_contents, bool_contents), as some KServe clients send
        request = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL, id="typed-1")
        request.inputs.add(name="clip", datatype="UINT8", shape=clip.shape)
        request.inputs[0].contents.uint_contents.extend(clip.reshape(-1).tolist())
        request.inputs.add(name="view_mask", datatype="BOOL", shape=mask.shape)
        request.inputs[1].contents.bool_contents.extend(mask.reshape(-1).tolist())
        response = client._client_stub.ModelInfer(request)
        result = grpcclient.InferResult(response)
    else:
        result = client.infer(DROPOUT_MODEL, grpc_inputs(clip, mask), request_id="raw-1")
    via_rest = rest.infer(DROPOUT_MODEL, http_inputs(clip, mask))
    assert result.get_response().id == ("typed-1" if typed else "raw-1")
    assert result.get_response().model_version == "1"
    for name in ("logits", "probabilities"):
        got = result.as_numpy(name)
        assert got.shape == (3, len(LABELS)) and got.dtype == np.float32
        assert np.array_equal(got, via_rest.as_numpy(name)), name


def test_asyncio_client_infers_and_asks_for_one_output(live: Server) -> None:
    clip = random_clip(2, 8, seed=3)

    async def run() -> grpcclient.InferResult:
        async with grpcaio.InferenceServerClient(live.grpc_target) as aio:
            assert await aio.is_server_ready()
            outputs = [grpcclient.InferRequestedOutput("probabilities")]
            return await aio.infer(DROPOUT_MODEL, grpc_inputs(clip), outputs=outputs)

    result = asyncio.run(run())
    outputs = result.get_response().outputs
    assert [o.name for o in outputs] == ["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)


def _rest_error(live: Server, clip: np.ndarray, mask: np.ndarray | None, model: str) -> str:
    """`code: detail` of /v2 REST's refusal of the same tensors (binary, as tritonclient sends)."""
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        http_inputs(clip, mask)
    )
    r = httpx.post(
        f"{live.url}/v2/models/{model}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert r.status_code == 400, r.text
    return f"{r.json()['error']}: {r.json()['detail']}"


def test_bad_tensors_get_invalid_argument_with_the_messages_of_v2_rest(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    cases = [
        (random_clip(1, 8)[..., :16, :16], None, DROPOUT_MODEL),  # wrong H, W
        (random_clip(1, 8), np.zeros((1, len(VIEWS)), bool), DROPOUT_MODEL),  # no view
        (random_clip(1, 8), np.array([[True, False, True]]), FULL_MODEL),  # no view dropout
        (random_clip(2, 8), np.ones((1, len(VIEWS)), bool), DROPOUT_MODEL),  # batch mismatch
        (random_clip(33, 8), None, DROPOUT_MODEL),  # over max_batch
    ]
    for clip, mask, model in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, grpc_inputs(np.ascontiguousarray(clip), mask))
        assert _status(caught) == "StatusCode.INVALID_ARGUMENT", caught.value
        assert caught.value.message() == _rest_error(live, np.ascontiguousarray(clip), mask, model)


def _raw_request(**fields: object) -> service_pb2.ModelInferRequest:
    clip = random_clip(1, 8)
    request = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL, **fields)
    request.inputs.add(name="clip", datatype="UINT8", shape=clip.shape)
    request.raw_input_contents.append(clip.tobytes())
    return request


def test_malformed_messages_are_refused_with_a_clear_status_never_unknown_or_internal(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    stub = client._client_stub
    short = _raw_request()
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    extra = _raw_request()
    extra.raw_input_contents.append(b"\x00")
    both = _raw_request()
    both.inputs[0].contents.uint_contents.append(1)
    wrong_field = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL)
    wrong_field.inputs.add(name="clip", datatype="UINT8", shape=[1]).contents.fp32_contents.append(
        1
    )
    overflow = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL)
    overflow.inputs.add(name="clip", datatype="UINT8", shape=[1]).contents.uint_contents.append(300)
    half = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL)
    half.inputs.add(name="clip", datatype="FP16", shape=[1])
    strings = service_pb2.ModelInferRequest(model_name=DROPOUT_MODEL)
    strings.inputs.add(name="clip", datatype="STRING", shape=[1])
    unknown_output = _raw_request()
    unknown_output.outputs.add(name="embedding")
    bad_priority = _raw_request()
    bad_priority.parameters["priority"].uint64_param = 99
    bad_timeout = _raw_request()
    bad_timeout.parameters["timeout"].string_param = "soon"
    cases = {
        "bytes for shape": short,
        "entries for 1 inputs": extra,
        "both contents and raw_input_contents": both,
        "goes in contents.uint_contents": wrong_field,
        "UINT8 values lie in [0, 255]": overflow,
        "raw_input_contents only": half,
        "datatype 'STRING' is not one of": strings,
        "unknown outputs ['embedding']": unknown_output,
        "priority 99 is out of range": bad_priority,
        "parameter 'timeout' must be a non-negative integer": bad_timeout,
    }
    for expected, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (expected, caught.value)
        assert expected in caught.value.details(), caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_raw_request(model_version="7"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerException) as caught_sm:
        client.get_system_shared_memory_status()
    assert _status(caught_sm) == "StatusCode.UNIMPLEMENTED"
    assert "internal_error" not in live.log() and "Traceback" not in live.log()


def test_an_oversize_message_is_refused_with_resource_exhausted_and_the_server_lives_on(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    frames = MAX_UPLOAD // (len(VIEWS) * 32 * 32) + 1  # just over the upload limit
    with pytest.raises(InferenceServerException) as caught:
        client.infer(DROPOUT_MODEL, grpc_inputs(random_clip(1, frames)))
    assert _status(caught) == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(MAX_UPLOAD) in caught.value.message()
    assert (
        client.infer(DROPOUT_MODEL, grpc_inputs(random_clip(1, 8))).as_numpy("logits") is not None
    )


def test_sync_stream_answers_every_request_and_an_error_only_for_its_own(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        clips = {f"ok-{i}": random_clip(1, 8, seed=i) for i in range(4)}
        for request_id, clip in clips.items():
            client.async_stream_infer(DROPOUT_MODEL, grpc_inputs(clip), request_id=request_id)
        client.async_stream_infer(DROPOUT_MODEL, grpc_inputs(random_clip(1, 0)), request_id="bad")
        got = [answers.get(timeout=60) for _ in range(5)]
    finally:
        client.stop_stream()
    errors = [error for result, error in got if error is not None]
    assert len(errors) == 1 and "bad_tensor" in str(errors[0])
    results = {r.get_response().id: r for r, error in got if error is None}
    assert sorted(results) == sorted(clips)
    for request_id, clip in clips.items():
        alone = client.infer(DROPOUT_MODEL, grpc_inputs(clip))
        assert np.array_equal(results[request_id].as_numpy("logits"), alone.as_numpy("logits"))


def test_many_concurrent_asyncio_streams_each_get_their_own_answers(live: Server) -> None:
    streams, per_stream = 12, 6
    clips = [random_clip(1, 8, seed=s) for s in range(streams)]

    async def one_stream(aio: grpcaio.InferenceServerClient, s: int) -> list[tuple[str, float]]:
        async def requests() -> AsyncIterator[dict[str, object]]:
            for i in range(per_stream):
                yield {"model_name": DROPOUT_MODEL, "inputs": grpc_inputs(clips[s]),
                       "request_id": f"{s}-{i}"}  # fmt: skip

        out = []
        async for result, error in aio.stream_infer(requests()):
            assert error is None, error
            out.append((result.get_response().id, float(result.as_numpy("logits")[0, 0])))
        return out

    async def run() -> tuple[list[list[tuple[str, float]]], list[float]]:
        async with grpcaio.InferenceServerClient(live.grpc_target) as aio:
            answers = await asyncio.gather(*(one_stream(aio, s) for s in range(streams)))
            alone = [
                float((await aio.infer(DROPOUT_MODEL, grpc_inputs(c))).as_numpy("logits")[0, 0])
                for c in clips
            ]
        return answers, alone

    answers, alone = asyncio.run(run())
    for s, got in enumerate(answers):
        assert sorted(request_id for request_id, _ in got) == sorted(
            f"{s}-{i}" for i in range(per_stream)
        )
        assert {value for _, value in got} == {alone[s]}


def test_grpc_requests_are_counted_under_their_protocol_in_the_metrics(
    live: Server, client: grpcclient.InferenceServerClient
) -> None:
    client.infer(DROPOUT_MODEL, grpc_inputs(random_clip(1, 8)))
    with pytest.raises(InferenceServerException):
        client.infer(DROPOUT_MODEL, grpc_inputs(random_clip(1, 8)[..., :8]))
    text = httpx.get(f"{live.url}/metrics").text
    samples = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
    ]
    counted = {
        (s.labels["outcome"], s.labels["protocol"])
        for s in samples
        if s.name == "nv_inference_requests_total" and s.labels["model"] == DROPOUT_MODEL
    }
    assert {("success", "grpc"), ("bad_tensor", "grpc")} <= counted
    assert any(
        s.name == "nv_inference_stage_duration_seconds_count" and s.labels["protocol"] == "grpc"
        for s in samples
    )
    stats = client.get_inference_statistics(DROPOUT_MODEL, as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["fail"]["count"]) >= 1
    assert int(stats["inference_count"]) >= int(stats["execution_count"]) >= 1
    as_message = client.get_inference_statistics(DROPOUT_MODEL)
    assert json_format.MessageToDict(as_message)["modelStats"][0]["name"] == DROPOUT_MODEL


def test_api_keys_from_metadata_guard_every_rpc_but_liveness_readiness_and_health(
    repo: Path, tmp_path: Path
) -> None:
    server = Server(repo, tmp_path / "server.log", {"MPLSTM_API_KEYS": "k1,k2"}).start()
    try:
        with grpcclient.InferenceServerClient(server.grpc_target) as client:
            assert client.is_server_live() and client.is_server_ready()
            inputs = grpc_inputs(random_clip(1, 8))
            for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "k"}):
                for call in (
                    lambda h=headers: client.infer(DROPOUT_MODEL, inputs, headers=h),
                    lambda h=headers: client.get_model_metadata(DROPOUT_MODEL, headers=h),
                    lambda h=headers: client.get_model_repository_index(headers=h),
                ):
                    with pytest.raises(InferenceServerException) as caught:
                        call()
                    assert _status(caught) == "StatusCode.UNAUTHENTICATED"
                    assert "unauthorized" in caught.value.message()
            for headers in ({"authorization": "Bearer k2"}, {"x-api-key": "k1"}):
                assert (
                    client.infer(DROPOUT_MODEL, inputs, headers=headers).as_numpy("logits")
                    is not None
                )
            answers: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            # The stream is refused before it reads a request: the send may already fail.
            with contextlib.suppress(InferenceServerException):
                client.async_stream_infer(DROPOUT_MODEL, inputs)
            _, error = answers.get(timeout=60)
            client.stop_stream()
            assert error is not None and "unauthorized" in str(error)
            with grpc.insecure_channel(server.grpc_target) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
    assert "gRPC ModelInfer UNAUTHENTICATED" in server.log()


def test_a_full_queue_answers_unavailable_with_retry_advice_in_the_trailing_metadata(
    repo: Path, tmp_path: Path
) -> None:
    # One waiting request at most; the first waits 3 s for its batch to fill.
    env = {"MPLSTM_MAX_QUEUE": "1", "MPLSTM_MAX_DELAY_MS": "3000"}
    server = Server(repo, tmp_path / "server.log", env).start()
    try:
        with grpcclient.InferenceServerClient(server.grpc_target) as client:
            answers: queue.Queue = queue.Queue()
            client.async_infer(
                DROPOUT_MODEL,
                grpc_inputs(random_clip(1, 8)),
                callback=lambda result, error: answers.put((result, error)),
            )
            wait_pending(server, 1)
            with pytest.raises(grpc.RpcError) as caught:
                client._client_stub.ModelInfer(_raw_request(id="second"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details().startswith("queue_full: ")
            trailing = dict(caught.value.trailing_metadata())
            assert trailing["retry-after"] == "1" and trailing["x-request-id"]
            result, error = answers.get(timeout=60)  # the first is answered all the same
            assert error is None and result.as_numpy("logits").shape == (1, len(LABELS))
    finally:
        server.stop()


def test_a_taken_grpc_port_stops_the_server_at_start_naming_the_variable(
    repo: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(repo, tmp_path / "server.log", {"MPLSTM_GRPC_PORT": str(port)})
        with pytest.raises(RuntimeError, match="exited early") as caught:
            server.start()
    assert "MPLSTM_GRPC_PORT" in str(caught.value)


def test_sigterm_answers_every_grpc_call_in_flight_then_refuses_new_ones(
    repo: Path, tmp_path: Path
) -> None:
    # A long batching delay holds the calls in the batcher when SIGTERM arrives.
    env = {"MPLSTM_MAX_DELAY_MS": "1500"}
    server = Server(repo, tmp_path / "server.log", env, command="mplstm").start()
    clip = random_clip(1, 8)

    async def run() -> tuple[list[object], BaseException | None]:
        async with grpcaio.InferenceServerClient(server.grpc_target) as aio:
            calls = [
                asyncio.create_task(aio.infer(DROPOUT_MODEL, grpc_inputs(clip), request_id=str(i)))
                for i in range(10)
            ]
            await asyncio.to_thread(wait_pending, server, 10)
            status = asyncio.create_task(asyncio.to_thread(server.stop))
            answers = await asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.2)
            late = None
            try:
                await aio.infer(DROPOUT_MODEL, grpc_inputs(clip), client_timeout=10)
            except InferenceServerException as exc:
                late = exc
            await status
            return answers, late

    answers, late = asyncio.run(run())
    assert all(isinstance(a, grpcclient.InferResult) for a in answers), answers
    assert sorted(a.get_response().id for a in answers) == sorted(str(i) for i in range(10))
    assert late is not None and str(late.status()) == "StatusCode.UNAVAILABLE"
    log = server.log()
    assert "gRPC: refusing new calls" in log and "gRPC stopped" in log and " shut down" in log


def test_grpc_port_zero_serves_http_alone(repo: Path, tmp_path: Path) -> None:
    server = Server(repo, tmp_path / "server.log", {"MPLSTM_GRPC_PORT": "0"}).start()
    try:
        assert server.healthy()
        rest = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert rest.infer(DROPOUT_MODEL, http_inputs(random_clip(1, 8))).as_numpy("logits").size
    finally:
        server.stop()
    assert "gRPC is off (MPLSTM_GRPC_PORT=0)" in server.log()
    assert "gRPC listening" not in server.log()
