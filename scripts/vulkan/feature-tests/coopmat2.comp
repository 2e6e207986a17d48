#version 460
// ggml-vulkan build probe: compiles only when glslc knows GL_NV_cooperative_matrix2.
#extension GL_NV_cooperative_matrix2 : require
layout(local_size_x = 1) in;
void main() {}
