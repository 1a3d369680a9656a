"""A raw-socket SMTP client for tests whose bytes smtplib would rewrite (dot-stuffing,
bare CR/LF, smuggling sequences)."""

from __future__ import annotations

import socket
from typing import BinaryIO


def read_reply(reader: BinaryIO) -> bytes:
    """The last line of one (possibly multi-line) SMTP reply."""
    line = reader.readline()
    while line[3:4] == b"-":
        line = reader.readline()
    return line


def open_data(
    port: int,
    *,
    sender: bytes = b"a@example.org",
    recipient: bytes = b"b@example.net",
    check: bool = True,
) -> tuple[socket.socket, BinaryIO]:
    """Connect to 127.0.0.1:port and go as far as DATA's 354; the caller sends the content.

    With ``check`` every reply on the way must be 2xx or 3xx.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    reader = sock.makefile("rb")
    read_reply(reader)
    for command in (
        b"EHLO client.test\r\n",
        b"MAIL FROM:<" + sender + b">\r\n",
        b"RCPT TO:<" + recipient + b">\r\n",
        b"DATA\r\n",
    ):
        sock.sendall(command)
        reply = read_reply(reader)
        if check:
            assert reply[:1] in (b"2", b"3"), reply
    return sock, reader
