"""PyTorch training side: the MP-LSTM layer (`cell`), the model families (`models`)."""
