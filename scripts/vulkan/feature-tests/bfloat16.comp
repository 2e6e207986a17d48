#version 460
// ggml-vulkan build probe: compiles only when glslc knows GL_EXT_bfloat16.
#extension GL_EXT_bfloat16 : require
layout(local_size_x = 1) in;
void main() {}
