"""The baseline of the video-path benchmark: the FastAPI app a user would write in an afternoon.

Same route and answer as the service's `/v1/models/{name}/predict`, and the same
`core` preprocessing, but no decode pool, no batcher: each request decodes its views
inline and makes its own ONNX Runtime call on one shared session. The work runs in
Starlette's thread pool, as it would in a sync `def` endpoint (FastAPI's documented
way for blocking code), so requests overlap where PyAV and ONNX Runtime release the
GIL; an `async def` endpoint calling them directly would serialise everything and make
a weaker baseline than a careful user writes.

Run: .venv/bin/python bench/naive_app.py --package models/demo-lipreading/1 --port 8020
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from mplstm.core.package import ONNX_NAME, load_package
from mplstm.core.preprocess import load_clip


def create_app(package_path: Path) -> FastAPI:
    """An app serving the package at `package_path` on `POST /v1/models/{name}/predict`."""
    package = load_package(package_path)
    manifest = package.manifest
    config = manifest.preprocess_config()
    session = ort.InferenceSession(str(package.file(ONNX_NAME)), providers=["CPUExecutionProvider"])
    app = FastAPI(title="naive mplstm app")

    def predict_clip(views: dict[str, bytes]) -> dict:
        clip = load_clip(views, config)
        _, probabilities = session.run(
            ["logits", "probabilities"],
            {"clip": clip.frames[None], "view_mask": clip.view_mask[None]},
        )
        best = int(np.argmax(probabilities[0]))
        return {
            "model": {"name": manifest.name, "version": manifest.version},
            "predictions": [
                {"label": manifest.labels[best], "score": float(probabilities[0, best])}
            ],
        }

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request) -> dict:
        if name != manifest.name:
            raise HTTPException(404, f"no model {name!r}")
        form = await request.form()
        views = {key: await part.read() for key, part in form.items() if hasattr(part, "read")}
        return await run_in_threadpool(predict_clip, views)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("models/demo-lipreading/1"))
    parser.add_argument("--port", type=int, default=8020)
    args = parser.parse_args()
    uvicorn.run(create_app(args.package), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
