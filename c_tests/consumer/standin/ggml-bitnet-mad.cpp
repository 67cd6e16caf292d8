// A stand-in for bitnet.cpp's src/ggml-bitnet-mad.cpp, written for this test
// (none of bitnet.cpp's code): the file name is what bitnet_stfma_link()
// looks for. It defines the upstream ggml_vec_dot_i2_i8_s as a scalar loop
// and, like the STFMA RFC's patched file, hands rows of at least
// GGML_BITNET_STFMA_THRESHOLD elements to ggml_vec_dot_i2_i8_stfma.
// It counts both, so the test can tell which code ran.
#include <stddef.h>
#include <stdint.h>

#include "ggml-bitnet-stfma.h"

extern "C" {

int standin_mad_calls = 0;
int standin_hook_calls = 0;

void ggml_vec_dot_i2_i8_s(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy,
                          size_t by, int nrc) {
    standin_mad_calls++;
    if (n >= GGML_BITNET_STFMA_THRESHOLD) {
        standin_hook_calls++;
        ggml_vec_dot_i2_i8_stfma(n, s, bs, vx, bx, vy, by, nrc);
        return;
    }
    const uint8_t *x = static_cast<const uint8_t *>(vx);
    const int8_t *y = static_cast<const int8_t *>(vy);
    long long sum = 0;
    for (int e = 0; e < n; e++) {
        int b = e / 128, k = (e % 128) / 32, p = e % 32;
        sum += ((x[b * 32 + p] >> (6 - 2 * k)) & 3) * y[e];
    }
    *s = static_cast<float>(sum);
}

}  // extern "C"
