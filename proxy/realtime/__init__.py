"""Realtime transcription sessions over WebSocket (README, "Realtime sessions")."""
