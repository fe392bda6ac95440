"""Multimodal embedding and classification service."""

__version__ = "0.1.0"
