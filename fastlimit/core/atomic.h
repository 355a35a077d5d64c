/* 64-bit atomics on shared (mmap'ed) memory, through the GCC/Clang builtins.
 *
 * Only 8-byte, naturally aligned operations are used: they are lock-free and
 * address-free on every 64-bit target we build for, so they work across
 * processes that map the same file.  16-byte CAS is deliberately absent: GCC
 * routes it through libatomic, which may fall back to a process-local lock. */
#ifndef FASTLIMIT_ATOMIC_H
#define FASTLIMIT_ATOMIC_H

#include <stdint.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "fastlimit needs GCC or Clang __atomic builtins"
#endif

_Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics must be lock-free");

static inline int64_t fl_load_i64(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t fl_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
/* Sequentially consistent loads: the claim protocol's duplicate check needs
 * store->load ordering against other claimers (a Dekker-style handshake). */
static inline int64_t fl_load_i64_sc(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline uint64_t fl_load_u64_sc(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void fl_store_u64_sc(uint64_t *p, uint64_t v) {
    /* an exchange is a full barrier on x86 (a plain seq_cst store is too,
       but compilers may emit mov+mfence; xchg is cheaper) */
    (void)__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
/* Strong CAS.  On failure *expected receives the current value. */
static inline int fl_cas_i64(int64_t *p, int64_t *expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE);
}
static inline uint64_t fl_add_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
/* A counter with a single writer (its process's metrics stripe): a plain
 * load and store, atomic only so that readers in other processes never see
 * a torn value; no locked instruction on the hot path. */
static inline void fl_inc_owned_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void fl_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
#define fl_prefetch_w(p) __builtin_prefetch((p), 1, 3)
#define fl_likely(x) __builtin_expect(!!(x), 1)
#define fl_unlikely(x) __builtin_expect(!!(x), 0)

#endif
