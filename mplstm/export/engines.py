"""Add a TensorRT engine to a model package (`mplstm export --tensorrt`, GPU host with TensorRT).

The engine is built from the package's fp16 or fp32 ONNX for the GPU and TensorRT of
this host (`tensorrt_build.build_engine`), written beside model.onnx under a name that
carries the GPU arch and TensorRT version, and recorded in the manifest, which is then
rewritten with the new file's sha256.
"""

from __future__ import annotations

from collections.abc import Callable

from mplstm.core.package import (
    ONNX_FP16_NAME,
    ONNX_NAME,
    EngineInfo,
    ModelPackage,
    write_package_manifest,
)
from mplstm.export import tensorrt_build


def add_engine(
    package: ModelPackage,
    *,
    fp16: bool = True,
    max_batch: int | None = None,
    use_plugin: bool = True,
    log: Callable[[str], None] = print,
) -> EngineInfo:
    """Build an engine for this host's GPU into `package` and record it in the manifest."""
    manifest = package.manifest
    source = ONNX_FP16_NAME if fp16 else ONNX_NAME
    arch, _ = tensorrt_build.current_gpu()
    info = tensorrt_build.build_engine(
        package.file(source),
        package.path,
        fp16=fp16,
        max_batch=max_batch or manifest.max_batch,
        frames_range=manifest.frames_range,
        frames_opt=manifest.preprocess.frames,
        timing_cache=tensorrt_build.default_timing_cache(arch, tensorrt_build.tensorrt_version()),
        use_plugin=use_plugin,
        progress=True,
        echo=log,
    )
    manifest.engines = (*(e for e in manifest.engines if e.file != info.file), info)
    write_package_manifest(package.path, manifest)
    log(f"{info.file}: {'plugin' if info.plugin else 'inlined function body'} for the cell")
    return info
