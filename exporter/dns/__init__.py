"""DNS wire decoding: ``decode(bytes) -> Message``, the records it returns, and mnemonics."""

from __future__ import annotations

from exporter.dns.codes import class_name, opcode_name, rcode_name, type_name
from exporter.dns.decoder import DECODE_REASONS, Answer, DecodeError, Message, Question, decode

__all__ = [
    "DECODE_REASONS",
    "Answer",
    "DecodeError",
    "Message",
    "Question",
    "class_name",
    "decode",
    "opcode_name",
    "rcode_name",
    "type_name",
]
