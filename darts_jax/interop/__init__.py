"""PyTorch interop: reference networks and converters; imports torch, so never imported by the core."""
