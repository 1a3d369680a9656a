"""Screening and matching of threading headers (pure, with a real store for lookups)."""

from __future__ import annotations

from replytrack.milter import match as matching
from replytrack.tokens import Keyring, mint
from tests.support.milter_records import DOMAIN, record_sent


def test_in_reply_to_is_strongest(store, keyring):
    older = record_sent(store, keyring, to=["ann@acme.example"], step=1)
    newer = record_sent(store, keyring, to=["ann@acme.example"], step=2)
    headers = [("In-Reply-To", f"<{older}>"), ("References", f"<{older}> <{newer}>")]
    screened = matching.screen(headers, keyring=keyring, domain=DOMAIN)
    found = matching.match(screened, store.find_sent)
    assert found is not None
    assert found.method == matching.IN_REPLY_TO
    assert found.primary.message_id == older
    assert [s.message_id for s in found.sent] == [older, newer]


def test_references_newest_first(store, keyring):
    older = record_sent(store, keyring, to=["ann@acme.example"], step=1)
    newer = record_sent(store, keyring, to=["ann@acme.example"], step=2)
    screened = matching.screen(
        [("References", f"<{older}> <x@y.example> <{newer}>")], keyring=keyring, domain=DOMAIN
    )
    found = matching.match(screened, store.find_sent)
    assert found is not None and found.method == matching.REFERENCES
    assert found.primary.message_id == newer


def test_forged_and_foreign_key_tokens_are_screened_out(keyring):
    other_installation = mint(Keyring.generate(), DOMAIN)
    genuine = mint(keyring, DOMAIN)
    tampered = genuine[:5] + ("a" if genuine[5] != "a" else "b") + genuine[6:]
    screened = matching.screen(
        [("References", f"<{other_installation}> <{tampered}> <{genuine}>")],
        keyring=keyring,
        domain=DOMAIN,
    )
    assert [c.message_id for c in screened.candidates] == [genuine]
    assert screened.candidates[0].verified
    assert set(screened.forged) == {other_installation, tampered}


def test_foreign_ids_are_candidates_as_original_client_ids(keyring):
    screened = matching.screen(
        [("In-Reply-To", "<CAF=abc@mail.gmail.com>")], keyring=keyring, domain=DOMAIN
    )
    assert [(c.message_id, c.verified) for c in screened.candidates] == [
        ("CAF=abc@mail.gmail.com", False)
    ]


def test_hostile_references_are_bounded_but_our_token_still_found(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    junk = " ".join(f"<j{i}@junk.example>" for i in range(5000))
    headers = [("References", f"<{mid}> {junk}")]
    seen: list[int] = []

    def find_sent(ids):
        seen.append(len(ids))
        return store.find_sent(ids)

    screened = matching.screen(headers, keyring=keyring, domain=DOMAIN)
    found = matching.match(screened, find_sent)
    assert seen and seen[0] <= matching.MAX_LOOKUPS + 1
    assert any(e.startswith("lookups-capped") for e in screened.evidence)
    # Within the first 1,000 IDs our token is found, however many unverified IDs surround it.
    assert found is not None and found.primary.message_id == mid
    # Beyond that bound nothing is read: the work per message stays bounded.
    headers = [("References", f"{junk} <{mid}>")]
    found = matching.match(matching.screen(headers, keyring=keyring, domain=DOMAIN), find_sent)
    assert found is None


def test_no_candidates_no_lookup(keyring):
    def find_sent(ids):
        raise AssertionError("no lookup expected")

    screened = matching.screen([("Subject", "hi")], keyring=keyring, domain=DOMAIN)
    assert matching.match(screened, find_sent) is None
