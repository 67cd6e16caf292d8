/* The C ABI against the C reference: golden vectors, random dots for many n
 * and every kernel this CPU runs, both nrc conventions, quantize_i2_s,
 * activation quantization, the RFC byte conversion, the cache API, whole
 * matmuls, and error behaviour. */
#include "ggml-bitnet-stfma.h"

#include "check.h"

static const char *KERNELS[] = {"scalar", "avx2", "avx512", "neon", "neon-dotprod"};

static float dot1(int n, const uint8_t *w, const int8_t *y) {
    float s = -1.0f;
    ggml_vec_dot_i2_i8_s(n, &s, 0, w, 0, y, 0, 1);
    return s;
}

static void test_golden(void) {
    static const struct { size_t n; int64_t dot, ysum; } cases[] = {
        {128, -30, -83}, {256, 220, -27}, {4096, 1322, 87},
        {4224, 1043, 89}, {6912, 1829, 182}, {8192, 2121, -160},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].n;
        uint8_t *codes = malloc(n), *w = malloc(n / 4);
        int8_t *y = malloc(n);
        int64_t ysum = 0;
        for (size_t e = 0; e < n; e++) {
            codes[e] = golden_code(e);
            y[e] = golden_y(e);
            ysum += y[e];
        }
        ref_pack(codes, n, w);
        if (n == 128) CHECK(w[0] == 0x21 && w[1] == 0x1a && w[2] == 0x91 && w[3] == 0x19, "first bytes");
        CHECK(ysum == cases[c].ysum, "n=%zu ysum %lld", n, (long long)ysum);
        CHECK(dot1((int)n, w, y) == (float)cases[c].dot, "golden n=%zu got %f", n, dot1((int)n, w, y));
        free(codes), free(w), free(y);
    }
}

static void test_random_and_extremes(void) {
    static const int ns[] = {128, 256, 384, 640, 1024, 1152, 2048, 2560, 4096, 6912, 8192, 16384};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        int n = ns[i];
        uint8_t *codes = malloc(n), *w = malloc(n / 4);
        int8_t *y = malloc(n);
        for (int rep = 0; rep < 4; rep++) {
            for (int e = 0; e < n; e++) {
                codes[e] = (uint8_t)(rng_next() % 3);
                y[e] = (int8_t)rng_next();
            }
            ref_pack(codes, n, w);
            float got = dot1(n, w, y);
            CHECK(got == (float)ref_dot(codes, y, n), "random n=%d got %f want %lld", n, got, (long long)ref_dot(codes, y, n));
        }
        /* all code 2 times 127 and times -128: upstream's int16 accumulation wraps here */
        memset(codes, 2, n);
        ref_pack(codes, n, w);
        memset(y, 127, n);
        CHECK(dot1(n, w, y) == (float)(254 * (int64_t)n), "all-2 x 127 n=%d got %f", n, dot1(n, w, y));
        memset(y, 0x80, n);
        CHECK(dot1(n, w, y) == (float)(-256 * (int64_t)n), "all-2 x -128 n=%d got %f", n, dot1(n, w, y));
        free(codes), free(w), free(y);
    }
    /* the documented overflow case */
    uint8_t w[1024];
    int8_t y[4096];
    memset(w, 0xAA, sizeof w);
    memset(y, 127, sizeof y);
    CHECK(dot1(4096, w, y) == 1040384.0f, "n=4096 all-2 x 127");
}

static void test_nrc(void) {
    enum { N = 2560, R = 7, C = 8 };
    static uint8_t codes[R][N], w[R][N / 4];
    static int8_t y[C][N + 64]; /* padded column stride */
    for (int r = 0; r < R; r++) {
        for (int e = 0; e < N; e++) codes[r][e] = (uint8_t)(rng_next() % 3);
        ref_pack(codes[r], N, w[r]);
    }
    for (int c = 0; c < C; c++)
        for (int e = 0; e < N; e++) y[c][e] = (int8_t)rng_next();
    /* nrc weight rows (nrc % 4 != 0): row r at vx + r*bx/4, result to s[r] */
    for (int nrc = 1; nrc <= R; nrc++) {
        if (nrc > 1 && nrc % 4 == 0) continue;
        float s[R];
        ggml_vec_dot_i2_i8_s(N, s, 1, w, N, y[0], 0, nrc);
        for (int r = 0; r < nrc; r++)
            CHECK(s[r] == (float)ref_dot(codes[r], y[0], N), "rows nrc=%d r=%d", nrc, r);
    }
    /* activation-parallel (nrc % 4 == 0): column c at vy + c*by, result to s[c*bs] */
    for (int nrc = 4; nrc <= C; nrc += 4) {
        float s[C * 3];
        for (int i = 0; i < C * 3; i++) s[i] = -7.0f;
        ggml_vec_dot_i2_i8_s(N, s, 3, w[2], 0, y, sizeof y[0], nrc);
        for (int c = 0; c < nrc; c++)
            CHECK(s[c * 3] == (float)ref_dot(codes[2], y[c], N), "acts nrc=%d c=%d", nrc, c);
        CHECK(s[1] == -7.0f && s[2] == -7.0f, "wrote outside s[c*bs]");
    }
    /* the RFC hook name gives the same */
    float a, b;
    ggml_vec_dot_i2_i8_s(N, &a, 0, w[3], 0, y[3], 0, 1);
    ggml_vec_dot_i2_i8_stfma(N, &b, 0, w[3], 0, y[3], 0, 1);
    CHECK(a == b, "stfma hook differs");
}

static void test_quantize_i2_s(void) {
    enum { ROWS = 3, COLS = 256, NW = ROWS * COLS };
    float src[NW];
    uint8_t codes[NW], want[NW / 4];
    for (int e = 0; e < NW; e++) {
        int t = (int)(rng_next() % 3) - 1;
        src[e] = 0.4375f * (float)t;
        codes[e] = (uint8_t)(t + 1);
    }
    src[5] = 1e-7f; /* below 1e-6: zero */
    codes[5] = 1;
    ref_pack(codes, NW, want);
    uint8_t dst[NW / 4 + 32 + 16];
    memset(dst, 0xEE, sizeof dst);
    size_t got = quantize_i2_s(src, dst, ROWS, COLS, NULL);
    CHECK(got == NW / 4 + 32, "returned %zu", got);
    CHECK(memcmp(dst, want, NW / 4) == 0, "packed bytes differ");
    float scale;
    memcpy(&scale, dst + NW / 4, 4);
    CHECK(scale == 0.4375f, "scale %f", scale);
    CHECK(dst[NW / 4 + 32] == 0xEE, "wrote past the returned size");
    CHECK(quantize_i2_s(src, dst, ROWS, 100, NULL) == 0, "n_per_row not a multiple of 128 accepted");
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "no error message");
    CHECK(quantize_i2_s(NULL, dst, ROWS, COLS, NULL) == 0, "NULL src accepted");
}

static void test_activations(void) {
    enum { N = 1000 };
    float x[N];
    int8_t q[N], qr[N];
    for (int i = 0; i < N; i++) x[i] = (float)((int64_t)(rng_next() % 20001) - 10000) / 3791.0f;
    x[17] = 0.5f / (127.0f / 2.6378f); /* a near-tie */
    float scale, sr;
    int32_t sum;
    CHECK(ggml_bitnet_stfma_quantize_activations(x, N, q, &scale, &sum) == GGML_BITNET_STFMA_OK, "rc");
    int32_t sum_r = ref_quantize(x, N, qr, &sr);
    CHECK(scale == sr && sum == sum_r && memcmp(q, qr, N) == 0, "activation quantization differs");
    CHECK(ggml_bitnet_stfma_quantize_activations(x, 0, q, &scale, &sum) == GGML_BITNET_STFMA_ERR_INVALID, "n=0");
    CHECK(ggml_bitnet_stfma_quantize_activations(NULL, N, q, &scale, &sum) == GGML_BITNET_STFMA_ERR_NULL, "NULL x");
}

static void test_convert(void) {
    for (int b = 0; b < 256; b++)
        CHECK(convert_bitnet_to_stfma_byte((uint8_t)b) == ref_convert((uint8_t)b), "byte %#x", b);
    CHECK(convert_bitnet_to_stfma_byte(0x1B) == 0x87 && convert_bitnet_to_stfma_byte(0xE4) == 0xD2, "golden");
    uint8_t in[256], out[256];
    for (int b = 0; b < 256; b++) in[b] = (uint8_t)b;
    convert_bitnet_to_stfma_array(in, out, 256);
    for (int b = 0; b < 256; b++) CHECK(out[b] == ref_convert((uint8_t)b), "array %d", b);
    convert_bitnet_to_stfma_array(in, in, 256); /* in place */
    CHECK(memcmp(in, out, 256) == 0, "in place");
}

static void test_cache(void) {
    ggml_bitnet_stfma_cache_init();
    ggml_bitnet_stfma_cache_init(); /* twice: no-op */
    size_t entries = 99, bytes = 99;
    float ratio = -1;
    ggml_bitnet_stfma_cache_shutdown();
    ggml_bitnet_stfma_get_cache_stats(&entries, &bytes, &ratio);
    CHECK(entries == 0 && bytes == 0 && ratio == 0.0f, "empty stats %zu %zu %f", entries, bytes, ratio);

    enum { N = 4096 };
    static uint8_t codes[N], w[N / 4];
    static int8_t y[N];
    for (int e = 0; e < N; e++) codes[e] = (uint8_t)(rng_next() % 3), y[e] = (int8_t)rng_next();
    ref_pack(codes, N, w);
    ggml_bitnet_stfma_cache_handle h = ggml_bitnet_stfma_cache_weights(w, N);
    CHECK(h != NULL, "cache_weights: %s", ggml_bitnet_stfma_last_error());
    const uint8_t *cw = ggml_bitnet_stfma_get_cached_weights(h);
    CHECK(cw != NULL && cw != w && memcmp(cw, w, N / 4) == 0, "cached copy of a row");
    float s = 0, want = (float)ref_dot(codes, y, N);
    ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, h, y);
    CHECK(s == want, "cached dot %f want %f", s, want);
    ggml_vec_dot_i2_i8_s_stfma_cached(N / 2, &s, h, y);
    CHECK(s == (float)ref_dot(codes, y, N / 2), "cached prefix dot");
    ggml_vec_dot_i2_i8_s_stfma_cached(N + 128, &s, h, y);
    CHECK(isnan(s) && strlen(ggml_bitnet_stfma_last_error()) > 0, "n past the entry");
    /* the RFC's calling pattern: hybrid with the handle, with raw bytes, cached */
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, (const void *)h, y, true);
    CHECK(s == want, "hybrid with the handle %f want %f: %s", s, want, ggml_bitnet_stfma_last_error());
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N / 2, &s, (const void *)h, y, true);
    CHECK(s == (float)ref_dot(codes, y, N / 2), "hybrid with the handle, prefix");
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, w, y, false);
    CHECK(s == want, "hybrid with raw bytes");
    ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, h, y);
    CHECK(s == want, "cached after hybrid");
    /* extension: the source address of a live entry reads the caller's bytes */
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, w, y, true);
    CHECK(s == want, "hybrid with the source address");
    /* the source bytes reused for other weights: the current result, never the cached one */
    {
        uint8_t saved = w[0];
        uint8_t c0[4];
        for (int k = 0; k < 4; k++) c0[k] = codes[k * 32];
        w[0] ^= 0xFF; /* the four codes of byte 0 (elements 0, 32, 64, 96) change */
        for (int k = 0; k < 4; k++) codes[k * 32] = (uint8_t)((w[0] >> (6 - 2 * k)) & 3);
        float now = (float)ref_dot(codes, y, N);
        ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, w, y, true);
        CHECK(s == now, "hybrid on reused source bytes gave %f, want %f", s, now);
        ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, h, y);
        CHECK(s == want, "the entry keeps its copy");
        w[0] = saved;
        for (int k = 0; k < 4; k++) codes[k * 32] = c0[k];
    }
    /* neither a handle nor a cached source: an error, nothing read through it */
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, (const void *)(uintptr_t)0x10, y, true);
    CHECK(isnan(s) && strlen(ggml_bitnet_stfma_last_error()) > 0, "hybrid with garbage");
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, (const void *)((uintptr_t)h + 16), y, true);
    CHECK(isnan(s) && strlen(ggml_bitnet_stfma_last_error()) > 0, "hybrid with a never-issued handle");
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, NULL, y, true);
    CHECK(isnan(s), "hybrid with NULL");
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, w, y, false);
    CHECK(s == want && strlen(ggml_bitnet_stfma_last_error()) == 0, "error cleared");

    /* a whole tensor: 10 rows x 640 plus scale */
    enum { ROWS = 10, COLS = 640 };
    static uint8_t tc[ROWS * COLS], tensor[ROWS * COLS / 4 + 32];
    for (int e = 0; e < ROWS * COLS; e++) tc[e] = (uint8_t)(rng_next() % 3);
    ref_pack(tc, ROWS * COLS, tensor);
    float tscale = 1.75f;
    memcpy(tensor + ROWS * COLS / 4, &tscale, 4);
    ggml_bitnet_stfma_cache_handle t = ggml_bitnet_stfma_cache_tensor(tensor, sizeof tensor, ROWS, COLS);
    CHECK(t != NULL, "cache_tensor: %s", ggml_bitnet_stfma_last_error());
    int64_t r = 0, c = 0;
    float sc = 0;
    CHECK(ggml_bitnet_stfma_tensor_info(t, &r, &c, &sc) == 0 && r == ROWS && c == COLS && sc == tscale, "info");
    float td[ROWS];
    CHECK(ggml_bitnet_stfma_tensor_dot(t, 0, ROWS, y, td) == 0, "tensor_dot");
    for (int i = 0; i < ROWS; i++) CHECK(td[i] == (float)ref_dot(tc + i * COLS, y, COLS), "tensor_dot row %d", i);
    CHECK(ggml_bitnet_stfma_tensor_dot(t, 8, 3, y, td) == GGML_BITNET_STFMA_ERR_INVALID, "rows past the end");
    ggml_vec_dot_i2_i8_s_stfma_hybrid(COLS, &s, (const void *)t, y, true);
    CHECK(s == (float)ref_dot(tc, y, COLS), "hybrid with a tensor handle: its first row");
    CHECK(ggml_bitnet_stfma_cache_tensor(tensor, 100, ROWS, COLS) == NULL, "short data accepted");
    CHECK(ggml_bitnet_stfma_cache_tensor(tensor, sizeof tensor, ROWS, 100) == NULL, "cols not a multiple of 128 accepted");

    ggml_bitnet_stfma_get_cache_stats(&entries, &bytes, &ratio);
    size_t want_bytes = N / 4 + 12 * COLS / 4; /* the tensor's 10 rows pad to 3 tiles of 4 */
    CHECK(entries == 2 && bytes == want_bytes, "stats %zu %zu", entries, bytes);
    CHECK(fabsf(ratio - (float)want_bytes / (float)(N / 4 + ROWS * COLS / 4)) < 1e-6f, "ratio %f", ratio);
    ggml_bitnet_stfma_cache_stats(&entries, NULL);
    CHECK(entries == 2, "cache_stats");

    ggml_bitnet_stfma_free_cached_weights(h);
    CHECK(strlen(ggml_bitnet_stfma_last_error()) == 0, "free failed");
    ggml_bitnet_stfma_free_cached_weights(h); /* double free: error, no crash */
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "double free not reported");
    CHECK(ggml_bitnet_stfma_get_cached_weights(h) == NULL, "freed handle still readable");
    ggml_vec_dot_i2_i8_s_stfma_cached(N, &s, h, y);
    CHECK(isnan(s), "dot on a freed handle");
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, (const void *)h, y, true);
    CHECK(isnan(s) && strlen(ggml_bitnet_stfma_last_error()) > 0, "hybrid on a freed handle");
    s = 0;
    ggml_vec_dot_i2_i8_s_stfma_hybrid(N, &s, w, y, true);
    CHECK(isnan(s), "hybrid with the source of a freed entry");
    ggml_bitnet_stfma_free_cached_weights(NULL);
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "NULL free not reported");
    ggml_bitnet_stfma_free_cached_weights((ggml_bitnet_stfma_cache_handle)(uintptr_t)0xdeadbeef0);
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "foreign handle not reported");

    ggml_bitnet_stfma_cache_shutdown();
    ggml_bitnet_stfma_free_cached_weights(t); /* free after shutdown: error, no crash */
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "free after shutdown not reported");
    ggml_bitnet_stfma_get_cache_stats(&entries, &bytes, &ratio);
    CHECK(entries == 0 && bytes == 0, "shutdown left entries");
    h = ggml_bitnet_stfma_cache_weights(w, N); /* usable again */
    CHECK(h != NULL, "cache after shutdown");
    CHECK(ggml_bitnet_stfma_cache_weights(w, 100) == NULL, "n not a multiple of 128 accepted");
    CHECK(ggml_bitnet_stfma_cache_weights(NULL, N) == NULL, "NULL accepted");
    ggml_bitnet_stfma_free_cached_weights(h);
}

static void test_matmul(void) {
    enum { ROWS = 70, COLS = 768, NC = 5 };
    static uint8_t tc[ROWS * COLS], tensor[ROWS * COLS / 4 + 32];
    static float x[NC * COLS], y[NC * ROWS];
    for (int e = 0; e < ROWS * COLS; e++) tc[e] = (uint8_t)(rng_next() % 3);
    ref_pack(tc, ROWS * COLS, tensor);
    float ws = 0.03125f;
    memcpy(tensor + ROWS * COLS / 4, &ws, 4);
    for (int i = 0; i < NC * COLS; i++) x[i] = (float)((int64_t)(rng_next() % 2001) - 1000) / 700.0f;
    ggml_bitnet_stfma_cache_handle t = ggml_bitnet_stfma_cache_tensor(tensor, sizeof tensor, ROWS, COLS);
    for (int threads = 1; threads <= 3; threads++) {
        CHECK(ggml_bitnet_stfma_matmul(t, x, NC, y, threads) == 0, "matmul: %s", ggml_bitnet_stfma_last_error());
        for (int c = 0; c < NC; c++) {
            int8_t q[COLS];
            float as;
            int32_t asum = ref_quantize(x + c * COLS, COLS, q, &as);
            for (int r = 0; r < ROWS; r++) {
                float want = (float)(ref_dot(tc + r * COLS, q, COLS) - asum) / as * ws;
                CHECK(y[c * ROWS + r] == want, "matmul c=%d r=%d got %f want %f", c, r, y[c * ROWS + r], want);
            }
        }
    }
    /* The same tensor repacked in place in a heap copy, and the tile GEMM
     * over caller-quantized columns in two row blocks (as a linked ggml's
     * threads split it): the same values. */
    uint8_t *heap = malloc(sizeof tensor);
    memcpy(heap, tensor, sizeof tensor);
    int placed = -1;
    ggml_bitnet_stfma_cache_handle ip =
        ggml_bitnet_stfma_cache_tensor_ex(heap, sizeof tensor, ROWS, COLS, GGML_BITNET_STFMA_IN_PLACE, &placed);
    CHECK(ip != NULL, "cache_tensor_ex: %s", ggml_bitnet_stfma_last_error());
    /* 70 rows are not a multiple of 4: a copy, the heap bytes untouched */
    CHECK(placed == 0 && memcmp(heap, tensor, sizeof tensor) == 0, "70 rows repacked in place");
    static int8_t qs[NC][COLS];
    const int8_t *cols[NC];
    float scales[NC];
    int32_t sums[NC];
    for (int c = 0; c < NC; c++) {
        sums[c] = ref_quantize(x + c * COLS, COLS, qs[c], &scales[c]);
        cols[c] = qs[c];
    }
    static float g[NC * ROWS];
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 0, 32, NC, cols, scales, sums, g, ROWS) == 0, "gemm: %s",
          ggml_bitnet_stfma_last_error());
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 32, ROWS - 32, NC, cols, scales, sums, g + 32, ROWS) == 0, "gemm: %s",
          ggml_bitnet_stfma_last_error());
    CHECK(memcmp(g, y, sizeof g) == 0, "tile gemm differs from the matmul");
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 2, 4, NC, cols, scales, sums, g, ROWS) == GGML_BITNET_STFMA_ERR_INVALID,
          "first row off the tile grid");
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 64, 8, NC, cols, scales, sums, g, ROWS) == GGML_BITNET_STFMA_ERR_INVALID,
          "rows past the end");
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 0, 8, NC, cols, scales, sums, g, 4) == GGML_BITNET_STFMA_ERR_INVALID,
          "ldy < nrows");
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 0, 8, NC, NULL, scales, sums, g, ROWS) == GGML_BITNET_STFMA_ERR_NULL,
          "NULL columns");
    CHECK(ggml_bitnet_stfma_tensor_gemm(NULL, 0, 8, NC, cols, scales, sums, g, ROWS) == GGML_BITNET_STFMA_ERR_BAD_HANDLE,
          "NULL handle");
    ggml_bitnet_stfma_free_cached_weights(ip);
    /* 68 rows: repacked in place, same results */
    memcpy(heap + 68 * COLS / 4, &ws, 4);
    ip = ggml_bitnet_stfma_cache_tensor_ex(heap, 68 * COLS / 4 + 32, 68, COLS, GGML_BITNET_STFMA_IN_PLACE, &placed);
    CHECK(ip != NULL && placed == 1, "68 rows not repacked in place (%d)", placed);
    CHECK(ggml_bitnet_stfma_tensor_gemm(ip, 0, 68, NC, cols, scales, sums, g, 68) == 0, "gemm: %s",
          ggml_bitnet_stfma_last_error());
    int bad = 0;
    for (int c = 0; c < NC; c++)
        for (int r = 0; r < 68; r++) bad += g[c * 68 + r] != y[c * ROWS + r];
    CHECK(bad == 0, "in place: %d outputs differ", bad);
    ggml_bitnet_stfma_free_cached_weights(ip);
    free(heap);
    CHECK(ggml_bitnet_stfma_matmul(NULL, x, NC, y, 1) == GGML_BITNET_STFMA_ERR_BAD_HANDLE, "NULL handle");
    CHECK(ggml_bitnet_stfma_matmul(t, x, 0, y, 1) == GGML_BITNET_STFMA_ERR_INVALID, "zero columns");
    CHECK(ggml_bitnet_stfma_matmul(t, NULL, NC, y, 1) == GGML_BITNET_STFMA_ERR_NULL, "NULL x");
    ggml_bitnet_stfma_free_cached_weights(t);
}

static void test_errors(void) {
    uint8_t w[32] = {0};
    int8_t y[128] = {0};
    float s[4] = {0, 0, 0, 0};
    ggml_vec_dot_i2_i8_s(100, s, 1, w, 0, y, 0, 1);
    CHECK(isnan(s[0]) && strlen(ggml_bitnet_stfma_last_error()) > 0, "n=100");
    ggml_vec_dot_i2_i8_s(0, s, 1, w, 0, y, 0, 1);
    CHECK(isnan(s[0]), "n=0");
    ggml_vec_dot_i2_i8_s(-128, s, 1, w, 0, y, 0, 1);
    CHECK(isnan(s[0]), "n<0");
    s[0] = 0;
    ggml_vec_dot_i2_i8_s(128, s, 1, NULL, 0, y, 0, 1);
    CHECK(isnan(s[0]), "NULL vx");
    s[0] = 0;
    ggml_vec_dot_i2_i8_s(128, s, 1, w, 0, NULL, 0, 1);
    CHECK(isnan(s[0]), "NULL vy");
    ggml_vec_dot_i2_i8_s(128, NULL, 1, w, 0, y, 0, 1); /* NULL s: nothing to write, no crash */
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "NULL s");
    ggml_vec_dot_i2_i8_s(128, s, 1, w, 0, y, 0, 0);
    CHECK(strlen(ggml_bitnet_stfma_last_error()) > 0, "nrc=0");
    ggml_vec_dot_i2_i8_s(128, s, 1, w, 0, y, 0, 1);
    CHECK(s[0] == 0.0f && strlen(ggml_bitnet_stfma_last_error()) == 0, "a good call clears the error");
    CHECK(ggml_bitnet_stfma_set_kernel("no-such-kernel") == GGML_BITNET_STFMA_ERR_INVALID, "bad kernel name");
    CHECK(ggml_bitnet_stfma_abi_version() == GGML_BITNET_STFMA_ABI_VERSION, "abi version");
    CHECK(strlen(ggml_bitnet_stfma_version()) > 0, "version");
}

/* Absurd sizes and foreign handles: defined errors, no allocation by the lie, no crash. */
static void test_abuse(void) {
    static uint8_t data[4096];
    float x[128] = {0}, y[128];
    int8_t q[128];
    float sc;
    int32_t sm;
    CHECK(ggml_bitnet_stfma_cache_tensor(data, SIZE_MAX, INT64_MAX, 128) == NULL, "rows*cols overflow");
    CHECK(ggml_bitnet_stfma_cache_tensor(data, sizeof data, -1, 128) == NULL, "negative rows");
    CHECK(ggml_bitnet_stfma_cache_tensor(data, sizeof data, 4, 0) == NULL, "zero cols");
    CHECK(ggml_bitnet_stfma_cache_tensor(NULL, sizeof data, 4, 128) == NULL, "NULL data");
    CHECK(ggml_bitnet_stfma_cache_tensor_ex(NULL, sizeof data, 4, 128, 0, NULL) == NULL, "NULL data (ex)");
    CHECK(ggml_bitnet_stfma_cache_tensor_ex(data, sizeof data, 4, 128, 0x40, NULL) == NULL, "unknown flags");
    CHECK(ggml_bitnet_stfma_cache_tensor_ex(data, 100, 4, 128, GGML_BITNET_STFMA_IN_PLACE, NULL) == NULL,
          "short data (ex)");
    CHECK(ggml_bitnet_stfma_cache_weights(data, SIZE_MAX & ~(size_t)127) == NULL, "absurd n");
    CHECK(ggml_bitnet_stfma_cache_weights(data, 0) == NULL, "n = 0");
    CHECK(quantize_i2_s(x, data, INT64_MAX, 128, NULL) == 0, "nrow*n_per_row overflow");
    CHECK(quantize_i2_s(x, data, -1, 128, NULL) == 0, "negative nrow");
    CHECK(ggml_bitnet_stfma_quantize_activations(x, INT64_MAX, q, &sc, &sm) == GGML_BITNET_STFMA_ERR_INVALID, "absurd n");
    CHECK(ggml_bitnet_stfma_quantize_activations(x, -5, q, &sc, &sm) == GGML_BITNET_STFMA_ERR_INVALID, "negative n");
    ggml_bitnet_stfma_cache_handle t = ggml_bitnet_stfma_cache_tensor(data, sizeof data, 4, 128);
    CHECK(t != NULL, "a small tensor");
    CHECK(ggml_bitnet_stfma_matmul(t, x, INT64_MAX, y, 1) == GGML_BITNET_STFMA_ERR_INVALID, "absurd columns");
    CHECK(ggml_bitnet_stfma_matmul(t, x, 1, NULL, 1) == GGML_BITNET_STFMA_ERR_NULL, "NULL y");
    CHECK(ggml_bitnet_stfma_matmul(t, x, 1, y, -3) == 0, "n_threads <= 0 means all cores");
    CHECK(ggml_bitnet_stfma_tensor_dot(t, -1, 1, q, y) == GGML_BITNET_STFMA_ERR_INVALID, "negative row");
    CHECK(ggml_bitnet_stfma_tensor_dot(t, 0, INT64_MAX, q, y) == GGML_BITNET_STFMA_ERR_INVALID, "absurd row count");
    CHECK(ggml_bitnet_stfma_tensor_dot(t, 0, 1, q, NULL) == GGML_BITNET_STFMA_ERR_NULL, "NULL s");
    /* a handle value from another process run, and garbage values */
    const uintptr_t foreign[] = {0x7f3a12345670u, 1, 0xAAAAAAAAAAAAAAAAull & UINTPTR_MAX, UINTPTR_MAX};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        ggml_bitnet_stfma_cache_handle h = (ggml_bitnet_stfma_cache_handle)foreign[i];
        CHECK(ggml_bitnet_stfma_get_cached_weights(h) == NULL, "foreign handle %zu readable", i);
        CHECK(ggml_bitnet_stfma_tensor_info(h, NULL, NULL, NULL) == GGML_BITNET_STFMA_ERR_BAD_HANDLE, "foreign %zu", i);
        CHECK(ggml_bitnet_stfma_matmul(h, x, 1, y, 1) == GGML_BITNET_STFMA_ERR_BAD_HANDLE, "foreign matmul %zu", i);
    }
    float s = 0;
    ggml_vec_dot_i2_i8_s(128, &s, 0, data, 0, q, 0, -4);
    CHECK(isnan(s) && *ggml_bitnet_stfma_last_error(), "negative nrc");
    CHECK(ggml_bitnet_stfma_set_kernel("") == GGML_BITNET_STFMA_ERR_INVALID, "empty kernel name");
    ggml_bitnet_stfma_free_cached_weights(t);
    ggml_bitnet_stfma_cache_shutdown();
    ggml_bitnet_stfma_cache_shutdown(); /* twice */
    ggml_bitnet_stfma_cache_stats(NULL, NULL);
    CHECK(*ggml_bitnet_stfma_last_error() == 0, "stats after shutdown");
}

int main(void) {
    int ran = 0;
    for (size_t k = 0; k < sizeof KERNELS / sizeof KERNELS[0]; k++) {
        int rc = ggml_bitnet_stfma_set_kernel(KERNELS[k]);
        if (rc == GGML_BITNET_STFMA_ERR_UNSUPPORTED) {
            printf("kernel %s: not supported on this CPU, skipped\n", KERNELS[k]);
            continue;
        }
        CHECK(rc == 0, "set_kernel(%s) = %d", KERNELS[k], rc);
        CHECK(strcmp(ggml_bitnet_stfma_kernel_name(), KERNELS[k]) == 0, "kernel_name");
        printf("kernel %s\n", KERNELS[k]);
        ran++;
        test_golden();
        test_random_and_extremes();
        test_nrc();
        test_cache();
        test_matmul();
    }
    CHECK(ran >= 2, "at least scalar and one SIMD kernel ran (%d)", ran);
    CHECK(ggml_bitnet_stfma_set_kernel(NULL) == 0, "back to auto");
    test_quantize_i2_s();
    test_activations();
    test_convert();
    test_errors();
    test_abuse();
    return finish_tests("test_abi");
}
