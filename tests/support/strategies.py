"""Hypothesis strategies for plain mail addresses, shared by the tests that hold a fast
path to the parser it stands in for."""

from __future__ import annotations

from hypothesis import strategies as st

# An atom of RFC 5322 atext (a sample of letters and digits, every special).
atom = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
# A dot-atom local part: atoms joined by single dots.
local_part = st.lists(atom, min_size=1, max_size=3).map(".".join)
# A domain of dot-separated labels of letters, digits and hyphens (hyphens anywhere).
domain = st.lists(
    st.text(alphabet="abcxyz019-", min_size=1, max_size=8), min_size=1, max_size=3
).map(".".join)
address = st.builds(lambda local, dom: f"{local}@{dom}", local_part, domain)
# White space around the parts.
gap = st.sampled_from(["", " ", "  ", "\t", " \t"])
