"""How much of an upload the reader keeps, and the bytes the container parsers are handed.

Durations are read from the two ends of a file: the head, where containers name their
codec and often declare their length, and the tail, where a streamed file shows how far
it got. Both are bounded so that an upload of any length costs the same memory; the MP3
parser must know the head's bound too, to tell a head cut at it from a file that ends.
"""

#: First bytes kept (past any ID3v2 tag): codec headers, Xing, STREAMINFO, Info, Tracks.
HEAD_BYTES = 64 * 1024
#: Last bytes kept, at least: room for the last Ogg page, FLAC frame or MP3 tags.
TAIL_BYTES = 192 * 1024

#: What the parsers read: a chunk kept as it came, or one of the reader's own buffers.
Buf = bytes | bytearray
