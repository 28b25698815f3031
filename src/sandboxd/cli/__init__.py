"""Command-line entry points: ``sandboxd`` and ``sandboxctl``."""
