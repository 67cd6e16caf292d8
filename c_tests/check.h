/* A tiny test framework and the C reference implementations the library is
 * held to: scalar I2_S packing, the exact dot, activation quantization and
 * the RFC byte re-encoding, written from the format documents. */
#ifndef BITNET_STFMA_CHECK_H
#define BITNET_STFMA_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_passed, g_failed;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (cond) {                                                   \
            g_passed++;                                               \
        } else {                                                      \
            g_failed++;                                               \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
        }                                                             \
    } while (0)

static inline int finish_tests(const char *name) {
    printf("%s: %d passed, %d failed\n", name, g_passed, g_failed);
    return g_failed ? 1 : 0;
}

/* xorshift64 */
static uint64_t rng_state = 88172645463325252ull;
static inline uint64_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* I2_S packing: element b*128 + 32*k + p sits in byte b*32 + p at bits (7-2k):(6-2k). */
static inline void ref_pack(const uint8_t *codes, size_t n, uint8_t *out) {
    memset(out, 0, n / 4);
    for (size_t e = 0; e < n; e++) {
        size_t b = e / 128, k = (e % 128) / 32, p = e % 32;
        out[b * 32 + p] |= (uint8_t)((codes[e] & 3) << (6 - 2 * k));
    }
}

static inline int64_t ref_dot(const uint8_t *codes, const int8_t *y, size_t n) {
    int64_t s = 0;
    for (size_t e = 0; e < n; e++) s += (int64_t)codes[e] * y[e];
    return s;
}

static inline uint32_t golden_h(size_t e) { return (uint32_t)((uint32_t)e * 2654435761u); }
static inline uint8_t golden_code(size_t e) { return (uint8_t)((golden_h(e) >> 16) % 3); }
static inline int8_t golden_y(size_t e) { return (int8_t)((int)((golden_h(e) >> 8) % 255) - 127); }

/* bitnet.cpp's quantize_row_i8_s, with round-half-to-even. */
static inline int32_t ref_quantize(const float *x, size_t n, int8_t *q, float *scale) {
    double max = 0.00001;
    for (size_t i = 0; i < n; i++) {
        double a = fabs((double)x[i]);
        if (a > max) max = a;
    }
    float s = (float)(127.0 / max);
    int32_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        float v = nearbyintf(x[i] * s); /* default rounding mode: ties to even */
        int c = (int)v;
        if (c > 127) c = 127;
        if (c < -128) c = -128;
        q[i] = (int8_t)c;
        sum += c;
    }
    *scale = s;
    return sum;
}

/* The RFC re-encoding of one 2-bit field: 00->10, 01->00, 10->01, 11->11. */
static inline uint8_t ref_convert(uint8_t b) {
    static const uint8_t map[4] = {2, 0, 1, 3};
    uint8_t out = 0;
    for (int f = 0; f < 4; f++) out |= (uint8_t)(map[(b >> (2 * f)) & 3] << (2 * f));
    return out;
}

#endif
