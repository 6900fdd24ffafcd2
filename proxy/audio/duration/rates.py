"""The highest byte rate of each container's codecs: the fewest seconds its bytes can hold.

A container's header can claim any length, and a request that is charged by it can be
served an hour for the price of a second. Its bytes cannot lie that way: no codec packs
a second into fewer bytes than its highest rate allows, so the bytes sent, over that
rate, are a length no claim may lower the charge below. The rates are the codecs' tops,
not their usual ones, so an honest file is never charged more than it lasts.
"""

from __future__ import annotations

#: Bytes a second at the highest rate of each container's codecs, by container (None:
#: not sniffed yet, or unknown). MPEG audio has no container and is told apart by layer.
#: WAV and FLAC hold PCM at the rate their header declares: their entries cap that.
MAX_BYTES_PER_S: dict[str | None, int] = {
    "mp3": 320_000 // 8,  # 320 kbit/s: MPEG-1 layer III's highest bitrate (ISO/IEC 11172-3)
    "mp2": 384_000 // 8,  # 384 kbit/s: layer II's highest, for MPEG audio of layer II frames
    "mp1": 448_000 // 8,  # 448 kbit/s: layer I's highest
    "ogg": 64_000,  # Opus tops out at 510 kbit/s (RFC 6716); Vorbis's practical top is lower
    "webm": 64_000,  # the same codecs, in Matroska
    "mp4": 48_000 * 2 * 2,  # ALAC at 48 kHz, 16-bit, stereo: far above AAC's rates
    "wav": 8 * 192_000 * 4,  # the most PCM a header may declare: 8 channels, 192 kHz, 32-bit
    "flac": 8 * 192_000 * 4,  # the same cap: FLAC is lossless, never more than its PCM
    None: 48_000 * 2 * 2,  # unknown: as much as 48 kHz 16-bit stereo PCM
}

#: The entry for MPEG audio of each layer.
MPEG_LAYERS = {1: "mp1", 2: "mp2", 3: "mp3"}
