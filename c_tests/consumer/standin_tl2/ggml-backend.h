/* Stand-in for the one ggml-backend.h function the hooks call. */
#ifndef STANDIN_GGML_BACKEND_H
#define STANDIN_GGML_BACKEND_H
#include "ggml.h"
#ifdef __cplusplus
extern "C" {
#endif
GGML_API bool ggml_backend_buffer_is_host(struct ggml_backend_buffer *buffer);
#ifdef __cplusplus
}
#endif
#endif
