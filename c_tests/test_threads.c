/* 8 threads insert, compute with, and free cache entries concurrently; every
 * entry is found, every dot is exact, nothing is lost, and the final stats
 * are exact. A second phase hammers double frees and stale handles. */
#include "ggml-bitnet-stfma.h"

#include <pthread.h>

#include "check.h"

enum { THREADS = 8, ROUNDS = 400, N = 1024, KEEP = 5 };

static uint8_t codes[THREADS][N], w[THREADS][N / 4];
static int8_t y[N];
static int64_t want[THREADS];
static int errors[THREADS];
static ggml_bitnet_stfma_cache_handle kept[THREADS][KEEP];

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int round = 0; round < ROUNDS; round++) {
        ggml_bitnet_stfma_cache_handle h = ggml_bitnet_stfma_cache_weights(w[id], N);
        if (!h) {
            errors[id]++;
            continue;
        }
        float s = 0;
        ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, h, y);
        if (s != (float)want[id]) errors[id]++;
        const uint8_t *cw = ggml_bitnet_stfma_get_cached_weights(h);
        if (!cw || memcmp(cw, w[id], N / 4) != 0) errors[id]++;
        if (round < KEEP) {
            kept[id][round] = h; /* survives to the end */
        } else {
            ggml_bitnet_stfma_free_cached_weights(h);
            if (strlen(ggml_bitnet_stfma_last_error()) != 0) errors[id]++;
            ggml_bitnet_stfma_free_cached_weights(h); /* double free must be refused */
            if (strlen(ggml_bitnet_stfma_last_error()) == 0) errors[id]++;
        }
        size_t entries = 0, bytes = 0;
        ggml_bitnet_stfma_cache_stats(&entries, &bytes);
        if (entries < (size_t)1 || bytes != entries * (N / 4)) errors[id]++;
    }
    return NULL;
}

int main(void) {
    for (int t = 0; t < THREADS; t++) {
        for (int e = 0; e < N; e++) codes[t][e] = (uint8_t)(rng_next() % 3);
        ref_pack(codes[t], N, w[t]);
    }
    for (int e = 0; e < N; e++) y[e] = (int8_t)rng_next();
    for (int t = 0; t < THREADS; t++) want[t] = ref_dot(codes[t], y, N);

    ggml_bitnet_stfma_cache_init();
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < THREADS; t++) CHECK(errors[t] == 0, "thread %d saw %d errors", t, errors[t]);

    size_t entries = 0, bytes = 0;
    float ratio = 0;
    ggml_bitnet_stfma_get_cache_stats(&entries, &bytes, &ratio);
    CHECK(entries == THREADS * KEEP, "entries %zu, want %d (an entry was lost or leaked)", entries, THREADS * KEEP);
    CHECK(bytes == (size_t)THREADS * KEEP * (N / 4), "bytes %zu", bytes);
    CHECK(ratio == 1.0f, "ratio %f", ratio);
    for (int t = 0; t < THREADS; t++)
        for (int k = 0; k < KEEP; k++) {
            float s = 0;
            ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, kept[t][k], y);
            CHECK(s == (float)want[t], "kept handle %d/%d", t, k);
        }
    for (int t = 0; t < THREADS; t++)
        for (int k = 0; k < KEEP; k++) ggml_bitnet_stfma_free_cached_weights(kept[t][k]);
    ggml_bitnet_stfma_get_cache_stats(&entries, &bytes, &ratio);
    CHECK(entries == 0 && bytes == 0, "after freeing all: %zu %zu", entries, bytes);
    ggml_bitnet_stfma_cache_shutdown();
    return finish_tests("test_threads");
}
