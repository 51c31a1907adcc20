"""The model families behind one registry: `get_model(name, **config)`, `list_models()`.

Importing this package registers every family: mplstm, early_fusion, late_fusion,
single_view (recurrent.py), convlstm, cnn_convlstm (convlstm.py).
"""

from mplstm.training.models.base import ModelConfig, MultiViewModel, drop_views
from mplstm.training.models.convlstm import (
    CNNConvLSTMConfig,
    CNNConvLSTMModel,
    ConvLSTMConfig,
    DeepConvLSTMModel,
)
from mplstm.training.models.recurrent import (
    EarlyFusionConfig,
    EarlyFusionModel,
    LateFusionConfig,
    LateFusionModel,
    MPLSTMConfig,
    MPLSTMModel,
    SingleViewConfig,
    SingleViewModel,
)
from mplstm.training.models.registry import (
    get_model,
    get_model_class,
    get_model_config,
    list_models,
    register_model,
)

__all__ = [
    "CNNConvLSTMConfig",
    "CNNConvLSTMModel",
    "ConvLSTMConfig",
    "DeepConvLSTMModel",
    "EarlyFusionConfig",
    "EarlyFusionModel",
    "LateFusionConfig",
    "LateFusionModel",
    "MPLSTMConfig",
    "MPLSTMModel",
    "ModelConfig",
    "MultiViewModel",
    "SingleViewConfig",
    "SingleViewModel",
    "drop_views",
    "get_model",
    "get_model_class",
    "get_model_config",
    "list_models",
    "register_model",
]
