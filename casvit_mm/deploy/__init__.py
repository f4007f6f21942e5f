"""Ways out of PyTorch for models with a CAS-ViT backbone.

Each module is imported on its own (``from casvit_mm.deploy.<module> import ...``),
so ``import casvit_mm`` pulls in no exporter, quantizer or runtime.
"""
