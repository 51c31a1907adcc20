"""Export: the MP-LSTM layer as one ONNX node with a function body, and the torch exporter hook."""
