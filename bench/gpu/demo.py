"""The demo lip-reading package for parts 4 and 5: its manifest, example clips, its weights
in a PyTorch model whose recurrence is the Triton kernel, and its ONNX model on ORT's CPU.

No checkpoint travels with a package (models/demo-lipreading/1 holds model.onnx and
manifest.json; `runs/` is not committed), so the PyTorch model is rebuilt from the
manifest's model config and given model.onnx's own weights:

- named initializers load by name (the exporter keeps state_dict names under `model.`);
- a convolution the exporter folded its BatchNorm into (`<conv>.weight` plus
  `<conv>.weight_bias`) gets that weight and bias, and its BatchNorm becomes an identity:
  the graph's own arithmetic;
- a Linear weight the exporter turned into an anonymous MatMul operand (transposed) is
  matched in graph order, shapes checked;
- the MP-LSTM layer's `W_l{k}`, `R_l{k}`, `bias_l{k}` are already the kernel's layout.

Any key left without a weight is an error, and part 4's parity against ONNX Runtime on
the same clips checks the whole mapping. Where `onnx` is not installed, the model keeps
untrained weights (the cost is the same), the report says so and parity is not judged.
The manifest is read as plain JSON: `mplstm.core.package` imports PyAV, which a bare GPU
host may lack.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.gpu.common import EXAMPLES, Context, Skip, error_text, time_ms
from bench.gpu.layers import node_weights
from mplstm.training.cell import MPLSTM

ONNX_FILE = "model.onnx"


def read_manifest(package: Path) -> dict[str, Any]:
    """The package's manifest.json as a dict (checked only for what the kit reads)."""
    manifest = json.loads((package / "manifest.json").read_text())
    if manifest.get("model_family") != "mplstm":
        raise Skip(f"{package} is a {manifest.get('model_family')!r} model, not an MP-LSTM one")
    return manifest


class KernelMPLSTM(nn.Module):
    """`MPLSTM.forward` with the Triton kernel (`mplstm_layer_triton`) as its recurrence.

    Holds each layer's weights in the `mplstm::MPLSTM` node's layout, as model.onnx and
    the TensorRT plugin do; eval only (no dropout between layers).
    """

    def __init__(self, layer: MPLSTM, weights: list[list[Tensor | None]]) -> None:
        super().__init__()
        if not layer.batch_first:
            raise ValueError("the kit's kernel layer is batch_first, as every model family")
        self.num_views = layer.num_views
        self.bidirectional = layer.bidirectional
        self.recurrent_activation = layer.recurrent_activation
        self.num_layers = len(weights)
        for k, arrays in enumerate(weights):
            for name, value in zip(("W", "R", "bias", "peep"), arrays, strict=True):
                self.register_buffer(f"{name}_l{k}", value)

    def forward(
        self, x: Tensor, view_mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Same inputs and outputs as MPLSTM.forward: x [B, T, P, D] → (Y, (h_n, c_n))."""
        from mplstm.export.kernel import mplstm_layer_triton

        batch, steps = x.shape[0], x.shape[1]
        ones = torch.ones(batch, self.num_views, dtype=torch.bool, device=x.device)
        mask = ones if view_mask is None else view_mask.to(torch.bool)
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=x.device)
        out, h_n, c_n = x, [], []
        for k in range(self.num_layers):
            if k > 0:  # the layers above read the joint sequence as one view
                out = out.unsqueeze(2)
                mask = torch.ones(batch, 1, dtype=torch.bool, device=x.device)
            out, h, c = mplstm_layer_triton(
                out.contiguous(),
                mask,
                lengths,
                *(getattr(self, f"{n}_l{k}") for n in ("W", "R", "bias", "peep")),
                self.bidirectional,
                self.recurrent_activation,
            )
            h_n.append(h)
            c_n.append(c)
        return out, (torch.cat(h_n), torch.cat(c_n))


def _fold_batchnorms(model: nn.Module, inits: dict[str, np.ndarray]) -> None:
    """Give each convolution the exporter fused with its BatchNorm that bias; drop the BN."""
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    for index, name in enumerate(names):
        bias = _initializer(inits, f"{name}.weight_bias")
        if bias is None or not isinstance(modules[name], nn.Conv2d | nn.Conv3d):
            continue
        # The BatchNorm it folded is the next one registered (conv1 → bn1, shortcut.0 → .1).
        bn = next(
            n for n in names[index + 1 :] if isinstance(modules[n], nn.modules.batchnorm._BatchNorm)
        )
        modules[name].bias = nn.Parameter(torch.from_numpy(bias.copy()))
        parent, _, child = bn.rpartition(".")
        setattr(modules[parent] if parent else model, child, nn.Identity())


def _initializer(inits: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    return inits.get(f"model.{key}", inits.get(key))


def load_onnx_weights(model: nn.Module, onnx_path: Path) -> list[list[Tensor | None]]:
    """Load model.onnx's weights into `model` (all but its MP-LSTM), in place; return the
    MP-LSTM's node-layout weights per layer. ValueError naming any key left unloaded."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    _fold_batchnorms(model, inits)
    state: dict[str, Tensor] = {}
    missing: list[str] = []
    for key, value in model.state_dict().items():
        if key.startswith("rnn.") or key.endswith("num_batches_tracked"):
            continue
        array = _initializer(inits, key)
        if array is None and key.endswith(".bias"):  # a folded convolution's bias
            array = _initializer(inits, f"{key.removesuffix('.bias')}.weight_bias")
        if array is not None and array.shape == tuple(value.shape):
            state[key] = torch.from_numpy(array.copy())
        else:
            missing.append(key)
    named = {f"model.{k}" for k in state} | set(state)
    operands = [
        node.input[1]
        for node in proto.graph.node
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[1] not in named
    ]
    for key in list(missing):
        value = model.state_dict()[key]
        matrix = key.endswith(".weight") and value.dim() == 2
        if matrix and operands and inits[operands[0]].T.shape == tuple(value.shape):
            state[key] = torch.from_numpy(inits[operands.pop(0)].T.copy())
            missing.remove(key)
    if missing:
        raise ValueError(f"model.onnx has no weight for {missing}")
    model.load_state_dict(state, strict=False)
    rnn: MPLSTM = model.rnn  # type: ignore[assignment]
    layers = []
    for k in range(rnn.num_layers):
        arrays = [_initializer(inits, f"rnn.{n}_l{k}") for n in ("W", "R", "bias")]
        if any(a is None for a in arrays):
            raise ValueError(f"model.onnx has no MP-LSTM weights for layer {k}")
        peep = _initializer(inits, f"rnn.peep_l{k}")
        layers.append(
            [torch.from_numpy(a.copy()) for a in arrays]
            + [None if peep is None else torch.from_numpy(peep.copy())]
        )  # type: ignore[union-attr]
    return layers


def kernel_model(package: Path, manifest: dict[str, Any], device: str) -> tuple[nn.Module, str]:
    """(the package's model with the kernel as its recurrence, on `device`; where its
    weights came from)."""
    from mplstm.training.models import get_model

    model = get_model(manifest["model_family"], **manifest["training"]["model_config"]).eval()
    try:
        weights = load_onnx_weights(model, package / ONNX_FILE)
        source = "model.onnx's own weights (the package holds no checkpoint)"
    except Exception as exc:  # onnx absent, or an exporter layout this loader does not know
        model = get_model(manifest["model_family"], **manifest["training"]["model_config"]).eval()
        weights = [node_weights(model.rnn, k) for k in range(model.rnn.num_layers)]
        source = f"untrained weights (cost only; parity not judged): {error_text(exc)}"
    model.rnn = KernelMPLSTM(model.rnn, weights)
    return model.to(device), source


def example_clips(
    manifest: dict[str, Any], count: int, frames: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` clips uint8 [N, V, T, C, H, W] and view masks [N, V], and how they were made.

    Decoded from models/examples/lipreading with `load_clip` (the service's own path) where
    PyAV is installed, cycled when fewer exist; else random uint8 of the right shape.
    """
    pre = manifest["preprocess"]
    views = [v["name"] for v in manifest["views"]]
    shape = (count, len(views), frames, pre["channels"], pre["height"], pre["width"])
    try:
        import av  # noqa: F401
    except ImportError:
        clips = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
        return clips, np.ones(shape[:2], bool), "random uint8 (PyAV is not installed: no decoding)"
    from mplstm.core.preprocess import PreprocessConfig, load_clip

    config = PreprocessConfig.from_dict({**pre, "frames": frames, "view_names": views})
    rows = [
        json.loads(line)
        for line in (EXAMPLES / "manifest.jsonl").read_text().splitlines()
        if line.strip()
    ]
    decoded = [
        load_clip({name: str(EXAMPLES / path) for name, path in row["views"].items()}, config)
        for row in rows[:count]
    ]
    picks = [decoded[i % len(decoded)] for i in range(count)]
    clips = np.stack([c.frames for c in picks])
    masks = np.stack([c.view_mask for c in picks])
    return (
        clips,
        masks,
        f"{len(decoded)} example clips decoded with load_clip (PyAV), cycled to {count}",
    )


def ort_session(package: Path, provider: str, options: dict[str, Any] | None = None) -> Any:
    """An ONNX Runtime session on model.onnx with one execution provider (Skip if absent)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"onnxruntime is not installed ({exc})") from exc
    if provider not in ort.get_available_providers():
        raise Skip(f"{provider} is not available (providers: {ort.get_available_providers()})")
    providers = [(provider, options)] if options else [provider]
    return ort.InferenceSession(str(package / ONNX_FILE), providers=providers)


def logits_parity(
    got: np.ndarray, expected: np.ndarray, tolerance: tuple[float | None, str]
) -> dict[str, Any]:
    """Max abs difference of two logits arrays, argmax agreement, and the verdict against
    `tolerance` = (value or None for no verdict, where it comes from)."""
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean())
    bound, source = tolerance
    return {
        "max_abs_diff_logits": diff,
        "argmax_agreement": agree,
        "tolerance": bound if bound is not None else "none",
        "tolerance_from": source,
        "within_tolerance": None if bound is None else bool(diff <= bound),
        "samples": len(got),
    }


def timed_row(runtime: str, device: str, batch: int, ms: float) -> dict[str, Any]:
    """One clips/s row of parts 4 and 5."""
    return {
        "runtime": runtime,
        "device": device,
        "batch": batch,
        "ms_per_batch": ms,
        "clips_per_s": batch / ms * 1e3,
    }


def calls_per_round(batch: int, dry_run: bool) -> int:
    """About the same work per timing round at every batch size (one call in the dry run)."""
    return 1 if dry_run else max(2, 32 // batch)


def ort_rows(
    ctx: Context,
    session: Any,
    names: tuple[str, str],
    clips: np.ndarray,
    masks: np.ndarray,
    batches: tuple[int, ...],
    timing: dict[str, int],
) -> list[dict[str, Any]]:
    """clips/s of an ONNX Runtime session at each batch size; names = (runtime, device).

    Wall clock: session.run returns numpy, so it is done (copies included) when it returns.
    """
    runtime, device = names
    rows = []
    for batch in batches:
        run = functools.partial(
            session.run, ["logits"], {"clip": clips[:batch], "view_mask": masks[:batch]}
        )
        reps = calls_per_round(batch, ctx.dry_run)
        ms = time_ms(run, cuda_events=False, reps=reps, **timing)
        rows.append(timed_row(runtime, device, batch, ms))
        ctx.log(f"{runtime} B={batch}: {ms:.2f} ms, {batch / ms * 1e3:.1f} clips/s")
    return rows


def logits_tolerance(kind: str, manifest: dict[str, Any]) -> tuple[float | None, str]:
    """(tolerance on |logits diff|, where it comes from) for a comparison `kind`
    ("fp32", "tensorrt-fp32", "tensorrt-fp16"): the project's one table."""
    from mplstm.inference.parity import TOLERANCES

    return float(TOLERANCES[kind]), f"mplstm.inference.parity.TOLERANCES[{kind!r}]"
