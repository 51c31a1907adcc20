"""mplstm-serve: Multi-Perspective LSTM multi-view video recognition, from training to serving."""

__version__ = "0.1.0"
