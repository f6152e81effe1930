"""The serving runtime: what the Bento ships and the service runs, with numpy and ONNX Runtime only.

store (versioned, checksummed models), graphs (how a graph is called), sessions (ONNX Runtime),
models (a loaded model: sampling and raw graph calls), rows (the one place rows are checked),
scoring (the one scoring path), units, png grids and two-sample tests. It imports nothing else
of genreg's, and never torch.
"""
