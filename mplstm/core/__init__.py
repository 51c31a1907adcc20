"""Torch-free code shared by every part: clip decoding, view sync, preprocessing, data sets."""
