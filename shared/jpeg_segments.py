"""A JPEG's metadata cut out without touching its compressed pixels (issue 27, round 8).

``strip_metadata`` rebuilds a baseline, extended or progressive Huffman JPEG from the
segments a decoder needs: quantisation and Huffman tables, restart interval, the frame
header and every scan with its entropy-coded data, in their order. Everything else goes:
APP1 (EXIF: GPS, dates, serials; XMP), APP2 (ICC profiles, multi-picture), APP13 (IPTC),
every other APPn, comments, and whatever follows the end-of-image marker. Two markers that
change how the pixels decode are written back in a fixed form, without their payload's
free text or thumbnail: a JFIF APP0 (only when the file had one: its presence tells the
decoder the three components are YCbCr) and an Adobe APP14 with the file's colour transform.

Files it does not understand (arithmetic coding, lossless or hierarchical frames, a DNL
marker, a malformed length) give ``None``: the caller decodes and re-encodes those, as
every upload was before. The stored photo is then the clinic's own compressed data, with
no second lossy generation, and costs the API no encode (~6 ms at 1024 x 768).
"""

from __future__ import annotations

import re

EOI, SOS = 0xD9, 0xDA
APP0, APP14, COM = 0xE0, 0xEE, 0xFE
# Frame headers of the Huffman-coded DCT processes (baseline, extended, progressive), tables,
# restart interval: copied as they are.
_KEPT = frozenset({0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD})
# The end of a scan's entropy-coded data: a 0xFF that is not a stuffed zero, a restart marker
# or a fill byte before a marker.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# JFIF 1.01, no units, 1:1 pixel aspect, no thumbnail.
_JFIF = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def _adobe(transform: int) -> bytes:
    """An Adobe APP14 (DCTEncode version 100, no flags) with the file's colour transform."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


def strip_metadata(raw: bytes) -> bytes | None:
    """The JPEG ``raw`` with its metadata cut out, or ``None`` where its structure is not the
    one handled here (see the module's docstring)."""
    if raw[:2] != b"\xff\xd8":
        return None
    kept: list[bytes] = []
    jfif = scanned = False
    transform: int | None = None
    position, size = 2, len(raw)
    while True:
        if position >= size or raw[position] != 0xFF:
            return None
        while position < size and raw[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= size:
            return None
        marker = raw[position]
        position += 1
        if marker == EOI:
            break
        if position + 2 > size:
            return None
        length = int.from_bytes(raw[position : position + 2], "big")
        end = position + length
        if length < 2 or end > size:
            return None
        payload = raw[position + 2 : end]
        if marker == APP0:
            jfif = jfif or payload.startswith(b"JFIF\x00")
        elif marker == APP14:
            if payload.startswith(b"Adobe") and len(payload) >= 12 and transform is None:
                transform = payload[11]
        elif 0xE1 <= marker <= 0xEF or marker == COM:
            pass  # metadata: dropped
        elif marker in _KEPT:
            kept.append(raw[position - 2 : end])
        elif marker == SOS:
            found = _SCAN_END.search(raw, end)
            if found is None:
                return None  # no end-of-image marker after the scan: truncated
            stop = found.start()
            kept.append(raw[position - 2 : stop].rstrip(b"\xff"))  # without fill bytes (data never ends in one)
            position, scanned = stop, True
            continue
        else:
            return None  # arithmetic coding, lossless or hierarchical frames, DNL, reserved
        position = end
    if not scanned:
        return None
    header = (_JFIF if jfif else b"") + (_adobe(transform) if transform is not None else b"")
    return b"\xff\xd8" + header + b"".join(kept) + b"\xff\xd9"
