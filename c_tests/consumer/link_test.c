/* Checks bitnet_stfma_link() on a stand-in ggml library (standin/): the
 * library's own matmul calls ggml_vec_dot_i2_i8_s, and the result must be
 * the exact sum whichever mode was linked.
 *   REPLACE: the stand-in ggml-bitnet-mad.cpp must be gone (its counters are
 *            weak references here and must not exist): bitnet-stfma's
 *            ggml_vec_dot_i2_i8_s ran.
 *   BESIDE:  the stand-in ran, and sent the long row through the RFC hook
 *            ggml_vec_dot_i2_i8_stfma, which bitnet-stfma resolves. */
#include "../check.h"

void standin_gemv(int n, int rows, const unsigned char *w, const signed char *q, float *out);
extern int standin_mad_calls __attribute__((weak));
extern int standin_hook_calls __attribute__((weak));

static void run(int n, int rows) {
    uint8_t *codes = malloc((size_t)n * rows);
    uint8_t *w = malloc((size_t)n * rows / 4);
    int8_t *q = malloc((size_t)n);
    float *out = malloc(sizeof(float) * rows);
    for (int e = 0; e < n * rows; e++) codes[e] = golden_code((size_t)e);
    for (int e = 0; e < n; e++) q[e] = golden_y((size_t)e);
    for (int r = 0; r < rows; r++) ref_pack(codes + (size_t)r * n, (size_t)n, w + (size_t)r * n / 4);
    standin_gemv(n, rows, w, (const signed char *)q, out);
    for (int r = 0; r < rows; r++) {
        int64_t want = ref_dot(codes + (size_t)r * n, q, (size_t)n);
        CHECK(out[r] == (float)want, "n=%d row %d: %.0f, want %lld", n, r, out[r], (long long)want);
    }
    free(codes);
    free(w);
    free(q);
    free(out);
}

int main(void) {
    run(256, 3);
    run(4096, 2);
#if defined(LINK_MODE_REPLACE)
    CHECK(&standin_mad_calls == NULL, "the stand-in ggml-bitnet-mad.cpp was linked although REPLACE removes it");
#elif defined(LINK_MODE_BESIDE)
    CHECK(&standin_mad_calls != NULL && standin_mad_calls == 5, "stand-in calls: %d, want 5",
          &standin_mad_calls ? standin_mad_calls : -1);
    CHECK(&standin_hook_calls != NULL && standin_hook_calls == 2, "hook calls: %d, want 2",
          &standin_hook_calls ? standin_hook_calls : -1);
#else
#error "define LINK_MODE_REPLACE or LINK_MODE_BESIDE"
#endif
    return finish_tests("link_test");
}
