"""Writes a vendor's PSKC file with python-pskc, an implementation of
RFC 6030 independent of sls, for tests/token_import.rs.

usage: pskc_write.py OUT (--password TEXT | --psk HEX)

Three tokens: a HOTP card (000101), a counter OCRA card (000102) and a
TOTP token (000103), each with a key derived from its serial, encrypted
under a PBKDF2 password or a pre-shared AES key, every value MACed.
"""

import argparse
import hashlib

import pskc

TOKENS = [
    ("000101", "hotp", {"response_length": 6, "counter": 0}),
    ("000102", "ocra", {"algorithm_suite": "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1",
                        "response_length": 6, "counter": 5}),
    ("000103", "totp", {"response_length": 8, "time_interval": 60}),
]


def key_of(serial):
    """The key sls's test expects for `serial`."""
    return hashlib.sha256(serial.encode()).digest()[:20]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--password")
    group.add_argument("--psk")
    args = parser.parse_args()
    container = pskc.PSKC()
    if args.password is not None:
        container.encryption.setup_pbkdf2(args.password, iterations=2000, key_length=16)
    else:
        container.encryption.setup_preshared_key(
            key=bytes.fromhex(args.psk), algorithm="aes128-cbc")
    for serial, algorithm, parameters in TOKENS:
        container.add_key(
            serial=serial,
            manufacturer="python-pskc",
            secret=key_of(serial),
            algorithm="urn:ietf:params:xml:ns:keyprov:pskc:" + algorithm,
            response_encoding="DECIMAL",
            **parameters,
        )
    container.write(args.out)


if __name__ == "__main__":
    main()
