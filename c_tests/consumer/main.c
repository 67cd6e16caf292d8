/* Uses the library the way a ggml fork would: the upstream dot on raw I2_S
 * bytes, a cached tensor, and a finished matmul. Exits non-zero on any
 * mismatch. */
#include <stdio.h>
#include <string.h>

#include "ggml-bitnet-stfma.h"

int main(void) {
    enum { ROWS = 8, COLS = 256 };
    static unsigned char tensor[ROWS * COLS / 4 + 32];
    memset(tensor, 0xAA, ROWS * COLS / 4); /* every weight +1 */
    float scale = 0.5f;
    memcpy(tensor + ROWS * COLS / 4, &scale, sizeof scale);
    static signed char q[COLS];
    memset(q, 1, sizeof q);
    float s = 0.0f;
    /* codes are 2: sum = 2*256 (a build without the upstream names has only the STFMA hook) */
#ifdef GGML_BITNET_STFMA_UPSTREAM_SYMBOLS
    ggml_vec_dot_i2_i8_s(COLS, &s, 0, tensor, 0, q, 0, 1);
#else
    ggml_vec_dot_i2_i8_stfma(COLS, &s, 0, tensor, 0, q, 0, 1);
#endif
    ggml_bitnet_stfma_cache_handle h = ggml_bitnet_stfma_cache_tensor(tensor, sizeof tensor, ROWS, COLS);
    float x[COLS], y[ROWS];
    for (int i = 0; i < COLS; i++) x[i] = 1.0f;
    int rc = ggml_bitnet_stfma_matmul(h, x, 1, y, 2);
    ggml_bitnet_stfma_free_cached_weights(h);
    /* x quantizes to q = 127, act_sum = 127*256; y = (2*127*256 - 127*256)/127*0.5 = 128 */
    int ok = s == 512.0f && rc == 0 && y[0] == 128.0f && y[ROWS - 1] == 128.0f;
    printf("consumer (kernel %s, library %s): %s\n", ggml_bitnet_stfma_kernel_name(), ggml_bitnet_stfma_version(),
           ok ? "1 passed, 0 failed" : "0 passed, 1 failed");
    return ok ? 0 : 1;
}
