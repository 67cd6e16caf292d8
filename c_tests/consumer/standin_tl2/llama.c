/* Stand-in for llama.cpp's loader: after a tensor's data is in place it calls
 * the transform hook, in a build with GGML_BITNET_X86_TL2 defined (which
 * bitnet_stfma_link(... USE_STFMA) defines for the `llama` target). */
#include "ggml-bitnet.h"

int standin_loader_transforms(void) {
#if defined(GGML_BITNET_X86_TL2)
    return 1;
#else
    return 0;
#endif
}

void standin_load_tensor(struct ggml_tensor *t) {
#if defined(GGML_BITNET_X86_TL2)
    ggml_bitnet_transform_tensor(t);
#else
    (void)t;
#endif
}
