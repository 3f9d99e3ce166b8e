"""sdexport: Stable Diffusion 1.x in PyTorch, exported to ONNX."""
