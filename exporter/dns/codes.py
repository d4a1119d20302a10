"""DNS mnemonics: RR types, response codes, classes and opcodes.

The tables follow the IANA "Domain Name System (DNS) Parameters" registries
(https://www.iana.org/assignments/dns-parameters). Every assigned value has its
mnemonic; unassigned, reserved and private-use values render as the decimal number
(``str(value)``), which keeps the span name ``DNS <QTYPE>`` low-cardinality and stable.

Where the registry lists two names for one value, the one in common use is chosen:
type 255 is ``ANY`` (the registry writes ``*``), rcode 16 is ``BADVERS`` (also
``BADSIG`` in TSIG context), class 255 is ``ANY`` (``*``).
"""

from __future__ import annotations

from typing import Final

TYPE_NAMES: Final[dict[int, str]] = {
    1: "A",
    2: "NS",
    3: "MD",
    4: "MF",
    5: "CNAME",
    6: "SOA",
    7: "MB",
    8: "MG",
    9: "MR",
    10: "NULL",
    11: "WKS",
    12: "PTR",
    13: "HINFO",
    14: "MINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    19: "X25",
    20: "ISDN",
    21: "RT",
    22: "NSAP",
    23: "NSAP-PTR",
    24: "SIG",
    25: "KEY",
    26: "PX",
    27: "GPOS",
    28: "AAAA",
    29: "LOC",
    30: "NXT",
    31: "EID",
    32: "NIMLOC",
    33: "SRV",
    34: "ATMA",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    38: "A6",
    39: "DNAME",
    40: "SINK",
    41: "OPT",
    42: "APL",
    43: "DS",
    44: "SSHFP",
    45: "IPSECKEY",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    49: "DHCID",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    53: "SMIMEA",
    55: "HIP",
    56: "NINFO",
    57: "RKEY",
    58: "TALINK",
    59: "CDS",
    60: "CDNSKEY",
    61: "OPENPGPKEY",
    62: "CSYNC",
    63: "ZONEMD",
    64: "SVCB",
    65: "HTTPS",
    66: "DSYNC",
    67: "HHIT",
    68: "BRID",
    99: "SPF",
    100: "UINFO",
    101: "UID",
    102: "GID",
    103: "UNSPEC",
    104: "NID",
    105: "L32",
    106: "L64",
    107: "LP",
    108: "EUI48",
    109: "EUI64",
    128: "NXNAME",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    253: "MAILB",
    254: "MAILA",
    255: "ANY",
    256: "URI",
    257: "CAA",
    258: "AVC",
    259: "DOA",
    260: "AMTRELAY",
    261: "RESINFO",
    262: "WALLET",
    263: "CLA",
    264: "IPN",
    32768: "TA",
    32769: "DLV",
}

RCODE_NAMES: Final[dict[int, str]] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    11: "DSOTYPENI",
    16: "BADVERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}

CLASS_NAMES: Final[dict[int, str]] = {
    1: "IN",
    3: "CH",
    4: "HS",
    254: "NONE",
    255: "ANY",
}

OPCODE_NAMES: Final[dict[int, str]] = {
    0: "QUERY",
    1: "IQUERY",
    2: "STATUS",
    4: "NOTIFY",
    5: "UPDATE",
    6: "DSO",
}


def type_name(t: int) -> str:
    """``"A"``, ``"AAAA"``, ``"HTTPS"``, ...; ``str(t)`` for an unassigned value."""
    name = TYPE_NAMES.get(t)
    return name if name is not None else str(t)


def rcode_name(r: int) -> str:
    """``"NOERROR"``, ``"NXDOMAIN"``, ``"BADVERS"``, ...; ``str(r)`` for an unassigned value."""
    name = RCODE_NAMES.get(r)
    return name if name is not None else str(r)


def class_name(c: int) -> str:
    """``"IN"``, ``"CH"``, ``"HS"``, ``"NONE"``, ``"ANY"``; ``str(c)`` otherwise."""
    name = CLASS_NAMES.get(c)
    return name if name is not None else str(c)


def opcode_name(o: int) -> str:
    """``"QUERY"``, ``"NOTIFY"``, ``"UPDATE"``, ...; ``str(o)`` otherwise."""
    name = OPCODE_NAMES.get(o)
    return name if name is not None else str(o)
