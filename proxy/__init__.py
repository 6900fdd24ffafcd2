"""Streaming transcription proxy: OpenAI-compatible API, uploads streamed through."""

__version__ = "0.1.0"
