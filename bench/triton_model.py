"""The comparison server: Triton Inference Server serving a package's model.onnx (pytriton).

NVIDIA's `nvidia-pytriton` bundles a `tritonserver` that runs on the CPU; it serves a
Python callable through Triton's python backend, here one ONNX Runtime call per batch
that Triton's dynamic batcher formed. Runs in its own venv (pytriton 0.7.0 needs
numpy<2), so it imports nothing from `mplstm`: it reads the package's manifest.json.

Setup (once):
    python3.11 -m venv .venv-triton
    .venv-triton/bin/pip install nvidia-pytriton==0.7.0 numpy==1.26.4 onnxruntime==1.31.1
Run: .venv-triton/bin/python bench/triton_model.py --package models/demo-lipreading/1 --port 8010
(bench/serve.py starts it itself, as a subprocess.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sysconfig
from pathlib import Path

# The python-backend stub that tritonserver starts links libpython dynamically and does
# not find this interpreter's copy on its own; it inherits our environment.
_LIBDIR = sysconfig.get_config_var("LIBDIR") or ""
os.environ["LD_LIBRARY_PATH"] = ":".join(
    p for p in (_LIBDIR, os.environ.get("LD_LIBRARY_PATH", "")) if p
)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402

_DTYPES = {"uint8": np.uint8, "bool": np.bool_, "float32": np.float32}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tensors(specs: list[dict]) -> list[Tensor]:
    """Manifest tensor specs (batch axis first, named axes dynamic) -> pytriton Tensors."""
    return [
        Tensor(
            name=spec["name"],
            dtype=_DTYPES[spec["dtype"]],
            shape=tuple(d if isinstance(d, int) else -1 for d in spec["shape"][1:]),
        )
        for spec in specs
    ]


def session(model_path: Path, intra_op_threads: int) -> ort.InferenceSession:
    """The same session options as the service's ONNX Runtime backend."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # As the service's backend does (mplstm/inference/onnxruntime.py): a fair match.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def serve(
    package: Path, port: int, max_batch: int, max_delay_ms: float, threads: int, grpc_port: int
) -> None:
    """Serve `package` on `port` (HTTP) and `grpc_port` (Open Inference Protocol) until SIGTERM."""
    manifest = json.loads((package / "manifest.json").read_text())
    sess = session(package / "model.onnx", threads)
    output_names = [spec["name"] for spec in manifest["outputs"]]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, sess.run(output_names, inputs), strict=True))

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port or _free_port(),
        metrics_port=_free_port(),
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=manifest["name"],
            infer_func=infer,
            inputs=_tensors(manifest["inputs"]),
            outputs=_tensors(manifest["outputs"]),
            config=ModelConfig(
                max_batch_size=min(max_batch, int(manifest["max_batch"])),
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_delay_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0: any free one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    serve(args.package, args.port, args.max_batch, args.max_delay_ms, args.threads, args.grpc_port)


if __name__ == "__main__":
    main()
