"""Real speech of known text: espeak-ng sentences as 16 kHz mono 16-bit PCM.

Each sentence carries a word no other sentence has, so a transcript shows
whether each was heard exactly once. espeak-ng is a Debian package
(scripts/test installs it); tests that need it skip without it. The
benchmarks make their long recordings from the same sentences
(scripts/speech.py).
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from typing import Any

from proxy.audio.wav_header import wav_bytes

RATE = 16_000

#: Sentences of a meeting.
SENTENCES = (
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "The first item on the agenda is the budget for the new warehouse in the north.",
    "Our sales team reported that orders grew by twelve percent over the last quarter.",
    "Please remember that the quarterly report is due on the last Friday of the month.",
    "The engineering group finished the migration of the billing system last week.",
    "We still need a volunteer to organise the summer picnic for the whole company.",
    "Customers have asked for a simpler way to change the address on their accounts.",
    "The marketing campaign for the autumn collection will start in early September.",
    "Maria will present the results of the customer survey after the short break.",
    "We decided to replace the old printers on the second floor with two new ones.",
    "The delivery trucks will be serviced on Tuesday, so plan your shipments around it.",
    "Security reminds everyone to lock their computers when they leave their desks.",
    "The new coffee machine in the kitchen has already broken down twice this month.",
    "Our partners in Germany would like to visit the factory in the middle of October.",
    "The training sessions for the new software will take place every Thursday morning.",
    "Peter suggested that we move the weekly meeting to the afternoon from next month.",
    "The hiring committee interviewed seven candidates for the open design position.",
    "Please send your holiday requests to the office manager before the end of June.",
    "The water leak in the basement was repaired by the plumbers yesterday evening.",
    "We expect the final version of the contract to arrive from the lawyers tomorrow.",
    "The charity run raised more than four thousand dollars for the local hospital.",
    "Next week the parking lot will be closed for two days while it is repainted.",
    "The support team answered nearly three hundred calls during the storm on Monday.",
    "Let us finish today with a quick round of questions before we all go to lunch.",
)
#: A word each sentence has and no other.
WORDS = (
    "planning",
    "warehouse",
    "orders",
    "quarterly",
    "billing",
    "picnic",
    "address",
    "autumn",
    "survey",
    "printer",
    "trucks",
    "computers",
    "coffee",
    "germany",
    "training",
    "peter",
    "hiring",
    "holiday",
    "basement",
    "contract",
    "charity",
    "parking",
    "storm",
    "lunch",
)


def espeak() -> str | None:
    """The espeak-ng program, if installed."""
    return shutil.which("espeak-ng")


@functools.cache
def say(sentence: str, voice: str = "en-us", words_per_minute: int = 165) -> bytes:
    """``sentence`` spoken by espeak-ng (``voice``, at ``words_per_minute``), as 16 kHz mono
    16-bit PCM."""
    import av

    program = espeak()
    if program is None:
        raise RuntimeError("espeak-ng is not installed")
    wav = subprocess.run(
        [program, "-v", voice, "-s", str(words_per_minute), "--stdout", sentence],
        capture_output=True,
        check=True,
    ).stdout
    out = bytearray()
    container: Any
    with av.open(io.BytesIO(wav)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        frames = [*container.decode(container.streams.audio[0]), None]
        for frame in frames:
            for pcm in resampler.resample(frame):
                out += bytes(pcm.planes[0])[: pcm.samples * 2]
    return bytes(out)


def pause(seconds: float) -> bytes:
    """Silence, as PCM."""
    return bytes(int(seconds * RATE) * 2)


def wav(pcm: bytes) -> bytes:
    """PCM as a WAV file."""
    return wav_bytes(pcm)


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, heard: str) -> int:
    """Words substituted, dropped or added in ``heard`` against ``reference`` (edit
    distance over words)."""
    ref, hyp = words_of(reference), words_of(heard)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, said in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != said))
    return row[-1]
