"""caption: batch-caption images with a vLLM server."""
