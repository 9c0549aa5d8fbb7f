"""Reproducible pretraining of the emoji zoo (run through ``scripts/build_zoo.py``)."""
