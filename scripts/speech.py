"""Recordings of known text for the benchmarks: espeak-ng sentences with pauses, 16 kHz WAV.

The tests' sentences (tests/helpers/speech.py), each spoken once by
espeak-ng (a Debian package, installed with apt-get when missing); a
recording of any length cycles through them with pauses of 0.4 to 1.3 s
between, written straight to disk (a 2-hour one is 230 MB, never held
whole). :func:`word_error_rate` scores a transcript against the text spoken.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import ROOT, system_binary

sys.path.insert(0, str(ROOT))

from proxy.audio.wav_header import wav_header
from tests.helpers.speech import SENTENCES, pause, say, word_errors, words_of

PAUSES_S = (0.4, 0.9, 0.6, 1.3, 0.5, 0.8)


@dataclass(frozen=True)
class SpeechSet:
    """Sentences no test or setting was tuned on, and the espeak-ng voice and rate that
    say them: quality figures are measured on several, since a setting chosen on one
    set of sentences need not hold on another."""

    name: str
    voice: str
    words_per_minute: int
    sentences: tuple[str, ...]

    def spoken(self) -> list[bytes]:
        """Each sentence as 16 kHz PCM."""
        system_binary("espeak-ng", "espeak-ng")
        return [say(s, self.voice, self.words_per_minute) for s in self.sentences]


SPEECH_SETS = (
    SpeechSet(
        "news, en-us at 150 wpm",
        "en-us",
        150,
        (
            "The city council approved a plan to build a new bridge across the river.",
            "Heavy rain is expected along the coast for the rest of the weekend.",
            "Scientists discovered a rare species of frog in the mountain forest.",
            "The museum will open an exhibition about ancient Egyptian art next spring.",
            "Local farmers say the dry summer has damaged most of their wheat.",
            "The national team won the final after a dramatic penalty shootout.",
        ),
    ),
    SpeechSet(
        "kitchen, en-gb at 180 wpm",
        "en-gb",
        180,
        (
            "Preheat the oven and grease a large baking tray with a little butter.",
            "Chop the onions finely and fry them gently until they turn golden.",
            "Add the tomatoes, a pinch of salt and some fresh basil leaves.",
            "Let the sauce simmer slowly while you cook the pasta in boiling water.",
            "Whisk the eggs with sugar until the mixture becomes pale and fluffy.",
            "Serve the soup hot with a slice of warm bread on the side.",
        ),
    ),
    SpeechSet(
        "travel, en-gb-x-rp at 195 wpm",
        "en-gb-x-rp",
        195,
        (
            "Our flight was delayed because of a storm over the northern mountains.",
            "The hotel room had a beautiful view of the harbour and the old lighthouse.",
            "We rented bicycles and rode along the canal to the village market.",
            "The train to the capital leaves every hour from the central station.",
            "Remember to bring your passport and a warm jacket for the evening.",
            "The guide showed us a hidden garden behind the cathedral walls.",
        ),
    ),
)


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


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's word count."""
    return word_errors(reference, hypothesis) / max(1, len(words_of(reference)))
