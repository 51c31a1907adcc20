"""Inference backends: a package's model behind one `infer(clip, view_mask)` call."""

from mplstm.service.backends.base import Backend, BackendUnavailableError, InferenceOutput

__all__ = ["Backend", "BackendUnavailableError", "InferenceOutput"]
