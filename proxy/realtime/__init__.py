"""Realtime transcription sessions over WebSocket (DESIGN.md section 13): not yet served."""
