"""llama-swap for Python: a model-swapping proxy for OpenAI-compatible inference servers."""

__version__ = "0.1.0"
COMMIT = "unknown"
BUILD_DATE = "unknown"
ARCHIVE: str | None = None  # the .pyz this runs from (set by its __main__.py), else None
