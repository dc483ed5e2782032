"""NaViT Bench: which positional embedding should an any-resolution ViT use?"""
from .model import NaViT, build_model
from .packing import PackedBatch, pack
from .posembed import list_variants, register

__all__ = ["NaViT", "PackedBatch", "build_model", "list_variants", "pack", "register"]
