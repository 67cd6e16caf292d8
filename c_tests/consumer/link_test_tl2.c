/* Checks bitnet_stfma_link(ggml REPLACE USE_STFMA) on a stand-in of
 * bitnet.cpp's ggml (standin_tl2/): the loader's transform caches each I2_S
 * tensor (in place in heap memory, as a copy in a read-only file mapping, or
 * not at all with BITNET_STFMA_TRANSFORM=off), the stand-in matmul goes
 * through the hooks with ggml.c's call pattern for column counts that use
 * every batch size and 1 to 3 threads, and every output equals the exact
 * integer sum finished as bitnet.cpp finishes it, bit for bit. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../check.h"
#include "ggml-bitnet-stfma.h"
#include "standin_tl2/ggml-bitnet.h"

int standin_loader_transforms(void);
void standin_load_tensor(struct ggml_tensor *t);
extern int standin_lut_file_compiled __attribute__((weak));

/* An I2_S tensor of rows x k golden codes with scale 0.625, as a GGUF holds it. */
static uint8_t *make_i2s(int rows, int k, uint8_t *codes) {
    uint8_t *t = calloc((size_t)rows * k / 4 + 32, 1);
    for (size_t e = 0; e < (size_t)rows * k; e++) codes[e] = golden_code(e * 7 + 3);
    for (int r = 0; r < rows; r++) ref_pack(codes + (size_t)r * k, (size_t)k, t + (size_t)r * k / 4);
    const float scale = 0.625f;
    memcpy(t + (size_t)rows * k / 4, &scale, 4);
    return t;
}

static struct ggml_tensor f32_tensor(int64_t ne0, int64_t ne1, float *data) {
    struct ggml_tensor t;
    memset(&t, 0, sizeof t);
    t.type = GGML_TYPE_F32;
    t.ne[0] = ne0, t.ne[1] = ne1, t.ne[2] = 1, t.ne[3] = 1;
    t.nb[0] = 4, t.nb[1] = 4 * (size_t)ne0, t.nb[2] = t.nb[1] * (size_t)ne1, t.nb[3] = t.nb[2];
    t.data = data;
    return t;
}

/* Runs src0 x (n columns) on nth threads and checks every output. */
static void check_matmul(struct ggml_tensor *w, const uint8_t *codes, int n, int nth, const char *what) {
    const int k = (int)w->ne[0], rows = (int)w->ne[1];
    float *x = malloc(sizeof(float) * (size_t)k * n);
    for (size_t e = 0; e < (size_t)k * n; e++) x[e] = (float)((int)(rng_next() % 2001) - 1000) / 97.0f;
    float *y = malloc(sizeof(float) * (size_t)rows * n);
    struct ggml_tensor src1 = f32_tensor(k, n, x), dst = f32_tensor(rows, n, y);
    standin_mul_mat(w, &src1, &dst, nth);
    int8_t *q = malloc((size_t)k);
    int bad = 0;
    for (int c = 0; c < n; c++) {
        float s;
        int32_t sum;
        ggml_bitnet_stfma_quantize_activations(x + (size_t)c * k, k, q, &s, &sum);
        for (int r = 0; r < rows; r++) {
            const int64_t d = ref_dot(codes + (size_t)r * k, q, (size_t)k);
            const float want = (float)(int32_t)(d - sum) / s * 0.625f;
            if (memcmp(&want, &y[(size_t)c * rows + r], 4) != 0 && bad++ < 3) {
                fprintf(stderr, "%s: n=%d nth=%d row %d col %d: %g, want %g\n", what, n, nth, r, c,
                        y[(size_t)c * rows + r], want);
            }
        }
    }
    CHECK(bad == 0, "%s: %d of %d outputs differ (n=%d, nth=%d)", what, bad, rows * n, n, nth);
    free(x);
    free(y);
    free(q);
}

static struct ggml_tensor i2s_tensor(int rows, int k, void *data, const char *name) {
    struct ggml_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.type = GGML_TYPE_I2_S;
    t.ne[0] = k, t.ne[1] = rows, t.ne[2] = 1, t.ne[3] = 1;
    t.nb[0] = 1, t.nb[1] = (size_t)k, t.nb[2] = (size_t)k * rows, t.nb[3] = t.nb[2];
    t.data = data;
    return t;
}

int main(void) {
    CHECK(standin_loader_transforms() == 1, "GGML_BITNET_X86_TL2 is not defined for the llama target");
    CHECK(&standin_lut_file_compiled == NULL, "the stand-in ggml-bitnet-lut.cpp was linked");
    const int rows = 192, k = 384;
    uint8_t *codes = malloc((size_t)rows * k);

    /* Heap memory (llama.cpp --no-mmap): repacked in place. */
    uint8_t *heap = make_i2s(rows, k, codes);
    uint8_t *orig = malloc((size_t)rows * k / 4);
    memcpy(orig, heap, (size_t)rows * k / 4);
    struct ggml_tensor w = i2s_tensor(rows, k, heap, "heap");
    standin_load_tensor(&w);
    CHECK(w.extra != NULL, "the heap tensor was not cached");
    CHECK(memcmp(orig, heap, (size_t)rows * k / 4) != 0, "the heap tensor was not repacked in place");
    size_t entries = 0, bytes = 0;
    ggml_bitnet_stfma_cache_stats(&entries, &bytes);
    CHECK(entries == 1, "cache entries: %zu", entries);
    standin_load_tensor(&w); /* a second transform is a no-op */
    ggml_bitnet_stfma_cache_stats(&entries, &bytes);
    CHECK(entries == 1, "cache entries after a second transform: %zu", entries);
    const int cols[] = {1, 3, 8, 45, 300, 700};
    for (int nth = 1; nth <= 3; nth++) {
        for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) check_matmul(&w, codes, cols[i], nth, "in place");
    }
    CHECK(standin_hooked_mul_mats == 18, "hooked matmuls: %d, want 18", standin_hooked_mul_mats);
    /* The hooks quantize with the fork's quantize_row_i8_s: one call per column. */
    CHECK(standin_quantize_calls == 3 * (1 + 3 + 8 + 45 + 300 + 700), "quantize_row_i8_s calls: %ld",
          standin_quantize_calls);

    /* A read-only file mapping (llama.cpp's default mmap): copied. */
    char path[] = "/tmp/bitnet-stfma-tl2-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    const size_t size = (size_t)rows * k / 4 + 32;
    CHECK(write(fd, orig, (size_t)rows * k / 4) == (ssize_t)((size_t)rows * k / 4), "write");
    CHECK(write(fd, heap + (size_t)rows * k / 4, 32) == 32, "write scale");
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(map != MAP_FAILED, "mmap");
    struct ggml_tensor m = i2s_tensor(rows, k, map, "mapped");
    standin_load_tensor(&m);
    CHECK(m.extra != NULL, "the mapped tensor was not cached");
    CHECK(memcmp(orig, map, (size_t)rows * k / 4) == 0, "the mapped tensor's bytes changed");
    for (int nth = 1; nth <= 2; nth++) check_matmul(&m, codes, 37, nth, "mapped copy");

    /* BITNET_STFMA_TRANSFORM=off: ggml's own path, same results. */
    setenv("BITNET_STFMA_TRANSFORM", "off", 1);
    uint8_t *plain = make_i2s(rows, k, codes);
    struct ggml_tensor p = i2s_tensor(rows, k, plain, "off");
    standin_load_tensor(&p);
    CHECK(p.extra == NULL, "BITNET_STFMA_TRANSFORM=off cached the tensor");
    const int before = standin_hooked_mul_mats;
    check_matmul(&p, codes, 9, 2, "off");
    CHECK(standin_hooked_mul_mats == before, "BITNET_STFMA_TRANSFORM=off went through the hooks");

    /* A shape the hooks do not take (rows not a multiple of 4) stays on ggml's path. */
    unsetenv("BITNET_STFMA_TRANSFORM");
    uint8_t *odd = make_i2s(6, k, codes);
    struct ggml_tensor o = i2s_tensor(6, k, odd, "odd");
    standin_load_tensor(&o);
    CHECK(o.extra == NULL, "a 6-row tensor was cached");
    check_matmul(&o, codes, 5, 2, "odd rows");

    ggml_bitnet_free();
    ggml_bitnet_stfma_cache_stats(&entries, &bytes);
    CHECK(entries == 0, "entries after ggml_bitnet_free: %zu", entries);
    munmap(map, size);
    close(fd);
    unlink(path);
    free(heap);
    free(orig);
    free(plain);
    free(odd);
    free(codes);
    return finish_tests("link_test_tl2");
}
