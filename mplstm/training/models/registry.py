"""The model registry: `register_model`, `get_model(name, **config)`, `list_models()`.

A checkpoint stores a model's registry name and `dataclasses.asdict(model.config)`;
`get_model(name, **config)` rebuilds the same model from those alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=type[nn.Module])
_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register a model class (with a `config_class` dataclass) under `name`."""

    def decorate(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[name]!r}")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a `config_class` dataclass to be registered")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return decorate


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered under `name`; ValueError listing the known names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def get_model_config(name: str, **config: Any) -> Any:
    """The config dataclass of model `name`, built from keyword fields (defaults elsewhere)."""
    config_class = get_model_class(name).config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown} for model {name!r}; fields: {', '.join(sorted(fields))}"
        )
    return config_class(**config)


def get_model(name: str, **config: Any) -> nn.Module:
    """Build model `name` from its config fields, e.g. get_model("mplstm", num_classes=10)."""
    return get_model_class(name)(get_model_config(name, **config))
