#!/usr/bin/env python3
"""Writes a uniform prior for a vocabulary: a float32 .npy of 1/T, one entry per name line.

    python3 scripts/uniform-prior.py VOCABULARY.txt OUT.npy

The standard library only, so the evaluation scripts need no numpy.
"""
import struct
import sys

names = [l for l in open(sys.argv[1], encoding="utf-8").read().splitlines() if l.strip()]
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % len(names)
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
with open(sys.argv[2], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(struct.pack("<%df" % len(names), *([1.0 / len(names)] * len(names))))
