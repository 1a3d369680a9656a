"""Enhanced status codes (RFC 3463) on every reply the proxy sends. Pure: no I/O.

aiosmtpd answers many conditions itself, in words of its own and without an enhanced status
code ("500 Error: bad syntax", "502 EXPN not implemented"). ``ProxySMTP.push`` passes every
reply through :func:`with_enhanced_code`: a stock reply we know is replaced by our own
wording with the right code, a stock reply that echoes the client (an unknown command, a
VRFY argument) by one that does not, and anything else still lacking a code gets the
class's ``X.0.0`` ("other undefined status"), so a future aiosmtpd reply cannot slip out
without one.

RFC 2034 section 3 (4) asks for the code on "the text part of all 2xx, 4xx, and 5xx SMTP
responses other than the initial greeting and any response to HELO or EHLO"; those, and the
3xx intermediate replies (354 to DATA, 334 AUTH challenges), which it does not cover, are
left as they are. The replies to HELP are 2xx and 5xx, so they carry one too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# aiosmtpd's fixed replies, and ours instead (the same reply code unless a better one is
# named in the comment).
STOCK_REPLIES = {
    "552 Error: Too much mail data": "552 5.3.4 message too big for this proxy",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 message size exceeds the fixed maximum"
    ),
    "503 Error: need MAIL command": "503 5.5.1 need MAIL command first",
    "503 Error: need RCPT command": "503 5.5.1 need RCPT command first",
    "503 Error: nested MAIL command": "503 5.5.1 nested MAIL command",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 line too long (RFC 5321 4.5.3.1.6)",
    "503 Error: send HELO first": "503 5.5.1 send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 send EHLO first",
    "501 Syntax: MAIL FROM: <address>": "501 5.5.4 syntax: MAIL FROM:<address>",
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": (
        "501 5.5.4 syntax: MAIL FROM:<address> [SP <mail-parameters>]"
    ),
    "501 Syntax: RCPT TO: <address>": "501 5.5.4 syntax: RCPT TO:<address>",
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": (
        "501 5.5.4 syntax: RCPT TO:<address> [SP <mail-parameters>]"
    ),
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": (
        "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME"
    ),
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 SMTPUTF8 takes no arguments",
    "501 Error: SMTPUTF8 disabled": "501 5.5.4 SMTPUTF8 is not offered",
    "555 MAIL FROM parameters not recognized or not implemented": (
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    ),
    # The command line itself: too long, empty, or a command name that is not ASCII.
    "500 Command line too long": "500 5.5.2 command line too long",
    "500 Error: bad syntax": "500 5.5.2 syntax error: no command, or a command name not in ASCII",
    "500 Error: strict ASCII mode": "500 5.6.7 non-ASCII text needs the SMTPUTF8 parameter",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "252 Cannot VRFY user, but will accept message and attempt delivery": (
        "252 2.5.0 cannot VRFY user, but will accept mail for it and attempt delivery"
    ),
    "501 Syntax: VRFY <address>": "501 5.5.4 syntax: VRFY <address>",
    "501 Syntax: HELO hostname": "501 5.5.4 syntax: HELO hostname",
    "501 Syntax: EHLO hostname": "501 5.5.4 syntax: EHLO hostname",
    "501 Syntax: QUIT": "501 5.5.4 syntax: QUIT (no argument)",
    "501 Syntax: RSET": "501 5.5.4 syntax: RSET (no argument)",
    "501 Syntax: DATA": "501 5.5.4 syntax: DATA (no argument)",
    "501 Syntax: STARTTLS": "501 5.5.4 syntax: STARTTLS (no argument)",
    # Said only when no certificate is configured: STARTTLS is not offered, and trying
    # again cannot help, so a permanent "not implemented" rather than aiosmtpd's 454.
    "454 TLS not available": "502 5.5.1 STARTTLS is not offered here",
    "220 Ready to start TLS": "220 2.0.0 ready to start TLS",
    "554 Command refused due to lack of security": (
        "554 5.7.0 command refused: the TLS handshake failed"
    ),
    "530 Must issue a STARTTLS command first": "530 5.7.0 must issue a STARTTLS command first",
    "500 Error: command 'AUTH' not recognized": "503 5.5.1 AUTH is offered after EHLO only",
    "503 Already authenticated": "503 5.5.1 already authenticated",
    "501 Not enough value": "501 5.5.4 syntax: AUTH mechanism [initial-response]",
    "501 Too many values": "501 5.5.4 syntax: AUTH mechanism [initial-response]",
}

_COMMAND_NAME = re.compile(r"[A-Z][A-Z0-9-]{0,19}")


def _unknown_command(match: re.Match[str]) -> str:
    # The command name is the client's: named back only when it is a plain word, so no
    # control character or line end of it can reach the client's reply stream.
    name = match.group(1)
    shown = f" {name}" if _COMMAND_NAME.fullmatch(name) else ""
    return f"500 5.5.2 command{shown} not recognized"


# aiosmtpd's replies with a variable part: the pattern, and our reply from its match.
_DYNAMIC: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r'500 Error: command "(.*)" not recognized', re.S), _unknown_command),
    # VRFY with an argument aiosmtpd cannot parse: the argument is not echoed back.
    (re.compile(r"502 Could not VRFY .*", re.S), lambda m: "501 5.1.3 VRFY: bad address syntax"),
    # HELP and HELP COMMAND (RFC 5321 4.2.2: 214 is the help reply).
    (re.compile(r"250 Supported commands: (.*)"), lambda m: f"214 2.0.0 commands: {m[1]}"),
    (re.compile(r"250 Syntax: (.*)"), lambda m: f"214 2.0.0 syntax: {m[1]}"),
    (
        re.compile(r"501 Supported commands: (.*)"),
        lambda m: f"504 5.5.4 no help for that command; commands: {m[1]}",
    ),
    # aiosmtpd's own fallback when even our handle_exception failed: an internal error is
    # a 451 (the client retries), never a permanent 500.
    (
        re.compile(r"500 Error: (\(.*|Cannot describe error)", re.S),
        lambda m: "451 4.3.0 internal error; try again later",
    ),
]

_REPLY_LINE = re.compile(r"([245])([0-9]{2})([ -]?)(.*)", re.S)
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")


def with_enhanced_code(reply: str) -> str:
    """``reply`` (one or more CRLF-separated lines) with an enhanced status code on each
    2xx, 4xx and 5xx line; see the module doc. Not for the greeting or HELO/EHLO replies."""
    known = STOCK_REPLIES.get(reply)
    if known is not None:
        return known
    for pattern, make in _DYNAMIC:
        match = pattern.fullmatch(reply)
        if match is not None:
            return make(match)
    lines = reply.split("\r\n")
    # A multi-line reply whose first line has a code gives it to the lines that lack one.
    first = _REPLY_LINE.fullmatch(lines[0])
    found = _ENHANCED.match(first[4]) if first else None
    return "\r\n".join(_line_with_code(line, found[0] if found else None) for line in lines)


def _line_with_code(line: str, code: str | None) -> str:
    parts = _REPLY_LINE.fullmatch(line)
    if parts is None:
        return line  # 1xx/3xx, or not a reply line at all: left as it is
    klass, rest, sep, text = parts.groups()
    if _ENHANCED.match(text):
        return line
    if code is None or code[0] != klass:
        code = f"{klass}.0.0"
    return f"{klass}{rest}{sep or ' '}{code} {text}".rstrip()
