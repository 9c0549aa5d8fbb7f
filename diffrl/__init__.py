"""diffrl: a modular reinforcement-learning toolkit for diffusion models."""

__version__ = "0.1.0"
