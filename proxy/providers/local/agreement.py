"""Partial captions that are never taken back: LocalAgreement over repeated passes.

While a turn is spoken, the embedded model transcribes the turn so far
again and again. A later pass may change the last words of an earlier one
(the speaker had not finished them), so a word goes out only once two
passes in a row agree on it and on every word before it, as
whisper_streaming's LocalAgreement-2 does. When the turn is committed, its
transcript (a pass over all of it, at the transcript's beam) gives the rest
of the captions. The captions are interim text: the transcript itself is the
whole pass's, which may read the confirmed words otherwise, and clients
replace the captions with it.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[^\w']+")


def _same(a: str, b: str) -> bool:
    """Whether two words are the same word, however capitalised or punctuated."""
    return _PUNCTUATION.sub("", a.lower()) == _PUNCTUATION.sub("", b.lower())


class LocalAgreement:
    """The words of one turn confirmed so far, and what each pass adds to them."""

    def __init__(self) -> None:
        self.confirmed: list[str] = []
        self._previous: list[str] | None = None

    @property
    def text(self) -> str:
        """The confirmed words as text."""
        return " ".join(self.confirmed)

    def delta(self, words: list[str]) -> str:
        """What goes out after ``words`` (from a pass over the turn so far): the new words
        this pass and the one before agree on, as text to append ("" for none)."""
        previous, self._previous = self._previous, words
        if previous is None:
            return ""
        agreed = 0
        for a, b in zip(previous, words, strict=False):
            if not _same(a, b):
                break
            agreed += 1
        done = len(self.confirmed)
        if agreed <= done or not all(map(_same, self.confirmed, words)):
            return ""
        return self._confirm(words[done:agreed])

    def finish(self, words: list[str]) -> str:
        """What goes out after the last pass over the whole turn: all it heard past the
        confirmed words."""
        done = len(self.confirmed)
        start = done
        # The final pass may split or join words differently: resume after the
        # last confirmed word where it lines up, else after as many words.
        if done and not all(map(_same, self.confirmed, words)):
            last = self.confirmed[-1]
            found = [i + 1 for i, w in enumerate(words[: done + 3]) if _same(w, last)]
            start = found[-1] if found else done
        return self._confirm(words[start:])

    def _confirm(self, words: list[str]) -> str:
        if not words:
            return ""
        text = " ".join(words)
        if self.confirmed:
            text = " " + text
        self.confirmed.extend(words)
        return text
