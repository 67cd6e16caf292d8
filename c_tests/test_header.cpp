// The header from C++17: it must compile with extern "C" linkage, and the
// calls below must link against the library (CTest links this file).
#include "ggml-bitnet-stfma.h"

#include <cstdio>
#include <cstring>
#include <vector>

int main() {
    std::vector<uint8_t> w(32, 0xAA);  // 128 weights, all +1
    std::vector<int8_t> y(128, 1);
    float s = 0.0f;
    ggml_vec_dot_i2_i8_stfma(128, &s, 0, w.data(), 0, y.data(), 0, 1);
    ggml_bitnet_stfma_cache_handle h = ggml_bitnet_stfma_cache_weights(w.data(), 128);
    float c = 0.0f;
    ggml_vec_dot_i2_i8_s_stfma_cached(128, &c, h, y.data());
    ggml_bitnet_stfma_free_cached_weights(h);
    const bool ok = s == 256.0f && c == 256.0f && std::strlen(ggml_bitnet_stfma_last_error()) == 0 &&
                    GGML_BITNET_STFMA_THRESHOLD > 0;
    std::printf("test_header_cxx: %d passed, %d failed\n", ok ? 1 : 0, ok ? 0 : 1);
    return ok ? 0 : 1;
}
