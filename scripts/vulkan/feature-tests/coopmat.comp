#version 460
// ggml-vulkan build probe: compiles only when glslc knows GL_KHR_cooperative_matrix.
#extension GL_KHR_cooperative_matrix : require
layout(local_size_x = 1) in;
void main() {}
