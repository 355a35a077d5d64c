"""The core's keyed hash is SipHash-1-3.  A reference written here from the
SipHash paper is checked against the official SipHash-2-4 vectors, then
used with 1-3 rounds against the C code."""

from hypothesis import given
from hypothesis import strategies as st

from fastlimit import _core

M = (1 << 64) - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & M


def siphash(k0, k1, data, c_rounds, d_rounds):
    v = [0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1, 0x6C7967656E657261 ^ k0,
         0x7465646279746573 ^ k1]

    def rnd():
        v[0] = (v[0] + v[1]) & M; v[1] = _rotl(v[1], 13); v[1] ^= v[0]; v[0] = _rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & M; v[3] = _rotl(v[3], 16); v[3] ^= v[2]
        v[0] = (v[0] + v[3]) & M; v[3] = _rotl(v[3], 21); v[3] ^= v[0]
        v[2] = (v[2] + v[1]) & M; v[1] = _rotl(v[1], 17); v[1] ^= v[2]; v[2] = _rotl(v[2], 32)

    tail = len(data) % 8
    blocks = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - tail, 8)]
    blocks.append(int.from_bytes(data[len(data) - tail:], "little") | ((len(data) & 0xFF) << 56))
    for m in blocks:
        v[3] ^= m
        for _ in range(c_rounds):
            rnd()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(d_rounds):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
# github.com/veorq/SipHash vectors.h, vectors_sip64[n] for message bytes 0..n-1
VECTORS_24 = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 7: 0xAB0200F58B01D137,
              8: 0x93F5F5799A932462, 15: 0xA129CA6149BE45E5, 63: 0x958A324CEB064572}


def test_reference_matches_official_siphash24_vectors():
    for n, want in VECTORS_24.items():
        assert siphash(*KEY, bytes(range(n)), 2, 4) == want


@given(st.binary(max_size=80), st.integers(0, M), st.integers(0, M))
def test_core_is_siphash13(data, k0, k1):
    assert _core.siphash13(k0, k1, data) == siphash(k0, k1, data, 1, 3)


@given(st.integers(0, M), st.integers(0, M), st.integers(0, M))
def test_word_hash_is_siphash13_of_its_little_endian_bytes(k0, k1, word):
    assert _core.siphash13_u64(k0, k1, word) == _core.siphash13(k0, k1, word.to_bytes(8, "little"))
