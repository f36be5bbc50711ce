"""BindWeave: subject-consistent video generation on PyTorch + diffusers."""

__version__ = "0.1.0"
