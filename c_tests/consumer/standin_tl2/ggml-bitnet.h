/* Stand-in for bitnet.cpp's include/ggml-bitnet.h: the extra struct and the
 * hook prototypes its ggml.c calls in a GGML_BITNET_X86_TL2 build, written
 * for this test from that contract. */
#ifndef STANDIN_GGML_BITNET_H
#define STANDIN_GGML_BITNET_H
#include "ggml.h"
#include "ggml-backend.h"

typedef float bitnet_float_type;

#ifdef __cplusplus
extern "C" {
#endif

struct bitnet_tensor_extra {
    int lut_scales_size;
    int BK;
    int n_tile_num;
    uint8_t *qweights;
    bitnet_float_type *scales;
};

GGML_API void ggml_bitnet_init(void);
GGML_API void ggml_bitnet_free(void);
GGML_API bool ggml_bitnet_can_mul_mat(const struct ggml_tensor *src0, const struct ggml_tensor *src1,
                                      const struct ggml_tensor *dst);
GGML_API size_t ggml_bitnet_mul_mat_get_wsize(const struct ggml_tensor *src0, const struct ggml_tensor *src1,
                                              const struct ggml_tensor *dst);
GGML_API void ggml_bitnet_transform_tensor(struct ggml_tensor *tensor);
#if defined(GGML_BITNET_X86_TL2)
GGML_API void ggml_qgemm_lut(int bs, int m, int k, int BK, void *A, void *sign, void *LUT, void *Scales,
                             void *LUT_Scales, void *C);
GGML_API void ggml_preprocessor(int bs, int m, int three_k, int two_k, void *B, void *LUT_Scales, void *Three_QLUT,
                                void *Two_QLUT);
#endif

#ifdef __cplusplus
}
#endif
#endif
