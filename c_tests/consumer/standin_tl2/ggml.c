/* A stand-in for the matmul of bitnet.cpp's ggml.c, written for this test
 * (none of ggml's code): with GGML_BITNET_X86_TL2 defined it makes the hook
 * calls in the order and with the arguments the fork's ggml_compute_forward_
 * mul_mat makes them (work size at plan time; thread 0 runs the
 * preprocessor; a barrier; every thread its share of the row tiles, for
 * column batches of 512, 256, 128, 32, 8 and 1 with the fork's offset
 * arithmetic, each followed by the second pass with a NULL sign), else it
 * computes row by row with ggml_vec_dot_i2_i8_s as the fork's I2_S path. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-bitnet.h"
#include "ggml-bitnet-stfma.h"

int standin_hooked_mul_mats = 0;
long standin_qgemm_calls = 0;
long standin_quantize_calls = 0;

/* The fork's activation quantizer, which the hooks use when it exists. */
void quantize_row_i8_s(const float *x, void *y, int64_t n, float *act_scales, int32_t *act_sums) {
    __atomic_fetch_add(&standin_quantize_calls, 1, __ATOMIC_RELAXED);
    ggml_bitnet_stfma_quantize_activations(x, n, (int8_t *)y, act_scales, act_sums);
}

void ggml_vec_dot_i2_i8_s(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by,
                          int nrc);

size_t ggml_nbytes(const struct ggml_tensor *t) {
    if (t->type == GGML_TYPE_I2_S) {
        return (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]) / 4 + 32;
    }
    return t->nb[3] * (size_t)t->ne[3];
}

bool ggml_is_contiguous(const struct ggml_tensor *t) {
    return t->type != GGML_TYPE_F32 ||
           (t->nb[0] == 4 && t->nb[1] == 4 * (size_t)t->ne[0] && t->nb[2] == t->nb[1] * (size_t)t->ne[1]);
}

const char *ggml_type_name(enum ggml_type type) { return type == GGML_TYPE_F32 ? "f32" : "other"; }

bool ggml_backend_buffer_is_host(struct ggml_backend_buffer *buffer) {
    (void)buffer;
    return true;
}

struct job {
    const struct ggml_tensor *src0, *src1;
    struct ggml_tensor *dst;
    char *wdata;
    int ith, nth;
    pthread_barrier_t *barrier;
};

#if defined(GGML_BITNET_X86_TL2)
static void hooked(const struct job *j) {
    const struct ggml_tensor *src0 = j->src0, *src1 = j->src1;
    const int ne00 = (int)src0->ne[0], ne01 = (int)src0->ne[1], ne10 = (int)src1->ne[0], ne11 = (int)src1->ne[1];
    struct bitnet_tensor_extra *wt = (struct bitnet_tensor_extra *)src0->extra;
    int8_t *three_qlut = (int8_t *)j->wdata;
    const int three_k = (ne10 / wt->BK) * wt->BK, two_k = ne10 - three_k;
    float *lut_scales = (float *)(three_qlut + three_k / 3 * 16 * 2 * ne11);
    int8_t *two_qlut = (int8_t *)(lut_scales + ne11);
    if (j->ith == 0) {
        ggml_bitnet_transform_tensor((struct ggml_tensor *)src0);
        ggml_preprocessor(ne11, ne01, three_k, two_k, src1->data, lut_scales, three_qlut, two_qlut);
    }
    pthread_barrier_wait(j->barrier);
    float *out = (float *)j->dst->data;
    const int n_tile_num = wt->n_tile_num;
    const int w_tile_size = three_k * ne01 / (2 * 3) / n_tile_num;
    const int c_tile_size = ne01 / n_tile_num;
    const int sign_tile_size = three_k * ne01 / 24 / n_tile_num;
    const int th_tile_num = (n_tile_num + j->nth - 1) / j->nth;
    const int beg = j->ith * th_tile_num;
    const int end = (j->ith + 1) * th_tile_num < n_tile_num ? (j->ith + 1) * th_tile_num : n_tile_num;
    uint8_t *sign = wt->qweights + three_k * ne01 / 3 / 2;
    uint8_t *two_A = wt->qweights + three_k * ne01 / 3 / 2 + three_k * ne01 / 3 / 8;
    const int two_w_tile_size = ne01 * two_k / (2 * 2) / n_tile_num;
    /* Column batches as the fork splits ne11 (a single column goes the
     * same way as the last batch of one). Offsets as the fork computes them:
     * each batch kind's LUT offset is (count * size * three_k / 3) * 32. */
    static const int sizes[6] = {512, 256, 128, 32, 8, 1};
    int left = ne11, col = 0;
    long lut_off = 0, two_off = 0;
    for (int s = 0; s < 6; s++) {
        const int size = sizes[s], count = left / size;
        left -= count * size;
        for (int i = 0; i < count; i++) {
            const long lut = lut_off + (long)i * size * three_k / 3 * 32;
            const long two = two_off + (long)i * size * two_k / 2 * 32;
            const int c0 = col + i * size;
            for (int t = beg; t < end; t++) {
                __atomic_fetch_add(&standin_qgemm_calls, 1, __ATOMIC_RELAXED);
                ggml_qgemm_lut(size, ne01, ne00, three_k, wt->qweights + t * w_tile_size, sign + t * sign_tile_size,
                               three_qlut + lut, wt->scales, lut_scales + c0, out + t * c_tile_size + (long)c0 * ne01);
            }
            for (int t = beg; t < end; t++) {
                ggml_qgemm_lut(size, ne01, ne00, two_k, two_A + t * two_w_tile_size, NULL, two_qlut + two,
                               wt->scales, lut_scales + c0, out + t * c_tile_size + (long)c0 * ne01);
            }
        }
        lut_off += (long)count * size * three_k / 3 * 32;
        two_off += (long)count * size * two_k / 2 * 32;
        col += count * size;
    }
}
#endif

static void plain(const struct job *j) {
    const struct ggml_tensor *src0 = j->src0, *src1 = j->src1;
    const int k = (int)src0->ne[0], rows = (int)src0->ne[1], n = (int)src1->ne[1];
    int8_t *q = (int8_t *)j->wdata;
    float *scales = (float *)(j->wdata + (size_t)n * k);
    int32_t *sums = (int32_t *)(scales + n);
    if (j->ith == 0) {
        for (int c = 0; c < n; c++) {
            quantize_row_i8_s((const float *)src1->data + (size_t)c * k, q + (size_t)c * k, k, &scales[c], &sums[c]);
        }
    }
    pthread_barrier_wait(j->barrier);
    float wscale;
    memcpy(&wscale, (const uint8_t *)src0->data + (size_t)rows * k / 4, 4);
    for (int r = j->ith; r < rows; r += j->nth) {
        for (int c = 0; c < n; c++) {
            float d;
            ggml_vec_dot_i2_i8_s(k, &d, 1, (const uint8_t *)src0->data + (size_t)r * k / 4, 0,
                                 q + (size_t)c * k, 0, 1);
            ((float *)j->dst->data)[(size_t)c * rows + r] = ((float)d - (float)sums[c]) / scales[c] * wscale;
        }
    }
}

static void *worker(void *arg) {
    const struct job *j = (const struct job *)arg;
#if defined(GGML_BITNET_X86_TL2)
    if (ggml_bitnet_can_mul_mat(j->src0, j->src1, j->dst)) {
        hooked(j);
        return NULL;
    }
#endif
    plain(j);
    return NULL;
}

void standin_mul_mat(const struct ggml_tensor *src0, const struct ggml_tensor *src1, struct ggml_tensor *dst,
                     int nth) {
    size_t wsize = (size_t)src1->ne[1] * (size_t)src0->ne[0] + 8 * (size_t)src1->ne[1];
#if defined(GGML_BITNET_X86_TL2)
    if (ggml_bitnet_can_mul_mat(src0, src1, dst)) {
        wsize = ggml_bitnet_mul_mat_get_wsize(src0, src1, dst);
        standin_hooked_mul_mats++;
    }
#endif
    /* Not 64-byte aligned on purpose, as ggml's work buffer need not be. */
    char *raw = (char *)malloc(wsize + 64 + 8);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)nth);
    pthread_t threads[16];
    struct job jobs[16];
    for (int i = 0; i < nth; i++) {
        jobs[i] = (struct job){src0, src1, dst, raw + 8, i, nth, &barrier};
        pthread_create(&threads[i], NULL, worker, &jobs[i]);
    }
    for (int i = 0; i < nth; i++) {
        pthread_join(threads[i], NULL);
    }
    pthread_barrier_destroy(&barrier);
    free(raw);
}
