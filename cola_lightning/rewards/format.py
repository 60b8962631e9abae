"""Where a response states its final answer, and a format reward for stating one.

The forms, in priority order: `\\boxed{...}` (or `\\fbox`), a `#### ...` line, "The answer is
...", an `Answer: ...` (or `A: ...`) line. `cola_lightning.rewards.math` grades what they hold.
"""

from __future__ import annotations

import re

# Words that are math, not prose, in an answer ("2 pi", "x in [0, 1]", "3 or 4").
MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp"}
MATH_WORDS |= {"infty", "inf", "infinity", "or", "and", "mod", "cup", "cap", "in"}

_BOXED = re.compile(r"\\(?:boxed|fbox)\b\s*")
# A markdown "#### Step 1" heading is not an answer: the line must not open with a word.
_HASHES = re.compile(r"(?<!#)####(?!#)(?![ \t]*[A-Za-z]{2})[ \t]*(.+)")
_ANSWER_IS = re.compile(r"\banswer\s+is\b[\s:*_]*(.+)", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"\banswer\b[*_ \t]*:[\s*_]*(.+)", re.IGNORECASE)
_A_LINE = re.compile(r"^[ \t>*_]*A[ \t]*:[\s*_]*(.+)", re.MULTILINE)
# Where a sentence stating the answer ends: a full stop (not a decimal point), or a clause.
_SENTENCE_END = re.compile(
    r"\.(?:\s|$)|(?:^|,?\s+)(?:because|since|which|so|but|not|hence|thus|therefore|where|as)\b"
)


def _braced(text: str, start: int) -> str | None:
    """The `{...}` group opening at `start` (nested braces balanced), or None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{}` / `\\fbox{}` (or `\\boxed 5`)."""
    # Only the last few: each unclosed one is scanned to the end of the text.
    for match in list(_BOXED.finditer(text))[:-9:-1]:
        end = match.end()
        if text.startswith("{", end):
            content = _braced(text, end)
        else:
            bare = re.match(r"[^\s$]+", text[end:])
            content = bare.group(0) if bare else None
        if content and content.strip():
            return content
    return None


def _clean(answer: str) -> str:
    """Strip markdown emphasis, closing punctuation and `$` / `\\(` / `\\[` delimiters."""
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip().strip("*_").strip()
        # "!" only after a non-digit: "18!" may be a factorial, "$18$!" is emphasis.
        answer = re.sub(r"(?:[.,;:]|(?<=\D)!)+$", "", answer).strip()
        answer = re.sub(r"^(?:\$+|\\[(\[])|(?:\$+|\\[)\]])$", "", answer)
    return answer


def _statement(text: str) -> str:
    """The answer part of "The answer is X. I hope..." style text: up to the sentence's end."""
    cut = _SENTENCE_END.search(text)
    # An empty head ("what the answer is. First, ...") means this sentence states no answer.
    return _clean(text[: cut.start()] if cut else text)


def _few_words(answer: str) -> bool:
    """At most two words besides math, so "18 square feet" is an answer.

    "Janet has 16 eggs" is prose (say an "A:" line opening the reasoning): the fallbacks after
    it find the answer better.
    """
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", answer))
    return sum(word.lower() not in MATH_WORDS for word in words) <= 2


def _last_statement(pattern: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """(position, answer) of the last match of `pattern` whose answer is short and non-empty."""
    for match in reversed(list(pattern.finditer(text))):
        answer = _statement(match.group(1))
        if answer and _few_words(answer):
            return match.start(), answer
    return None


def stated_answer(response: str, short_label: bool = True) -> str | None:
    """The answer a response states in a recognised form, without the last-number fallback.

    Args:
        response: model output.
        short_label: also accept an `A:` line (few-shot "Q: ... A: ..." style).

    Returns:
        The last `\\boxed{}`, else the last `####` line, else the last "the answer is ...",
        else the last `Answer:` (or `A:`) line; None when the response states none of them.
    """
    boxed = _last_boxed(response)
    if boxed is not None:
        return _clean(boxed) or None
    for pattern in (_HASHES, _ANSWER_IS):
        found = _last_statement(pattern, response)
        if found:
            return found[1]
    labelled = [_last_statement(_ANSWER_LINE, response)]
    if short_label:
        labelled.append(_last_statement(_A_LINE, response))
    labelled = [found for found in labelled if found]
    return max(labelled)[1] if labelled else None


def score(response: str, reference: str | None = None) -> float:
    """1.0 when the response states a final answer, else 0.0; `reference` is ignored.

    Recognised forms: `\\boxed{...}`, a `#### ...` line, "The answer is ...", an `Answer: ...`
    line; each needs a non-empty answer. A bare number in running text does not count.
    """
    del reference  # the same signature as the other scorers, so they can be swapped
    try:
        return 1.0 if stated_answer(response, short_label=False) else 0.0
    except Exception:  # a reward must not crash training on odd text
        return 0.0
