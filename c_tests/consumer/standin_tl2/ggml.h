/* A stand-in for the parts of bitnet.cpp's ggml.h that its matmul hooks use,
 * written for this test (none of ggml's code). The tensor's field order is
 * deliberately not ggml's: ggml_bitnet_hooks.c must take the layout from the
 * header it is compiled against. */
#ifndef STANDIN_GGML_H
#define STANDIN_GGML_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGML_API

enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_I2_S = 36,
};

struct ggml_backend_buffer;

struct ggml_tensor {
    char name[64];
    void *extra;
    enum ggml_type type;
    struct ggml_backend_buffer *buffer;
    int64_t ne[4];
    size_t nb[4];
    struct ggml_tensor *view_src;
    void *data;
};

GGML_API size_t ggml_nbytes(const struct ggml_tensor *tensor);
GGML_API bool ggml_is_contiguous(const struct ggml_tensor *tensor);
GGML_API const char *ggml_type_name(enum ggml_type type);

/* The stand-in's matmul: dst = src0 * src1 on nth threads, through the
 * hooks when they take the tensor (as bitnet.cpp's TL2 ggml.c), else row by
 * row with ggml_vec_dot_i2_i8_s (as its I2_S path). */
GGML_API void standin_mul_mat(const struct ggml_tensor *src0, const struct ggml_tensor *src1,
                              struct ggml_tensor *dst, int nth);
/* Matmuls that went through the hooks, and the hook calls seen. */
GGML_API extern int standin_hooked_mul_mats;
GGML_API extern long standin_qgemm_calls;
/* Calls of the stand-in's quantize_row_i8_s (the fork's activation quantizer). */
GGML_API extern long standin_quantize_calls;

#ifdef __cplusplus
}
#endif
#endif
