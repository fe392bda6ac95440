"""Decoders that turn uploaded media bytes into arrays, validating them on the way."""
