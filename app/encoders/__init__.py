"""Encoders, one module per modality, all behind the contract in base.py."""
