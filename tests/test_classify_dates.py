"""Return dates read from out-of-office sentences in seven languages.

The notices are dated Monday 2 March 2026; a return date must lie after that day and
within a year. Written and relative dates go through dateparser, numeric dates through
explicit day-first / month-first reasoning.
"""

from __future__ import annotations

import datetime as dt

import pytest

from replytrack.classify.dates import read_return_date

TODAY = dt.date(2026, 3, 2)

CASES = [
    ("en", "I'm out of the office and will be back on Monday 9th March.", "2026-03-09"),
    ("en", "Returning Tuesday 10 March.", "2026-03-10"),
    ("en", "I'll be back 3/16.", "2026-03-16"),
    ("en", "I am on leave from 2 March to 13 March inclusive.", "2026-03-13"),
    ("en", "I am travelling until the 20th.", "2026-03-20"),
    ("en", "I will return on March 23, 2026.", "2026-03-23"),
    ("en", "Back in the office on Wednesday.", "2026-03-04"),
    ("en", "I am away until 2026-03-18 with limited access.", "2026-03-18"),
    ("en", "I am out of the office until 5 January 2026.", None),
    ("de", "Ich bin bis einschließlich 13. März nicht im Büro.", "2026-03-13"),
    ("de", "Ab Montag, 16. März bin ich wieder erreichbar.", "2026-03-16"),
    ("de", "Ich bin vom 02.03. bis 13.03.2026 im Urlaub.", "2026-03-13"),
    ("de", "Ich bin bis Freitag nicht erreichbar.", "2026-03-06"),
    ("de", "Ich bin am 13.3. wieder da.", "2026-03-13"),
    ("fr", "Je serai de retour le lundi 16 mars.", "2026-03-16"),
    ("fr", "Je suis en congés jusqu'au 13/03/2026.", "2026-03-13"),
    ("fr", "Absente du 2 au 13 mars.", "2026-03-13"),
    ("es", "Estaré de vacaciones hasta el lunes 16 de marzo.", "2026-03-16"),
    ("es", "Regreso el 16/03.", "2026-03-16"),
    ("es", "Estoy fuera de la oficina del 2 al 13 de marzo.", "2026-03-13"),
    ("it", "Rientrerò lunedì 16 marzo.", "2026-03-16"),
    ("it", "Sono in ferie fino al 13/03/2026.", "2026-03-13"),
    ("pt", "Estarei de férias até 16 de março.", "2026-03-16"),
    ("pt", "Volto dia 16/03.", "2026-03-16"),
    ("nl", "Ik ben terug op maandag 16 maart.", "2026-03-16"),
    ("nl", "Ik ben afwezig t/m 13-03-2026.", "2026-03-13"),
    ("nl", "Vanaf 16 maart ben ik weer aanwezig.", "2026-03-16"),
]


@pytest.mark.parametrize(("lang", "text", "expected"), CASES, ids=[c[1][:40] for c in CASES])
def test_return_date(lang: str, text: str, expected: str | None) -> None:
    found = read_return_date("Out of office", text, TODAY)
    assert (str(found) if found else None) == expected


def test_subject_date_is_read() -> None:
    """Lotus Notes puts the date in the subject only."""
    found = read_return_date(
        "AUTO: Erika Mustermann is out of the office (returning 16/03/2026)", "", TODAY
    )
    assert found == dt.date(2026, 3, 16)


def test_quoted_lines_are_ignored() -> None:
    found = read_return_date("Out of office", "> I am back on 20 March.\nAway.", TODAY)
    assert found is None


def test_times_are_not_dates() -> None:
    assert read_return_date("Out of office", "Back at 10.30 tomorrow-ish.", TODAY) != dt.date(
        2026, 10, 30
    )
