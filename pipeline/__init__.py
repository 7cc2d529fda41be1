"""caption: batch-caption images with a vLLM server."""

__version__ = "0.1.0"
