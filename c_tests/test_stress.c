/* Stress: 8 threads x N cache operations each (default 100000; argv[1]
 * overrides), mixing inserts, tensor inserts, lookups, cached dots, frees,
 * double frees, frees of handles owned by other threads, and stats reads.
 * Every thread keeps its own ledger; the final stats must equal the sum of
 * the ledgers exactly. */
#include "ggml-bitnet-stfma.h"

#include <pthread.h>

#include "check.h"

enum { THREADS = 8, N = 512, LIVE = 16 };

static uint8_t w[N / 4], tensor[2 * N / 4 + 32];
static int8_t y[N];
static float want, want_t0;
static long ops_per_thread = 100000;
static ggml_bitnet_stfma_cache_handle shared_slot[THREADS];

typedef struct {
    int id;
    long errors;
    size_t live_entries, live_bytes;
} ledger;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *worker(void *arg) {
    ledger *L = arg;
    uint64_t rs = 0x9E3779B97F4A7C15ull * (uint64_t)(L->id + 1);
    ggml_bitnet_stfma_cache_handle live[LIVE] = {0};
    size_t live_size[LIVE] = {0};
    for (long op = 0; op < ops_per_thread; op++) {
        int slot = (int)(next(&rs) % LIVE);
        switch (next(&rs) % 6) {
        case 0:
        case 1: /* insert (row or tensor) into an empty slot */
            if (!live[slot]) {
                int as_tensor = (int)(next(&rs) & 1);
                live[slot] = as_tensor ? ggml_bitnet_stfma_cache_tensor(tensor, sizeof tensor, 2, N)
                                       : ggml_bitnet_stfma_cache_weights(w, N);
                if (!live[slot]) {
                    L->errors++;
                    break;
                }
                live_size[slot] = as_tensor ? (size_t)4 * N / 4 : (size_t)N / 4; /* 2 rows pad to a 4-row tile */
                L->live_entries++;
                L->live_bytes += live_size[slot];
            }
            break;
        case 2: { /* cached dot */
            float s = 0;
            ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, live[slot], y);
            if (live[slot] && !(s == want || s == want_t0)) L->errors++;
            if (!live[slot] && !isnan(s)) L->errors++;
            break;
        }
        case 3: /* free, then a double free that must be refused */
            if (live[slot]) {
                ggml_bitnet_stfma_free_cached_weights(live[slot]);
                if (*ggml_bitnet_stfma_last_error()) L->errors++;
                ggml_bitnet_stfma_free_cached_weights(live[slot]);
                if (!*ggml_bitnet_stfma_last_error()) L->errors++;
                L->live_entries--;
                L->live_bytes -= live_size[slot];
                live[slot] = NULL;
            }
            break;
        case 4: { /* poke at another thread's published handle: read-only use */
            ggml_bitnet_stfma_cache_handle h = __atomic_load_n(&shared_slot[next(&rs) % THREADS], __ATOMIC_RELAXED);
            int64_t r;
            if (h && ggml_bitnet_stfma_tensor_info(h, &r, NULL, NULL) == 0 && r != 1 && r != 2) L->errors++;
            break;
        }
        default: { /* stats are consistent snapshots */
            size_t e = 0, b = 0;
            float ratio = 0;
            ggml_bitnet_stfma_get_cache_stats(&e, &b, &ratio);
            if (e > 0 && (ratio < 1.0f || ratio > 2.0f)) L->errors++;
            __atomic_store_n(&shared_slot[L->id], live[slot], __ATOMIC_RELAXED);
            break;
        }
        }
    }
    __atomic_store_n(&shared_slot[L->id], NULL, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) ops_per_thread = atol(argv[1]);
    uint8_t codes[2 * N];
    for (int e = 0; e < 2 * N; e++) codes[e] = (uint8_t)(rng_next() % 3);
    ref_pack(codes, N, w);
    ref_pack(codes, 2 * N, tensor);
    float one = 1.0f;
    memcpy(tensor + 2 * N / 4, &one, 4);
    for (int e = 0; e < N; e++) y[e] = (int8_t)rng_next();
    want = (float)ref_dot(codes, y, N);
    want_t0 = want; /* a tensor entry's row 0 is the same codes */

    ggml_bitnet_stfma_cache_shutdown();
    pthread_t th[THREADS];
    ledger L[THREADS];
    for (int t = 0; t < THREADS; t++) {
        L[t] = (ledger){.id = t};
        pthread_create(&th[t], NULL, worker, &L[t]);
    }
    size_t entries = 0, bytes = 0;
    long errors = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        entries += L[t].live_entries;
        bytes += L[t].live_bytes;
        errors += L[t].errors;
    }
    CHECK(errors == 0, "%ld errors across threads", errors);
    size_t e = 0, b = 0;
    ggml_bitnet_stfma_get_cache_stats(&e, &b, NULL);
    CHECK(e == entries, "entries %zu, ledgers say %zu", e, entries);
    CHECK(b == bytes, "bytes %zu, ledgers say %zu", b, bytes);
    ggml_bitnet_stfma_cache_shutdown();
    ggml_bitnet_stfma_get_cache_stats(&e, &b, NULL);
    CHECK(e == 0 && b == 0, "shutdown left %zu entries", e);
    printf("%d threads x %ld operations\n", THREADS, ops_per_thread);
    return finish_tests("test_stress");
}
