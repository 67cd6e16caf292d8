/* bitnet-stfma's side of the matmul hooks of bitnet.cpp's ggml.
 *
 * Compiled into the fork's ggml by bitnet_stfma_link(<target> REPLACE
 * USE_STFMA) (see docs/integration.md), against the fork's own ggml.h and
 * ggml-bitnet.h, so the tensor and extra layouts are always the fork's. The
 * fork's ggml.c and llama.cpp call these functions when GGML_BITNET_X86_TL2
 * is defined (the CMake function defines it for those targets and takes the
 * fork's ggml-bitnet-lut.cpp, which defines them for TL2 files, out):
 *
 *   llama.cpp, after loading each tensor:  ggml_bitnet_transform_tensor
 *   ggml_graph_plan:                       ggml_bitnet_can_mul_mat, ggml_bitnet_mul_mat_get_wsize
 *   mul_mat, thread 0, then a barrier:     ggml_preprocessor
 *   mul_mat, every thread, its row tiles:  ggml_qgemm_lut, per column batch
 *
 * An I2_S tensor is cached once at load in the library's tile layout, in
 * place where its buffer is private writable memory (llama.cpp --no-mmap),
 * else as a copy whose mmap'd source pages are released; the preprocessor
 * quantizes the activations into ggml's work buffer (with the fork's own
 * quantize_row_i8_s where it has one); each qgemm call is a
 * finished tile GEMM of one row tile for one column batch. Results are the
 * library's exact integer sums finished as bitnet.cpp finishes them.
 *
 * BITNET_STFMA_TRANSFORM in the environment: "auto" (default, as above),
 * "copy" (never in place: the I2_S bytes stay untouched), "off" (no tensor
 * is cached: ggml's own I2_S path runs, as in plain REPLACE mode). */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-bitnet.h"
#include "ggml-bitnet-stfma.h"

#define STFMA_MAGIC 0x5354464dU /* "STFM" */
#define STFMA_MAX_BATCH 512     /* ggml.c's largest column batch */

/* One cached tensor. `extra` comes first: tensor->extra points at it, and
 * extra.scales points back at the whole struct, which is how qgemm_lut (given
 * only `wt->scales`) finds it. ggml.c reads n_tile_num and BK and offsets
 * qweights by whole tiles; qweights is the start of the cached bytes. */
struct stfma_linked {
    struct bitnet_tensor_extra extra;
    uint32_t magic;
    int in_place;
    int64_t rows, cols, tile_rows;
    ggml_bitnet_stfma_cache_handle handle;
    struct stfma_linked *next;
};

static atomic_flag g_lock = ATOMIC_FLAG_INIT;
static struct stfma_linked *g_all;

static void lock(void) {
    while (atomic_flag_test_and_set_explicit(&g_lock, memory_order_acquire)) {
    }
}

static void unlock(void) { atomic_flag_clear_explicit(&g_lock, memory_order_release); }

static struct stfma_linked *linked_of(const struct ggml_tensor *t) {
    if (t == NULL || t->type != GGML_TYPE_I2_S || t->extra == NULL) {
        return NULL;
    }
    struct stfma_linked *l = (struct stfma_linked *)t->extra;
    return (void *)l->extra.scales == (void *)l && l->magic == STFMA_MAGIC ? l : NULL;
}

static void fail(const char *what) {
    fprintf(stderr, "bitnet-stfma: %s: %s\n", what, ggml_bitnet_stfma_last_error());
    abort();
}

/* The mode from BITNET_STFMA_TRANSFORM: 0 off, 1 copy, 2 auto. */
static int transform_mode(void) {
    const char *v = getenv("BITNET_STFMA_TRANSFORM");
    if (v == NULL || *v == '\0' || strcmp(v, "auto") == 0) {
        return 2;
    }
    if (strcmp(v, "copy") == 0) {
        return 1;
    }
    if (strcmp(v, "off") == 0) {
        return 0;
    }
    fprintf(stderr, "bitnet-stfma: BITNET_STFMA_TRANSFORM=%s is not auto, copy or off; using auto\n", v);
    return 2;
}

/* The fork's own activation quantizer (ggml-quants.c), when it has one: the
 * preprocessor calls it so that every quantized activation is the one the
 * fork's I2_S path makes. That matters: compiled with FMA contraction (the
 * default for GCC with -march=native), its round-to-nearest of x * scale is
 * one fused operation and, on rare ties, one step off the exactly rounded
 * value this library computes. */
#if defined(__GNUC__)
extern void quantize_row_i8_s(const float *x, void *y, int64_t n, float *act_scales, int32_t *act_sums)
    __attribute__((weak));
#define STFMA_FORK_QUANTIZER quantize_row_i8_s
#else
#define STFMA_FORK_QUANTIZER NULL
#endif

static void quantize_column(const float *x, int64_t k, int8_t *q, float *scale, int32_t *sum) {
    if (STFMA_FORK_QUANTIZER != NULL) {
        STFMA_FORK_QUANTIZER(x, q, k, scale, sum);
    } else if (ggml_bitnet_stfma_quantize_activations(x, k, q, scale, sum) != 0) {
        fail("quantizing activations");
    }
}

void ggml_bitnet_init(void) {}

/* Frees every cached tensor. Call it only once no model whose tensors were
 * transformed is in use (their extra pointers dangle afterwards, and tensors
 * repacked in place stay repacked). */
void ggml_bitnet_free(void) {
    lock();
    struct stfma_linked *l = g_all;
    g_all = NULL;
    unlock();
    while (l != NULL) {
        struct stfma_linked *next = l->next;
        ggml_bitnet_stfma_free_cached_weights(l->handle);
        free(l);
        l = next;
    }
}

/* Rows per tile that ggml.c hands to one qgemm_lut call: a multiple of 4
 * dividing the row count (ggml.c asserts that the tiles divide it), 0 if
 * there is none. */
static int64_t tile_rows_for(int64_t rows) {
    for (int64_t t = 64; t >= 4; t /= 2) {
        if (rows % t == 0) {
            return t;
        }
    }
    return 0;
}

void ggml_bitnet_transform_tensor(struct ggml_tensor *tensor) {
    if (tensor == NULL || tensor->type != GGML_TYPE_I2_S || tensor->data == NULL || tensor->extra != NULL) {
        return;
    }
    const int64_t rows = tensor->ne[1], cols = tensor->ne[0];
    const int64_t tile_rows = tile_rows_for(rows);
    if (tensor->ne[2] != 1 || tensor->ne[3] != 1 || cols % 128 != 0 || tile_rows == 0 ||
        cols * rows > INT32_MAX) {
        return; /* left to ggml's own I2_S path */
    }
    if (tensor->buffer != NULL && !ggml_backend_buffer_is_host(tensor->buffer)) {
        return;
    }
    const int mode = transform_mode();
    if (mode == 0) {
        return;
    }
    lock();
    if (tensor->extra != NULL) {
        unlock();
        return;
    }
    struct stfma_linked *l = (struct stfma_linked *)calloc(1, sizeof *l);
    int in_place = 0;
    const int flags = GGML_BITNET_STFMA_RELEASE_SOURCE | (mode == 2 ? GGML_BITNET_STFMA_IN_PLACE : 0);
    ggml_bitnet_stfma_cache_handle h =
        l ? ggml_bitnet_stfma_cache_tensor_ex(tensor->data, ggml_nbytes(tensor), rows, cols, flags, &in_place)
          : NULL;
    if (h == NULL) {
        unlock();
        fprintf(stderr, "bitnet-stfma: %s is left to ggml's own kernel: %s\n", tensor->name,
                l ? ggml_bitnet_stfma_last_error() : "out of memory");
        free(l);
        return;
    }
    l->magic = STFMA_MAGIC;
    l->in_place = in_place;
    l->rows = rows;
    l->cols = cols;
    l->tile_rows = tile_rows;
    l->handle = h;
    l->extra.lut_scales_size = 0;
    l->extra.BK = (int)cols; /* so that ggml.c's three_k is the whole row and two_k is 0 */
    l->extra.n_tile_num = (int)(rows / tile_rows);
    l->extra.qweights = (uint8_t *)(uintptr_t)ggml_bitnet_stfma_get_cached_weights(h);
    l->extra.scales = (bitnet_float_type *)(void *)l;
    l->next = g_all;
    g_all = l;
    tensor->extra = &l->extra;
    unlock();
}

/* The bytes ggml.c sets aside per activation column before the per-column
 * LUT scales: three_k / 3 * 16 * 2. */
static size_t column_room(int64_t k) { return (size_t)(k / 3) * 32; }

/* What the preprocessor writes per column, inside that room: the quantized
 * column's scale and sum, then its int8 values 64 bytes in. */
static size_t record_size(int64_t k) { return 64 + (((size_t)k + 63) & ~(size_t)63); }

bool ggml_bitnet_can_mul_mat(const struct ggml_tensor *src0, const struct ggml_tensor *src1,
                             const struct ggml_tensor *dst) {
    struct stfma_linked *l = linked_of(src0);
    if (l == NULL) {
        const struct stfma_linked *v = src0 ? linked_of(src0->view_src) : NULL;
        if (v != NULL && v->in_place) {
            fprintf(stderr, "bitnet-stfma: a view of %s, whose bytes are repacked in place, reached a matmul; "
                            "run with BITNET_STFMA_TRANSFORM=copy\n", src0->view_src->name);
            abort();
        }
        return false;
    }
    const int64_t k = src0->ne[0], n = src1->ne[1];
    const bool ok = src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32 && src1->ne[0] == k &&
                    src1->ne[2] == 1 && src1->ne[3] == 1 && dst->ne[0] == src0->ne[1] && dst->ne[1] == n &&
                    ggml_is_contiguous(src1) && ggml_is_contiguous(dst) && n >= 1 &&
                    /* ggml.c computes the column rooms' offsets in int */
                    (size_t)n * column_room(k) + (size_t)n * sizeof(float) <= INT32_MAX;
    if (!ok && l->in_place) {
        /* ggml's own path would read the repacked bytes as I2_S. */
        fprintf(stderr, "bitnet-stfma: a matmul of %s (repacked in place) with a %s [%lld x %lld x %lld] operand "
                        "cannot be computed; run with BITNET_STFMA_TRANSFORM=copy\n",
                src0->name, ggml_type_name(src1->type), (long long)src1->ne[0], (long long)src1->ne[1],
                (long long)src1->ne[2]);
        abort();
    }
    return ok;
}

size_t ggml_bitnet_mul_mat_get_wsize(const struct ggml_tensor *src0, const struct ggml_tensor *src1,
                                     const struct ggml_tensor *dst) {
    (void)dst;
    const size_t n = (size_t)src1->ne[1];
    /* ggml.c's layout: n column rooms, then n floats of LUT scales (two_k is
     * 0, so nothing after them is used); 64 bytes of slack for alignment. */
    return n * column_room(src0->ne[0]) + n * sizeof(float) + 64;
}

void ggml_preprocessor(int bs, int m, int three_k, int two_k, void *B, void *LUT_Scales, void *Three_QLUT,
                       void *Two_QLUT) {
    (void)m;
    (void)Two_QLUT;
    const int64_t k = (int64_t)three_k + two_k;
    const size_t rec = record_size(k);
    uint8_t *base = (uint8_t *)(((uintptr_t)Three_QLUT + 63) & ~(uintptr_t)63);
    float *scales = (float *)LUT_Scales;
    for (int c = 0; c < bs; c++) {
        uint8_t *r = base + (size_t)c * rec;
        float scale;
        int32_t sum;
        quantize_column((const float *)B + (size_t)c * k, k, (int8_t *)(r + 64), &scale, &sum);
        memcpy(r, &scale, sizeof scale);
        memcpy(r + 4, &sum, sizeof sum);
        /* Column c's LUT-scale slot holds how far back, in 4-byte units, its
         * record lies: qgemm_lut gets only the slot of a batch's first column. */
        const uint32_t back = (uint32_t)(((uintptr_t)(scales + c) - (uintptr_t)r) / 4);
        memcpy(scales + c, &back, sizeof back);
    }
}

void ggml_qgemm_lut(int bs, int m, int k, int BK, void *A, void *sign, void *LUT, void *Scales, void *LUT_Scales,
                    void *C) {
    (void)LUT;
    if (sign == NULL || BK == 0) {
        return; /* ggml.c's second pass, over two_k = 0 weights */
    }
    const struct stfma_linked *l = (const struct stfma_linked *)Scales;
    if (l == NULL || l->magic != STFMA_MAGIC || bs < 1 || bs > STFMA_MAX_BATCH || m != l->rows || k != l->cols) {
        fail("qgemm_lut called with arguments it was not set up for");
    }
    /* ggml.c offsets qweights by whole tiles of three_k * m / 6 / n_tile_num bytes. */
    const int64_t w_tile = ((int64_t)BK * m / 6) / l->extra.n_tile_num;
    const int64_t tile = ((const uint8_t *)A - l->extra.qweights) / w_tile;
    uint32_t back;
    memcpy(&back, LUT_Scales, sizeof back);
    const uint8_t *rec0 = (const uint8_t *)LUT_Scales - (size_t)back * 4;
    const size_t rec = record_size(k);
    const int8_t *q[STFMA_MAX_BATCH];
    float scales[STFMA_MAX_BATCH];
    int32_t sums[STFMA_MAX_BATCH];
    for (int j = 0; j < bs; j++) {
        const uint8_t *r = rec0 + (size_t)j * rec;
        memcpy(&scales[j], r, sizeof scales[j]);
        memcpy(&sums[j], r + 4, sizeof sums[j]);
        q[j] = (const int8_t *)(r + 64);
    }
    if (ggml_bitnet_stfma_tensor_gemm(l->handle, tile * l->tile_rows, l->tile_rows, bs, q, scales, sums,
                                      (float *)C, m) != 0) {
        fail("tile GEMM");
    }
}
