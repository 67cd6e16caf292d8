// Stand-in for bitnet.cpp's src/ggml-bitnet-lut.cpp, which defines the hooks
// for its generated TL2 kernels. bitnet_stfma_link(... USE_STFMA) must take
// it out of the target, or the hooks would be defined twice.
#if defined(GGML_BITNET_X86_TL2)
#error "ggml-bitnet-lut.cpp is still compiled: bitnet_stfma_link(USE_STFMA) should have removed it"
#endif
extern "C" int standin_lut_file_compiled = 1;
