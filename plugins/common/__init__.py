"""Helpers shared by the PyTorch-trained built-in families (imported only when training)."""
