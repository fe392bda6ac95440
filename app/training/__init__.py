"""Training of fusion and classification heads on frozen encoder embeddings: `mms train` and `mms evaluate`."""
