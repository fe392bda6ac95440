"""Fusion of per-modality embeddings and the heads that classify the fused vector."""
