/* A stand-in for a ggml fork's matmul (written for this test): it only knows
 * the upstream name ggml_vec_dot_i2_i8_s, declared here the way the fork's
 * ggml-quants.h declares it, and calls it row by row as ggml's gemv does. */
#include <stddef.h>

void ggml_vec_dot_i2_i8_s(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy,
                          size_t by, int nrc);

void standin_gemv(int n, int rows, const unsigned char *w, const signed char *q, float *out) {
    for (int r = 0; r < rows; r++) {
        ggml_vec_dot_i2_i8_s(n, out + r, 1, w + (size_t)r * (size_t)n / 4, (size_t)n, q, 0, 1);
    }
}
