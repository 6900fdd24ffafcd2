"""Long audio: an upload past a provider's limit, cut at silence, sent in parallel, stitched."""
