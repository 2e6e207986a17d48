#version 460
// ggml-vulkan build probe: compiles only when glslc knows GL_EXT_integer_dot_product.
#extension GL_EXT_integer_dot_product : require
layout(local_size_x = 1) in;
void main() {}
