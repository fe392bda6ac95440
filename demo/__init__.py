"""Demo dataset: photo reviews in text, image and speech, for `mms train` (see demo/README.md)."""
