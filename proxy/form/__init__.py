"""The client's multipart form: parsed, checked, its file streamed, spooled or buffered."""
