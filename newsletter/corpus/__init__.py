"""Corpus stage: page dumps in, deduplicated papers out."""
