"""The embedded model: faster-whisper in this process, on the CPU, with no network."""

from .model import PACKAGED_MODEL_NAME, PACKAGED_MODEL_SHA256, packaged_model_path, verify_model
from .provider import LocalProvider

__all__ = [
    "PACKAGED_MODEL_NAME",
    "PACKAGED_MODEL_SHA256",
    "LocalProvider",
    "packaged_model_path",
    "verify_model",
]
