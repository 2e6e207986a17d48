# ggtune build. `make` builds bin/ggtune, `make test` runs every test,
# `make deps` links the pinned llama.cpp headers (third_party/ollama).
GO      ?= go
OLLAMA  := github.com/ollama/ollama

# SIMD: -march=native unless PORTABLE=1 (then a baseline x86-64/arm64 build).
ifeq ($(PORTABLE),1)
ARCHFLAGS :=
else
ARCHFLAGS := -march=native
endif
export CGO_CFLAGS   := -O3 $(ARCHFLAGS)
export CGO_CXXFLAGS := -O3 $(ARCHFLAGS)

TESTFLAGS ?= -count=1 -p 1 -timeout 80m
BACKEND_BUILD := build/backends
# Parallel jobs of the CMake backend builds (2 cores: more only thrashes).
JOBS ?= 2

.PHONY: all deps test race fuzz bench demo cuda vulkan clean vet

all: bin/ggtune

deps:
	@$(GO) mod download $(OLLAMA)
	@dir=$$($(GO) list -m -f '{{.Dir}}' $(OLLAMA)) && test -d "$$dir" && ln -sfn "$$dir" third_party/ollama
	@echo "third_party/ollama -> $$(readlink third_party/ollama)"

bin/ggtune: deps FORCE
	$(GO) build -o bin/ggtune ./cmd/ggtune

FORCE:

vet: deps
	$(GO) vet ./...

test: deps
	$(GO) test $(TESTFLAGS) ./...

# The race detector over every test (slower; its first build recompiles ggml).
race: deps
	$(GO) test -race $(TESTFLAGS) ./...

# Each fuzz target for FUZZTIME (CI runs them only over their seeds, in make test).
FUZZTIME ?= 60s
fuzz: deps
	$(GO) test -run XXX -fuzz '^FuzzOpenGGUF$$' -fuzztime $(FUZZTIME) -parallel 2 ./binding
	$(GO) test -run XXX -fuzz '^FuzzRead$$' -fuzztime $(FUZZTIME) -parallel 2 ./data
	$(GO) test -run XXX -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) -parallel 2 ./safetensors
	$(GO) test -run XXX -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) -parallel 2 ./method

bench: bin/ggtune
	./bin/ggtune bench
	./bin/ggtune bench --train

demo: bin/ggtune
	./bin/ggtune demo

# GPU backends are built from the pinned module's sources with CMake and
# loaded at run time from GGTUNE_BACKEND_PATH.
# `make cuda` builds libggml-cuda.so from CUDA_SRC (the pinned module; a copy
# of its CMakeLists.txt and ml/backend/ggml/ggml where Go is missing, as
# scripts/gpu-check.sh --prepare stages it) for CUDA_ARCHS: native (the GPUs
# nvidia-smi sees; CMake >= 3.24) by default, else 90 (Hopper); e.g.
# CUDA_ARCHS="80;90". CUDAHOSTCXX names nvcc's host compiler (CUDA 11.8 needs
# g++-11 or older). lib/ gets a self-contained copy: libggml-cuda.so and the
# libggml-base.so* it links (RPATH $ORIGIN). CUDA_ARCHS is worked out only
# when `make cuda` runs.
CUDA_SRC ?= third_party/ollama
CUDA_ARCHS ?= $(shell v=$$(cmake --version 2>/dev/null | sed -n '1s/[^0-9]*\([0-9]*\)\.\([0-9]*\).*/\1 \2/p'); \
	set -- $$v; if [ -n "$$1" ] && { [ "$$1" -gt 3 ] || { [ "$$1" -eq 3 ] && [ "$$2" -ge 24 ]; }; } && \
	nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then echo native; else echo 90; fi)
CUDA_OUT := $(BACKEND_BUILD)/cuda/lib/ollama

cuda: $(if $(filter third_party/ollama,$(CUDA_SRC)),deps)
	@command -v cmake >/dev/null || { echo "make cuda: cmake not found (apt-get install cmake)"; exit 1; }
	@command -v nvcc >/dev/null || { echo "make cuda: nvcc not found: install the CUDA toolkit and put its bin/ on PATH (e.g. export PATH=/usr/local/cuda/bin:\$$PATH)"; exit 1; }
	@test -f $(CUDA_SRC)/CMakeLists.txt || { echo "make cuda: CUDA_SRC=$(CUDA_SRC) has no CMakeLists.txt"; exit 1; }
	@echo "make cuda: nvcc $$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), architectures $(CUDA_ARCHS)$(if $(CUDAHOSTCXX), and host compiler $(CUDAHOSTCXX))"
	cmake -S $(CUDA_SRC) -B $(BACKEND_BUILD)/cuda -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_CUDA_COMPILER="$$(command -v nvcc)" '-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHS)' \
		$(if $(CUDAHOSTCXX),-DCMAKE_CUDA_HOST_COMPILER=$(CUDAHOSTCXX)) \
		-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$$ORIGIN' \
		-DCMAKE_DISABLE_FIND_PACKAGE_Vulkan=ON
	cmake --build $(BACKEND_BUILD)/cuda --target ggml-cuda --parallel $(JOBS)
	@test -f $(CUDA_OUT)/libggml-cuda.so || { echo "make cuda: the build made no $(CUDA_OUT)/libggml-cuda.so"; exit 1; }
	mkdir -p lib
	rm -f lib/libggml-cuda.so lib/libggml-base.so*
	cp -L $(CUDA_OUT)/libggml-cuda.so $(CUDA_OUT)/libggml-base.so* lib/
	@echo "built lib/libggml-cuda.so: run with GGTUNE_BACKEND_PATH=$(CURDIR)/lib"

# The Vulkan backend. Two gaps of the pinned module's zip are bridged by
# files of ours (scripts/vulkan): a glslc wrapper that answers CMake's
# shader-extension probes (the module lacks vulkan-shaders/feature-tests),
# and a header adding VK_EXT_layer_settings' types to older Vulkan headers
# (Debian 12's 1.3.239). The build folder and the bridge live in
# VULKAN_BUILD, outside the checkout by default, so that every clone of the
# same pin reuses one build.
VULKAN_BUILD ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ggtune/vulkan-ollama-v0.17.4
vulkan: deps
	@command -v cmake >/dev/null || { echo "make vulkan: cmake not found (apt-get install cmake)"; exit 1; }
	@command -v glslc >/dev/null || { echo "make vulkan: glslc not found (apt-get install glslc libvulkan-dev)"; exit 1; }
	@mkdir -p $(VULKAN_BUILD)/bridge/feature-tests $(VULKAN_BUILD)/bridge/include/vulkan
	@for f in glslc include/vulkan/vulkan.hpp $$(cd scripts/vulkan && ls feature-tests/*.comp); do \
		cmp -s scripts/vulkan/$$f $(VULKAN_BUILD)/bridge/$$f || cp scripts/vulkan/$$f $(VULKAN_BUILD)/bridge/$$f; done
	cmake -S $$(readlink -f third_party/ollama) -B $(VULKAN_BUILD)/build -DCMAKE_BUILD_TYPE=Release -DGGML_CCACHE=OFF \
		-DVulkan_GLSLC_EXECUTABLE=$(VULKAN_BUILD)/bridge/glslc -DCMAKE_CXX_FLAGS=-I$(VULKAN_BUILD)/bridge/include \
		-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$$ORIGIN'
	cmake --build $(VULKAN_BUILD)/build --target ggml-vulkan --parallel $(JOBS)
	mkdir -p lib && cp -L $(VULKAN_BUILD)/build/lib/ollama/libggml-vulkan.so $(VULKAN_BUILD)/build/lib/ollama/libggml-base.so.0 lib/
	@echo "built lib/libggml-vulkan.so: run with GGTUNE_BACKEND_PATH=$(CURDIR)/lib (see docs/gpu.md)"

clean:
	rm -rf bin build lib third_party/ollama
