#!/usr/bin/env python3
"""Distinct copies of one WebAssembly module: the same code, a different module hash.

Usage: with-custom-section.py SOURCE SECTION OUT_DIR NAME...
Writes OUT_DIR/NAME.wasm for every NAME: SOURCE with a custom section SECTION appended whose
payload is NAME. A runtime ignores custom sections, so each copy runs exactly as SOURCE does,
but no two share a compiled module or a cache entry.
"""
import os
import sys


def leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    source, section, out = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    base = open(source, "rb").read()
    for name in sys.argv[4:]:
        payload = leb128(len(section)) + section + name.encode()
        with open(os.path.join(out, name + ".wasm"), "wb") as f:
            f.write(base + b"\x00" + leb128(len(payload)) + payload)


if __name__ == "__main__":
    main()
