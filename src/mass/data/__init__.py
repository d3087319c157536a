"""Datasets as the pipeline stores them: uint8 image arrays at the backbone's resolution."""
