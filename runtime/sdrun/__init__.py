"""sdrun: Stable Diffusion on onnxruntime and numpy alone (no torch)."""
