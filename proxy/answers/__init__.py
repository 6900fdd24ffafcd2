"""Answers as the client gets them: JSON, plain text and captions, server-sent events."""
