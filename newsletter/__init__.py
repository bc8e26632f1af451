"""newsletter: emails researchers the new papers they care about."""

__version__ = "0.1.0"
