"""Serving many tasks over HTTP: the FastAPI app and its cross-task batcher."""
