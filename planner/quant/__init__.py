"""Quantization: the scheme specs (what a plan asks for) and the engine that applies them (torchao, optional)."""
