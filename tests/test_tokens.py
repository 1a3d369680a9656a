"""Message-ID tokens: minted IDs verify, anything altered or foreign does not, and the key
file is kept secret."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack import tokens
from replytrack.tokens import KeyFileError, Keyring, load_keyring, mint, rotate, verify

DOMAIN = "mail.example.com"
FUZZ = settings(max_examples=200, deadline=None)
B32 = "abcdefghijklmnopqrstuvwxyz234567"

domains = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){1,3}", fullmatch=True)


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring.generate()


@FUZZ
@given(domain=domains)
def test_minted_id_verifies_and_has_the_promised_shape(ring: Keyring, domain: str) -> None:
    msgid = mint(ring, domain)
    assert verify(ring, msgid)
    assert verify(ring, f"<{msgid}>")
    assert verify(ring, f"  <{msgid}>\r\n")
    token, _, dom = msgid.partition("@")
    assert dom == domain
    assert set(token) <= set(B32) | {"1"}
    assert token == token.lower()
    assert token[0] == tokens.VERSION
    assert token[1:3] == ring.current[0]
    assert len(token) == tokens.TOKEN_LEN


def test_typical_id_is_short(ring: Keyring) -> None:
    assert len(f"<{mint(ring, 'mail.example-company.com')}>") <= 80


def test_ids_are_unique(ring: Keyring) -> None:
    ids = [mint(ring, DOMAIN) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_uppercase_domain_is_minted_lowercase(ring: Keyring) -> None:
    msgid = mint(ring, "Mail.Example.COM")
    assert msgid.endswith("@mail.example.com")
    assert verify(ring, msgid)


@FUZZ
@given(data=st.data())
def test_any_single_character_change_is_rejected(ring: Keyring, data: st.DataObject) -> None:
    msgid = mint(ring, DOMAIN)
    index = data.draw(st.integers(0, len(msgid) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != msgid[index]))
    altered = msgid[:index] + replacement + msgid[index + 1 :]
    assert not verify(ring, altered)


@FUZZ
@given(data=st.data())
def test_truncation_and_extension_are_rejected(ring: Keyring, data: st.DataObject) -> None:
    msgid = mint(ring, DOMAIN)
    token, _, domain = msgid.partition("@")
    cut = data.draw(st.integers(1, len(token) - 1))
    extra = data.draw(st.text(alphabet=B32, min_size=1, max_size=10))
    assert not verify(ring, f"{token[:cut]}@{domain}")
    assert not verify(ring, f"{token}{extra}@{domain}")
    assert not verify(ring, f"{extra}{token}@{domain}")
    assert not verify(ring, token)


@FUZZ
@given(data=st.data())
def test_case_flip_is_rejected(ring: Keyring, data: st.DataObject) -> None:
    msgid = mint(ring, DOMAIN)
    letters = [i for i, c in enumerate(msgid) if c.isalpha()]
    # Tokens are random, so draw a position independent of this token's letters.
    index = letters[data.draw(st.integers(0, 10_000)) % len(letters)]
    assert not verify(ring, msgid[:index] + msgid[index].upper() + msgid[index + 1 :])
    assert not verify(ring, msgid.upper())


def test_domain_change_and_foreign_key_are_rejected(ring: Keyring) -> None:
    msgid = mint(ring, DOMAIN)
    token = msgid.partition("@")[0]
    for other in ("example.com", "mail.example.org", "mail.example.com.evil.test"):
        assert not verify(ring, f"{token}@{other}")
    other_install = Keyring.generate()
    assert not verify(other_install, msgid)
    # Another installation whose key happens to carry the same key id still fails.
    same_kid = Keyring(keys=((ring.current[0], os.urandom(32)),))
    assert not verify(same_kid, msgid)
    assert not verify(ring, mint(other_install, DOMAIN))


def test_non_canonical_trailing_bits_are_rejected(ring: Keyring) -> None:
    # 26 bytes fill 208 bits of 210 in 42 base32 characters: the last character's two
    # low bits are padding. A token differing only there must not be a second valid form.
    msgid = mint(ring, DOMAIN)
    token, _, domain = msgid.partition("@")
    last = B32.index(token[-1])
    for low in range(1, 4):
        variant = token[:-1] + B32[last ^ low]
        assert not verify(ring, f"{variant}@{domain}")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400))
def test_verify_never_raises_on_arbitrary_text(ring: Keyring, text: str) -> None:
    assert verify(ring, text) in (False, True)


@FUZZ
@given(token=st.text(alphabet=B32 + "1", min_size=45, max_size=45), domain=domains)
def test_well_formed_forgeries_are_rejected(ring: Keyring, token: str, domain: str) -> None:
    assert not verify(ring, f"1{ring.current[0]}{token[3:]}@{domain}")


def test_verify_is_bounded_on_huge_input(ring: Keyring) -> None:
    for text in ("a" * 1_000_000, "@" * 1_000_000, "<" + "1" * 1_000_000 + "@x>"):
        assert not verify(ring, text)


def test_no_campaign_recipient_host_time_or_pid_in_the_token(ring: Keyring) -> None:
    # The token has no inputs besides the key and the domain, so nothing of the campaign
    # or recipient can be in it; same domain, same key, same instant -> different tokens.
    first, second = mint(ring, DOMAIN), mint(ring, DOMAIN)
    assert first != second
    token_a, token_b = first.partition("@")[0], second.partition("@")[0]
    # Positions 3.. are random for every token: they share no common prefix beyond chance.
    assert token_a[:3] == token_b[:3]
    common = 0
    while token_a[3 + common] == token_b[3 + common]:
        common += 1
    assert common < 6
    tokens_seen = [mint(ring, DOMAIN).partition("@")[0] for _ in range(200)]
    pid = str(os.getpid())
    host = socket.gethostname().lower()
    for token in tokens_seen:
        if len(pid) >= 4:
            assert pid not in token
        for piece in {host[i : i + 6] for i in range(max(0, len(host) - 5))}:
            if len(piece) == 6:
                assert piece not in token


def test_key_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "replytrack.secret"
    first = load_keyring(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_keyring(path)
    assert again == first
    assert verify(again, mint(first, DOMAIN))


def test_missing_key_file_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    # Only `replytrack init` creates a key: everyone else is told to run it.
    absent = tmp_path / "absent"
    with pytest.raises(KeyFileError, match=r"does not exist; run `replytrack init`"):
        load_keyring(absent)
    assert not absent.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "replytrack.secret"
    load_keyring(path, create=True)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keyring(path)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("zz\n", 1),
        ("# comment\n\nab:nothex\n", 3),
        ("ab:" + "00" * 8 + "\n", 1),  # a key shorter than 128 bits
        ("AB:" + "00" * 32 + "\n", 1),  # key ids are lowercase base32
        ("ab:" + "00" * 32 + "\nabc:" + "00" * 32 + "\n", 2),
        ("a1:" + "00" * 32 + "\n", 1),  # "1" is not in the base32 alphabet
    ],
)
def test_malformed_key_file_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "replytrack.secret"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=rf"{path}:{line}:"):
        load_keyring(path)


def test_key_file_without_keys_and_binary_key_file(tmp_path: Path) -> None:
    path = tmp_path / "replytrack.secret"
    path.write_text("# nothing here\n\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="holds no key"):
        load_keyring(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_keyring(path)


def test_rotation_keeps_old_ids_verifying_and_mints_with_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "replytrack.secret"
    old = load_keyring(path, create=True)
    old_id = mint(old, DOMAIN)
    new = rotate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert new.current[0] != old.current[0]
    assert new.keys[1:] == old.keys
    new_id = mint(new, DOMAIN)
    assert new_id[1:3] == new.current[0]
    reloaded = load_keyring(path)
    assert reloaded == new
    assert verify(reloaded, old_id)
    assert verify(reloaded, new_id)
    # A process still holding only the old key does not accept the new key's IDs.
    assert not verify(old, new_id)


def test_concurrent_first_start_keeps_one_key(tmp_path: Path) -> None:
    # Two `replytrack init` runs racing on one key file: whichever key reaches the disk,
    # both must end up with it, or replies to one side's IDs never match.
    path = tmp_path / "replytrack.secret"
    rings = []
    import threading

    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        rings.append(load_keyring(path, create=True))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = load_keyring(path)
    assert all(r == on_disk for r in rings)
