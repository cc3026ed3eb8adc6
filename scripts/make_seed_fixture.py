#!/usr/bin/env python3
"""Expected values of mome-core's seed derivation, computed independently of Rust.

The tests `step_seeds_differ_and_repeat` (crates/mome-core/src/checkpoint.rs) and
`rank_zero_keeps_the_step_seed` (crates/mome-core/tests/dist.rs) pin these
constants, so that any change of the derivation, which would break the exact
resume of existing checkpoints (a resumed run re-derives every step's seed), fails
a test. Standard library only:

    python3 scripts/make_seed_fixture.py

The derivation, as documented in mome-core:

* ``step_seed(seed, step)`` (checkpoint.rs): SHA-256 of ``b"mome-step-seed"``,
  ``seed`` as 8 little-endian bytes, ``step`` as 8 little-endian bytes; the first
  8 bytes of the digest as a little-endian ``i64``.
* ``rank_seed(step_seed, rank)`` (dist/mod.rs): ``step_seed`` itself for rank 0;
  otherwise SHA-256 of ``b"mome-rank-seed"``, ``step_seed`` (i64, 8 LE bytes),
  ``rank`` (u64, 8 LE bytes); first 8 bytes as a little-endian ``i64``.
* ``step_rng(seed, step)`` (checkpoint.rs): ``ChaCha8Rng::seed_from_u64(
  step_seed(seed, step) as u64)`` (rand_chacha 0.3 / rand_core 0.6):
  ``seed_from_u64`` fills the 32-byte key with 8 outputs of PCG32 (multiplier
  6364136223846793005, increment 11634580027462260723, XSH-RR output, each
  written little-endian), stream and counter 0; the generator returns the ChaCha
  keystream with 8 rounds as little-endian 32-bit words, and ``gen::<u64>()`` is
  ``next_u64``: word ``2i`` low, word ``2i + 1`` high.

The ChaCha block function is checked against RFC 7539's test vectors (20 rounds)
before anything is printed.
"""

import hashlib
import struct

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def to_i64(u):
    return u - (1 << 64) if u >= 1 << 63 else u


def step_seed(seed, step):
    h = hashlib.sha256()
    h.update(b"mome-step-seed")
    h.update(struct.pack("<Q", seed))
    h.update(struct.pack("<Q", step))
    return struct.unpack("<q", h.digest()[:8])[0]


def rank_seed(step_seed_value, rank):
    if rank == 0:
        return step_seed_value
    h = hashlib.sha256()
    h.update(b"mome-rank-seed")
    h.update(struct.pack("<q", step_seed_value))
    h.update(struct.pack("<Q", rank))
    return struct.unpack("<q", h.digest()[:8])[0]


def pcg32_key(state):
    """rand_core 0.6 `SeedableRng::seed_from_u64` for a 32-byte seed."""
    mul, inc = 6364136223846793005, 11634580027462260723
    key = b""
    for _ in range(8):
        state = (state * mul + inc) & M64
        xorshifted = (((state >> 18) ^ state) >> 27) & M32
        rot = state >> 59
        x = ((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & M32
        key += struct.pack("<I", x)
    return key


def rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & M32


def quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & M32
    s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32
    s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & M32
    s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32
    s[b] = rotl(s[b] ^ s[c], 7)


def chacha_block(key, words12_15, rounds):
    """One ChaCha block: 16 output words, for the given last four state words."""
    init = list(struct.unpack("<4I", b"expand 32-byte k"))
    init += list(struct.unpack("<8I", key)) + list(words12_15)
    s = init[:]
    for _ in range(rounds // 2):
        quarter(s, 0, 4, 8, 12)
        quarter(s, 1, 5, 9, 13)
        quarter(s, 2, 6, 10, 14)
        quarter(s, 3, 7, 11, 15)
        quarter(s, 0, 5, 10, 15)
        quarter(s, 1, 6, 11, 12)
        quarter(s, 2, 7, 8, 13)
        quarter(s, 3, 4, 9, 14)
    return [(a + b) & M32 for a, b in zip(s, init)]


def self_check():
    # RFC 7539 §2.3.2: key 00..1f, counter 1, nonce 00000009 0000004a 00000000.
    key = bytes(range(32))
    nonce = struct.unpack("<3I", bytes.fromhex("000000090000004a00000000"))
    out = chacha_block(key, [1, *nonce], 20)
    assert out[:4] == [0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3], out[:4]
    # RFC 7539 A.1 test vector #1: all-zero key, nonce and counter.
    out = chacha_block(bytes(32), [0, 0, 0, 0], 20)
    assert struct.pack("<4I", *out[:4]).hex() == "76b8e0ada0f13d90405d6ae55386bd28"


def chacha8_u64s(seed_u64, n):
    """The first `n` `next_u64` draws of `ChaCha8Rng::seed_from_u64(seed_u64)`."""
    key = pcg32_key(seed_u64)
    words = []
    block = 0
    while len(words) < 2 * n:
        # rand_chacha 0.3: 64-bit block counter in words 12-13, stream 0 in 14-15.
        words += chacha_block(key, [block & M32, block >> 32, 0, 0], 8)
        block += 1
    return [words[2 * i] | (words[2 * i + 1] << 32) for i in range(n)]


def main():
    self_check()
    print("// scripts/make_seed_fixture.py")
    for seed, step in [(1, 5), (1, 6), (2, 5), (3, 4)]:
        print(f"step_seed({seed}, {step}) = {step_seed(seed, step)}")
    for i, v in enumerate(chacha8_u64s(step_seed(3, 4) & M64, 2)):
        print(f"step_rng(3, 4) draw {i} (u64) = {v}")
    for s, r in [(12345, 0), (12345, 1), (12345, 2), (-7, 1)]:
        print(f"rank_seed({s}, {r}) = {rank_seed(s, r)}")
    print(f"rank_seed(step_seed(1, 5), 3) = {rank_seed(step_seed(1, 5), 3)}")


if __name__ == "__main__":
    main()
