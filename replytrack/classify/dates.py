"""Read the return date from an out-of-office notice.

Only a few candidate sentences are looked at: those with a return cue
("until", "back on", "bis", "jusqu'au", "hasta", "fino al", "até", "tot", ...).
Numeric dates are read here, with explicit day-first / month-first reasoning;
written and relative dates ("Monday 18th March", "22. März", "next Monday",
"in two weeks") are read by the ``dateparser`` library, which is slow, so it
only ever sees those short sentences.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

# A return date further ahead than this is more likely a misread (or a
# sabbatical that should not pause a campaign for longer anyway).
HORIZON_DAYS = 366
MAX_CANDIDATES = 12  # sentences scanned for numeric dates (cheap)
MAX_PARSER_CALLS = 5  # sentences handed to dateparser (slow)
MAX_SENTENCE = 240
MAX_SCAN = 4000

# Return cues by language: the sentence that holds one of these holds the date.
_CUES: dict[str, str] = {
    "en": r"\b(?:until|till|til|through|thru|back|return|returning|returns|away from|"
    r"out from|off from|reachable again|available again|from)\b",
    # Ranges ("du 2 au 13 mars", "vom 2. bis 13. März") name the last day of absence.
    "fr-range": r"\bdu\b.{1,30}\bau\b",
    "es-range": r"\bdel\b.{1,30}\bal\b",
    "it-range": r"\bdal\b.{1,30}\bal\b",
    "de": r"\b(?:bis|zurück|wieder|ab dem|ab|rückkehr)\b",
    "fr": r"\b(?:jusqu|retour|reviendrai|rentre|rentrerai|à partir du|dès le)\w*",
    "es": r"\b(?:hasta|regreso|regresaré|vuelvo|volveré|de vuelta|a partir del)\b",
    "it": r"\b(?:fino|rientro|rientrerò|ritorno|tornerò|di ritorno|a partire dal|dal)\b",
    "pt": r"\b(?:até|regresso|regressarei|volto|voltarei|retorno|de volta|a partir de)\b",
    "nl": r"\b(?:tot|t/m|terug|weer aanwezig|vanaf)\b",
}
_CUE_RES = [(lang.split("-")[0], re.compile(p, re.I)) for lang, p in _CUES.items()]

# Words that tell the language of a sentence, for dateparser and for the
# day/month order of numeric dates (only US English writes month first).
_LANG_HINTS: dict[str, re.Pattern[str]] = {
    "de": re.compile(r"\b(?:ich|bin|bis|zum|nicht|büro|wieder|und|urlaub|vom|ab)\b", re.I),
    "fr": re.compile(r"\b(?:je|suis|serai|jusqu|retour|bureau|absente?|congés?|du|au)\b", re.I),
    "es": re.compile(r"\b(?:estoy|estaré|hasta|oficina|regreso|vacaciones|del)\b", re.I),
    "it": re.compile(r"\b(?:sono|sarò|fino|ufficio|rientro|rientrerò|ferie|dal)\b", re.I),
    "pt": re.compile(r"\b(?:estou|estarei|até|escritório|regresso|férias|volto|dia)\b", re.I),
    "nl": re.compile(r"\b(?:ik|ben|tot|kantoor|terug|vanaf|afwezig|weer)\b", re.I),
}

_NUMERIC = re.compile(
    r"(?<![\d.:/-])(?:(\d{4})-(\d{1,2})-(\d{1,2})|(\d{1,2})([./-])(\d{1,2})(?:\5(\d{4}|\d{2}))?(\.)?)(?![\d:/-])"
)
_WORDY = re.compile(r"[^\W\d_]{3,}|\d", re.U)


def _plausible(day: dt.date, today: dt.date) -> bool:
    return today < day <= today + dt.timedelta(days=HORIZON_DAYS)


# A year-less date up to this many days before today is a date in this year that has
# passed (the start of the absence), not a date next year.
RECENT_PAST_DAYS = 31


def _make(year: int | None, month: int, day: int, today: dt.date) -> dt.date | None:
    """A date from parts; a year-less date is the next one after ``today`` unless it lies
    in the recent past (then it is this year's, and not a return date)."""
    try:
        if year is None:
            found = dt.date(today.year, month, day)
            if found < today - dt.timedelta(days=RECENT_PAST_DAYS):
                found = dt.date(today.year + 1, month, day)
            return found
        if year < 100:
            year += 2000
        return dt.date(year, month, day)
    except ValueError:
        return None


def _numeric_dates(sentence: str, lang: str, today: dt.date) -> list[dt.date]:
    """Numeric dates in a sentence, each resolved to one plausible date."""
    found: list[dt.date] = []
    for match in _NUMERIC.finditer(sentence):
        if match.group(1):
            day = _make(int(match.group(1)), int(match.group(2)), int(match.group(3)), today)
            if day and _plausible(day, today):
                found.append(day)
            continue
        first, sep, second = int(match.group(4)), match.group(5), int(match.group(6))
        year = int(match.group(7)) if match.group(7) else None
        # Without a year only "d.m." (trailing dot) or "d/m" read as dates: "10.30"
        # is far more often a time of day.
        if year is None and sep == "." and not match.group(8):
            continue
        if year is None and sep == "-":
            continue
        options: list[dt.date] = []
        day_first = _make(year, second, first, today) if second <= 12 and first <= 31 else None
        month_first = _make(year, first, second, today) if first <= 12 and second <= 31 else None
        if sep == "." or lang != "en":
            # Dotted dates and dates in languages other than English are day-first.
            options = [d for d in (day_first,) if d]
            if not options and month_first and first > 12:
                options = [month_first]
        else:
            options = [d for d in (day_first, month_first) if d]
        options = [d for d in options if _plausible(d, today)]
        if options:
            # When both readings are plausible, the nearer one wins: absences are
            # usually short, and a mail names a return date that is near.
            found.append(min(options))
    return found


@lru_cache(maxsize=16)
def _settings(today: dt.date) -> dict[str, Any]:
    base = dt.datetime(today.year, today.month, today.day, 12, 0)
    return {
        "PREFER_DATES_FROM": "future",
        "RELATIVE_BASE": base,
        "RETURN_AS_TIMEZONE_AWARE": False,
        "STRICT_PARSING": False,
    }


_YEAR = re.compile(r"\b(?:19|20)\d\d\b|'\d\d\b")


def _written_dates(sentence: str, languages: tuple[str, ...], today: dt.date) -> list[dt.date]:
    """Written and relative dates in one sentence, read by dateparser."""
    try:
        from dateparser.search import search_dates
    except ImportError:  # pragma: no cover - dateparser is a declared dependency.
        return []
    try:
        results = search_dates(sentence, languages=list(languages), settings=dict(_settings(today)))
    except Exception:  # a parser fault means no date, not a failed verdict
        return []
    found: list[dt.date] = []
    for fragment, when in results or []:
        text = fragment.strip()
        # Two-letter hits ("Je" read as jeudi) and bare numbers are noise.
        if len(text) < 4 or not _WORDY.search(text):
            continue
        if re.fullmatch(r"[\d\s.,:/-]+", text):
            continue  # Numeric forms are read by _numeric_dates with explicit reasoning.
        day: dt.date | None = when.date()
        if day is not None and not _YEAR.search(text):
            # dateparser moves any year-less date that is not after today into next
            # year; the start of an absence ("from 2 March" on 2 March) is not one.
            day = _make(None, day.month, day.day, today)
        if day is not None and _plausible(day, today):
            found.append(day)
    return found


def _languages(sentence: str, cue_language: str) -> tuple[str, ...]:
    """Languages to read a sentence in: the one its words suggest, the cue's, English."""
    scores = {lang: len(p.findall(sentence)) for lang, p in _LANG_HINTS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    ordered = [best] if scores[best] >= 2 else []
    ordered += [cue_language, "en"]
    return tuple(dict.fromkeys(ordered))


def _sentences(text: str) -> list[str]:
    """Paragraphs joined and cut into sentences, quoted lines left out."""
    lines = [ln for ln in text[:MAX_SCAN].split("\n") if not ln.lstrip().startswith(">")]
    flat = re.sub(r"[ \t]+", " ", "\n".join(lines))
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", flat):
        paragraph = paragraph.replace("\n", " ")
        # Cut after ! ? ; and after a full stop that ends a word (not "22." or "Mr.").
        pieces.extend(re.split(r"(?<=[!?;])\s+|(?<=[^\W\d]{3}\.)\s+(?=[A-ZÀ-Ý])", paragraph))
    return [p.strip()[:MAX_SENTENCE] for p in pieces if p.strip()]


def warm_up() -> None:
    """Load dateparser's language data now (a one-off cost, see bench/README.md) rather
    than on the first out-of-office mail a daemon sees; the milter calls this in a thread
    at start."""
    read_return_date(
        "Out of office", "I am out of the office until 3 March 2031.", dt.date(2031, 1, 1)
    )


def read_return_date(subject: str, text: str, today: dt.date) -> dt.date | None:
    """The return date an out-of-office notice states, or None.

    ``subject`` and ``text`` are the notice's subject and its own body text;
    ``today`` is the day the notice was written (dates must lie after it and
    within HORIZON_DAYS).
    """
    candidates: list[tuple[str, tuple[str, ...]]] = []
    for sentence in [subject[:MAX_SENTENCE], *_sentences(text)]:
        for lang, cue in _CUE_RES:
            if cue.search(sentence):
                candidates.append((sentence, _languages(sentence, lang)))
                break
        if len(candidates) >= MAX_CANDIDATES:
            break
    parser_calls = 0
    for sentence, languages in candidates:
        dates = _numeric_dates(sentence, languages[0], today)
        if not dates and parser_calls < MAX_PARSER_CALLS:
            parser_calls += 1
            dates = _written_dates(sentence, languages, today)
        if dates:
            # The last date a sentence names is the return: "from 1 January until
            # 31 March", "out until Friday, back on Monday 9 March".
            return dates[-1]
    return None
