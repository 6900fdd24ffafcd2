"""Recordings of known text for the benchmarks: espeak-ng sentences with pauses, 16 kHz WAV.

The tests' sentences (tests/helpers/speech.py), each spoken once by
espeak-ng (a Debian package, installed with apt-get when missing); a
recording of any length cycles through them with pauses of 0.4 to 1.3 s
between, written straight to disk (a 2-hour one is 230 MB, never held
whole). :func:`word_error_rate` scores a transcript against the text spoken.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from benchlib import ROOT, system_binary

sys.path.insert(0, str(ROOT))

from proxy.audio.wav_header import wav_header
from tests.helpers.speech import SENTENCES, pause, say

PAUSES_S = (0.4, 0.9, 0.6, 1.3, 0.5, 0.8)


def recording(directory: Path, seconds: float) -> tuple[Path, str]:
    """A WAV of about ``seconds`` of speech in ``directory`` (made once), and its text."""
    path = directory / f"speech-{seconds:g}s.wav"
    text_path = path.with_suffix(".txt")
    if path.exists() and text_path.exists():
        return path, text_path.read_text()
    system_binary("espeak-ng", "espeak-ng")
    spoken = [say(sentence) for sentence in SENTENCES]
    directory.mkdir(parents=True, exist_ok=True)
    said: list[str] = []
    written = 0
    with path.open("wb") as out:
        out.write(wav_header(0))
        while written < seconds * 32_000:
            n = len(said)
            for pcm in (spoken[n % len(spoken)], pause(PAUSES_S[n % len(PAUSES_S)])):
                out.write(pcm)
                written += len(pcm)
            said.append(SENTENCES[n % len(SENTENCES)])
        out.seek(0)
        out.write(wav_header(written))
    text = " ".join(said)
    text_path.write_text(text)
    return path, text


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's word count."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, heard in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != heard))
    return row[-1] / max(1, len(ref))
