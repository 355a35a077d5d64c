/* SipHash-1-3 with a 64-bit output (the variant CPython uses for str since
 * 3.11), as the keyed fingerprint of table keys.  A keyed PRF keeps
 * attacker-chosen keys (IPs, tokens) from piling into one bucket. */
#ifndef FASTLIMIT_SIPHASH_H
#define FASTLIMIT_SIPHASH_H

#include <stdint.h>
#include <string.h>

#define FL_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define FL_SIPROUND                                                   \
    do {                                                              \
        v0 += v1; v1 = FL_ROTL(v1, 13); v1 ^= v0; v0 = FL_ROTL(v0, 32); \
        v2 += v3; v3 = FL_ROTL(v3, 16); v3 ^= v2;                     \
        v0 += v3; v3 = FL_ROTL(v3, 21); v3 ^= v0;                     \
        v2 += v1; v1 = FL_ROTL(v1, 17); v1 ^= v2; v2 = FL_ROTL(v2, 32); \
    } while (0)

/* State setup, one compression round per 8-byte block m, and the last
 * block b (holding the length) with the three finalization rounds. */
#define FL_SIP_INIT(k0, k1)                                 \
    uint64_t v0 = 0x736f6d6570736575ULL ^ (k0);             \
    uint64_t v1 = 0x646f72616e646f6dULL ^ (k1);             \
    uint64_t v2 = 0x6c7967656e657261ULL ^ (k0);             \
    uint64_t v3 = 0x7465646279746573ULL ^ (k1)
#define FL_SIP_BLOCK(m) do { v3 ^= (m); FL_SIPROUND; v0 ^= (m); } while (0)
#define FL_SIP_FINISH(b)                                    \
    do {                                                    \
        FL_SIP_BLOCK(b);                                    \
        v2 ^= 0xff;                                         \
        FL_SIPROUND;                                        \
        FL_SIPROUND;                                        \
        FL_SIPROUND;                                        \
    } while (0)

static inline uint64_t fl_read_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline __attribute__((always_inline)) uint64_t fl_siphash13(
        uint64_t k0, uint64_t k1, const unsigned char *in, size_t len) {
    FL_SIP_INIT(k0, k1);
    uint64_t b = ((uint64_t)len) << 56;
    const unsigned char *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8)
        FL_SIP_BLOCK(fl_read_le64(in));
    switch (len & 7) {
    case 7: b |= ((uint64_t)in[6]) << 48; /* fall through */
    case 6: b |= ((uint64_t)in[5]) << 40; /* fall through */
    case 5: b |= ((uint64_t)in[4]) << 32; /* fall through */
    case 4: b |= ((uint64_t)in[3]) << 24; /* fall through */
    case 3: b |= ((uint64_t)in[2]) << 16; /* fall through */
    case 2: b |= ((uint64_t)in[1]) << 8;  /* fall through */
    case 1: b |= ((uint64_t)in[0]); break;
    case 0: break;
    }
    FL_SIP_FINISH(b);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The same function on one 64-bit word (integer keys), without the byte loop:
 * equal to fl_siphash13 over the word's 8 little-endian bytes. */
static inline __attribute__((always_inline)) uint64_t fl_siphash13_u64(
        uint64_t k0, uint64_t k1, uint64_t m) {
    FL_SIP_INIT(k0, k1);
    FL_SIP_BLOCK(m);
    FL_SIP_FINISH(((uint64_t)8) << 56);
    return v0 ^ v1 ^ v2 ^ v3;
}

#endif
