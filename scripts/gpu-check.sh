#!/usr/bin/env bash
# gpu-check.sh: build ggtune's CUDA backend on a machine with an NVIDIA GPU,
# check that ggtune lists the device, run the Device tests on it, and print
# training tokens/s on the GPU next to the CPU's. See docs/gpu.md.
#
#   scripts/gpu-check.sh              the whole check (needs nvidia-smi, nvcc, cmake)
#   scripts/gpu-check.sh --cpu-only   only the stages that need no GPU (a dry run)
#   scripts/gpu-check.sh --prepare    on a machine with Go: stage prebuilt binaries
#                                     and sources in build/gpu-check/carry for a GPU
#                                     machine without Go or network
#
# Options: --steps N (training steps per measurement, >= 2; default 3),
# --threads N (CPU threads; default nproc), --small (the 86M model only),
# --source (build with Go here even when a prepared pack is present).
# Environment: CUDA_ARCHS, CUDAHOSTCXX (passed to make cuda), GGTUNE_TESTDATA,
# GPU_CHECK_DEVICE (default CUDA0), OUT (where the logs go; default
# build/gpu-check/logs).
#
# Every stage has a time limit and logs to a file; the exit status is non-zero
# when a stage failed, and the last line names the failed stages.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WORK=$ROOT/build/gpu-check
CARRY=$WORK/carry
PACK=$CARRY/gpu-check-carry.tar.xz
PRE=$WORK/prebuilt
LOGS=${OUT:-$WORK/logs}
PKGS="binding model train finetune"

CPU_ONLY=0 PREPARE=0 FORCE_SOURCE=0 SMALL=0 STEPS=3 THREADS=$(nproc)
while [ $# -gt 0 ]; do
	case $1 in
	--cpu-only) CPU_ONLY=1 ;;
	--prepare) PREPARE=1 ;;
	--source) FORCE_SOURCE=1 ;;
	--small) SMALL=1 ;;
	--steps) STEPS=${2:?--steps needs a number}; shift ;;
	--threads) THREADS=${2:?--threads needs a number}; shift ;;
	-h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
case $STEPS in '' | *[!0-9]*) echo "gpu-check: --steps $STEPS: want a number >= 2" >&2; exit 2 ;; esac
case $THREADS in '' | *[!0-9]* | 0) echo "gpu-check: --threads $THREADS: want a number >= 1" >&2; exit 2 ;; esac
[ "$STEPS" -ge 2 ] || { echo "gpu-check: --steps $STEPS: want >= 2 (the first step is a warm-up)" >&2; exit 2; }

mkdir -p "$LOGS" "$WORK"
T0=$(date +%s)
log() { printf '[%s +%3ds] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - T0))" "$*"; }

# --prepare -----------------------------------------------------------------

# prepare builds, with Go, what a GPU machine without Go needs, for any
# recent x86-64 CPU rather than this one: ggtune for x86-64-v4 (AVX-512; the
# CPU baseline of the benchmark, about 3 times as fast as v3 here) and v3, the
# model writer and the test binaries for v3; with the CMake sources of the
# backend and the test data, packed into $PACK.
prepare() {
	local stage=$WORK/prepare-stage plog=$LOGS/prepare.log p td m
	command -v go >/dev/null || { log "prepare: FAILED: go is not on PATH"; return 1; }
	: >"$plog"
	log "prepare: building ggtune for x86-64-v4 and v3, the rest for v3 (log: $plog)"
	rm -rf "$stage" && mkdir -p "$stage/tests" "$stage/ollama/ml/backend/ggml" "$stage/testdata"
	timeout 120 make deps >>"$plog" 2>&1
	for m in x86-64-v4 x86-64-v3; do
		export CGO_CFLAGS="-O3 -march=$m" CGO_CXXFLAGS="-O3 -march=$m"
		timeout 1200 go build -ldflags='-s -w' -o "$stage/ggtune.$m" ./cmd/ggtune >>"$plog" 2>&1
	done
	{
		timeout 600 go build -ldflags='-s -w' -o "$stage/mkmodels" scripts/gpu-check/mkmodels.go
		for p in $PKGS; do
			timeout 600 go test -c -ldflags='-s -w' -o "$stage/tests/$p.test" "./$p"
		done
	} >>"$plog" 2>&1
	log "prepare: binaries built"
	cp third_party/ollama/CMakeLists.txt "$stage/ollama/"
	cp -R third_party/ollama/ml/backend/ggml/ggml "$stage/ollama/ml/backend/ggml/"
	td=$(testdata_dir)
	if [ -n "$td" ]; then
		mkdir -p "$stage/testdata/vocab"
		cp -R "$td/models" "$td/text" "$stage/testdata/"
		cp "$td/vocab/ggml-vocab-deepseek-llm.gguf" "$td/vocab/ggml-vocab-llama-spm.gguf" "$stage/testdata/vocab/" 2>/dev/null || true
	else
		log "prepare: no test data found (set GGTUNE_TESTDATA): the pack has none"
	fi
	chmod -R u+w "$stage"
	{
		echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
		echo "dirty $(git status --porcelain 2>/dev/null | grep -cv '^??' || true)"
		echo "march x86-64-v4,v3 (tests v3)"
		echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(go version)"
	} >"$stage/MANIFEST"
	mkdir -p "$CARRY"
	XZ_OPT=-6 timeout 600 tar -C "$stage" -cJf "$PACK.tmp" . && mv "$PACK.tmp" "$PACK"
	rm -rf "$stage"
	log "prepare: wrote $PACK ($(du -m "$PACK" | cut -f1) MB; the device tool carries at most 64 MiB with the tree)"
	log "prepare: on the GPU machine: carry build/gpu-check/carry and run: bash scripts/gpu-check.sh"
}

# testdata_dir prints the shared test data directory, or nothing.
testdata_dir() {
	local d
	for d in "${GGTUNE_TESTDATA:-}" "$ROOT/../shared/testdata" "$ROOT/shared/testdata" "$PRE/testdata"; do
		if [ -n "$d" ] && [ -d "$d/models" ]; then
			(cd "$d" && pwd)
			return
		fi
	done
}

if [ "$PREPARE" = 1 ]; then
	prepare
	exit
fi

# Setup (this shell) ------------------------------------------------------------

# The toolkit: nvcc on PATH, else the newest /usr/local/cuda*/bin.
if ! command -v nvcc >/dev/null; then
	for d in /usr/local/cuda/bin $(printf '%s\n' /usr/local/cuda-*/bin | sort -rV); do
		if [ -x "$d/nvcc" ]; then
			PATH=$d:$PATH
			break
		fi
	done
fi
if ! command -v nvidia-smi >/dev/null && [ -x /usr/local/nvidia/bin/nvidia-smi ]; then
	PATH=$PATH:/usr/local/nvidia/bin
fi
export PATH
export CCACHE_DISABLE=1 # make cuda: no compiler cache (ggml turns ccache on when it finds it)
export CGO_CFLAGS="-O3 -march=native" CGO_CXXFLAGS="-O3 -march=native"

# Mode: the prepared pack (prebuilt), else Go (source).
if [ -f "$PACK" ] && [ "$FORCE_SOURCE" = 0 ]; then
	MODE=prebuilt GGTUNE=$PRE/ggtune MKMODELS=$PRE/mkmodels CUDA_SRC=$PRE/ollama
else
	MODE=source GGTUNE=$ROOT/bin/ggtune MKMODELS=$WORK/mkmodels CUDA_SRC=third_party/ollama
fi
DEVICE=${GPU_CHECK_DEVICE:-CUDA0}
BACKENDS=$ROOT/lib
MODELS=$WORK/models
DATA=$WORK/data.txt
export ROOT WORK PACK PRE LOGS PKGS CPU_ONLY SMALL STEPS THREADS MODE GGTUNE MKMODELS CUDA_SRC DEVICE BACKENDS MODELS DATA T0

# Stages ------------------------------------------------------------------------
# Each stage runs in a child bash under timeout, writes its detail to a log
# under $LOGS and prints a few lines here.

stage_detect() {
	local l=$LOGS/setup.log
	{ uname -a; nproc; free -g || true; } >>"$l" 2>&1
	log "detect: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), mode $MODE"
	local ok=1
	if nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$l" 2>&1; then
		log "detect: GPU $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
	else
		log "detect: nvidia-smi found no GPU"
		ok=0
	fi
	if command -v nvcc >/dev/null; then
		log "detect: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $(command -v nvcc)"
	else
		log "detect: nvcc not found (PATH, /usr/local/cuda*/bin)"
		ok=0
	fi
	if command -v cmake >/dev/null; then
		log "detect: $(cmake --version | head -1)"
	else
		log "detect: cmake not found"
		ok=0
	fi
	local t
	for t in make g++; do
		if command -v "$t" >/dev/null; then
			log "detect: $("$t" --version | head -1)"
		else
			log "detect: $t not found"
			ok=0
		fi
	done
	log "detect: go: $(command -v go >/dev/null && go version || echo none)"
	[ "$CPU_ONLY" = 1 ] || [ "$ok" = 1 ]
}

stage_toolchain() {
	local l=$LOGS/setup.log
	if [ "$MODE" = prebuilt ]; then
		if ! cmp -s "$PACK" "$PRE/.pack" 2>/dev/null; then
			rm -rf "$PRE" && mkdir -p "$PRE"
			if command -v xz >/dev/null; then
				tar -C "$PRE" -xJf "$PACK" >>"$l" 2>&1
			else
				python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$PACK" "$PRE" >>"$l" 2>&1
			fi
			cp "$PACK" "$PRE/.pack"
		fi
		# ggtune for AVX-512 (x86-64-v4) where the CPU has it, else for v3.
		local m=x86-64-v4 f
		for f in avx512f avx512bw avx512cd avx512dq avx512vl; do
			grep -qw "$f" /proc/cpuinfo || m=x86-64-v3
		done
		cp "$PRE/ggtune.$m" "$GGTUNE"
		echo "$m" >"$WORK/ggtune-march"
		log "toolchain: ggtune for $m"
		log "toolchain: prebuilt pack: $(tr '\n' ' ' <"$PRE/MANIFEST")"
		local head
		head=$(git rev-parse HEAD 2>/dev/null || true)
		if [ -n "$head" ] && ! grep -q "^commit $head" "$PRE/MANIFEST"; then
			log "toolchain: WARNING: the pack was built from another commit than this checkout ($head)"
		fi
	else
		command -v go >/dev/null || {
			log "toolchain: go is not on PATH and there is no prepared pack ($PACK): run scripts/gpu-check.sh --prepare where Go is, and carry build/gpu-check/carry"
			return 1
		}
		{
			make deps
			go build -o "$GGTUNE" ./cmd/ggtune
			go build -o "$MKMODELS" scripts/gpu-check/mkmodels.go
		} >>"$l" 2>&1
		echo native >"$WORK/ggtune-march"
	fi
	"$GGTUNE" --help >>"$l" 2>&1 || { log "toolchain: $GGTUNE does not run"; return 1; }
	log "toolchain: $GGTUNE runs"
}

stage_models() {
	local l=$LOGS/setup.log td vocab=() names=(llama-86M-f32) t
	td=$(testdata_dir)
	[ "$SMALL" = 1 ] || names+=(qwen2-541M-q8_0)
	if [ -n "$td" ] && [ -f "$td/vocab/ggml-vocab-deepseek-llm.gguf" ]; then
		vocab=(-vocab "$td/vocab/ggml-vocab-deepseek-llm.gguf")
	fi
	"$MKMODELS" -out "$MODELS" "${vocab[@]}" "${names[@]}" >>"$l" 2>&1
	log "models: ${names[*]} in $MODELS (541M vocabulary: ${vocab[1]:-synthetic})"
	if [ ! -s "$DATA" ]; then
		: >"$DATA.tmp"
		for t in "$td/text/tinystories_sample.txt" "$td/text/tinyshakespeare.txt"; do
			if [ -n "$td" ] && [ -f "$t" ]; then cat "$t" >>"$DATA.tmp"; fi
		done
		head -c 400000 "$DATA.tmp" >"$DATA.cut" && mv "$DATA.cut" "$DATA.tmp"
		if [ ! -s "$DATA.tmp" ]; then
			t="the quick brown fox jumps over the lazy dog while a small model learns to tell stories about it"
			for _ in $(seq 4500); do echo "$t"; done >"$DATA.tmp"
		fi
		mv "$DATA.tmp" "$DATA"
	fi
	log "models: data $DATA ($(($(wc -c <"$DATA") / 1024)) KB)"
}

stage_cuda_build() {
	local l=$LOGS/cuda-build.log
	log "cuda-build: make cuda JOBS=$(nproc) CUDA_SRC=$CUDA_SRC (log: $l)"
	if ! make cuda JOBS="$(nproc)" CUDA_SRC="$CUDA_SRC" >"$l" 2>&1; then
		log "cuda-build: make cuda failed; the end of $l:"
		grep -E 'error|Error' "$l" | sed -n 1,20p || true
		tail -n 15 "$l"
		return 1
	fi
	log "cuda-build: $(grep '^make cuda:' "$l" | head -1)"
	local f sizes=
	for f in "$BACKENDS"/libggml-cuda.so "$BACKENDS"/libggml-base.so*; do
		sizes+=" $(basename "$f") $(($(stat -c %s "$f") >> 20)) MB"
	done
	log "cuda-build: lib/:$sizes"
}

# cuda_libs adds the directories of the CUDA libraries that libggml-cuda.so
# does not find to LD_LIBRARY_PATH (this shell, before the stages that load it).
cuda_libs() {
	local so=$BACKENDS/libggml-cuda.so d missing
	[ -f "$so" ] || return 0
	missing=$(ldd "$so" 2>&1 | grep 'not found' || true)
	[ -n "$missing" ] || return 0
	log "setup: libggml-cuda.so misses: $(echo "$missing" | awk '{printf "%s ", $1}')"
	for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
		/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
		if [ -d "$d" ]; then LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
	done
	export LD_LIBRARY_PATH
	log "setup: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
	missing=$(ldd "$so" 2>&1 | grep 'not found' || true)
	if [ -n "$missing" ]; then
		log "setup: libggml-cuda.so still misses: $(echo "$missing" | awk '{printf "%s ", $1}')"
	fi
}

stage_devices() {
	local l=$WORK/devices.txt rc=0
	if [ "$CPU_ONLY" = 1 ]; then
		"$GGTUNE" devices >"$l" 2>&1 || rc=$?
	else
		GGTUNE_BACKEND_PATH=$BACKENDS "$GGTUNE" devices >"$l" 2>&1 || rc=$?
	fi
	cat "$l" >>"$LOGS/setup.log"
	head -n 12 "$l" | sed 's/^/    /'
	[ "$rc" = 0 ] || return "$rc"
	[ "$CPU_ONLY" = 1 ] && return 0
	if ! awk -F'\t' -v d="$DEVICE" '$2 == d {found = 1} END {exit !found}' "$l"; then
		log "devices: $DEVICE is not listed (GGTUNE_BACKEND_PATH=$BACKENDS); CUDA devices: $(awk -F'\t' '$2 ~ /^CUDA/ {printf "%s ", $2}' "$l")"
		return 1
	fi
	log "devices: $DEVICE listed"
}

stage_device_tests() {
	local l=$LOGS/device-tests.log p rc=0 td
	td=$(testdata_dir)
	: >"$l"
	log "device-tests: GGTUNE_TEST_DEVICE=$DEVICE, -run Device in $PKGS (log: $l)"
	export GGTUNE_TEST_DEVICE=$DEVICE GGTUNE_BACKEND_PATH=$BACKENDS
	[ -n "$td" ] && export GGTUNE_TESTDATA=$td
	if [ "$MODE" = source ]; then
		local dirs=()
		for p in $PKGS; do dirs+=("./$p"); done
		go test -count=1 -p 1 -v -timeout 5m -run Device "${dirs[@]}" >>"$l" 2>&1 || rc=1
	else
		for p in $PKGS; do
			echo "=== package $p" >>"$l"
			(cd "$ROOT/$p" && "$PRE/tests/$p.test" -test.count=1 -test.v -test.timeout 5m -test.run Device) >>"$l" 2>&1 || rc=1
		done
	fi
	local pass fail skip
	pass=$(grep -c '^--- PASS' "$l" || true)
	fail=$(grep -c '^--- FAIL' "$l" || true)
	skip=$(grep -c '^--- SKIP' "$l" || true)
	log "device-tests: $pass passed, $fail failed, $skip skipped"
	grep -E '^(--- FAIL|--- SKIP|FAIL|ok|panic:)' "$l" | sed -n 's/^/    /; 1,20p' || true
	if [ "$fail" -gt 0 ] || [ "$rc" != 0 ]; then
		log "device-tests: failures; the end of $l:"
		tail -n 25 "$l"
		return 1
	fi
	if [ "$pass" = 0 ]; then
		log "device-tests: no Device test ran"
		return 1
	fi
}

# bench_one runs one bench-worker and prints "tok_s peak_rss_bytes", or "fail".
bench_one() {
	local model=$1 method=$2 dev=$3 out l=$LOGS/bench.log
	local args=(bench-worker -m "$MODELS/$model.gguf" --data "$DATA" --method "$method" --ctx 256 --steps "$STEPS" --grad-checkpoint off -t "$THREADS")
	[ "$dev" = CPU ] || args+=(--device "$dev")
	echo "=== $model $method $dev: ${args[*]}" >>"$l"
	if out=$(GGTUNE_BACKEND_PATH=$BACKENDS timeout 150 "$GGTUNE" "${args[@]}" 2>>"$l"); then
		echo "$out" >>"$l"
		local tok rss
		tok=$(echo "$out" | sed -n 's/.*"tok_s": *\([0-9.eE+-]*\).*/\1/p' | sed -n 1p)
		rss=$(echo "$out" | sed -n 's/.*"peak_rss[a-z_]*": *\([0-9]*\).*/\1/p' | sed -n 1p)
		[ -n "$tok" ] && { echo "$tok ${rss:-0}"; return; }
	fi
	echo fail
}

stage_bench() {
	local rows=("llama-86M-f32 lora" "llama-86M-f32 full") row model method cpu gpu failed=0
	[ "$SMALL" = 1 ] || rows+=("qwen2-541M-q8_0 lora")
	: >"$LOGS/bench.log"
	log "bench: ctx 256, $STEPS steps (median after a warm-up), CPU -t $THREADS, ggtune built for -march=$(cat "$WORK/ggtune-march") (log: $LOGS/bench.log)"
	{
		printf '%-16s %-6s %14s' model method "CPU tok/s"
		[ "$CPU_ONLY" = 1 ] || printf ' %14s %8s %12s' "$DEVICE tok/s" speedup "$DEVICE RSS MB"
		printf '\n'
	} >"$WORK/bench.txt"
	for row in "${rows[@]}"; do
		read -r model method <<<"$row"
		cpu=$(bench_one "$model" "$method" CPU)
		[ "$cpu" = fail ] && failed=1
		printf '%-16s %-6s %14s' "$model" "$method" "$(fmt_tok "$cpu")" >>"$WORK/bench.txt"
		if [ "$CPU_ONLY" = 0 ]; then
			gpu=$(bench_one "$model" "$method" "$DEVICE")
			[ "$gpu" = fail ] && failed=1
			printf ' %14s %8s %12s' "$(fmt_tok "$gpu")" "$(speedup "$cpu" "$gpu")" "$(rss_mb "$gpu")" >>"$WORK/bench.txt"
		fi
		printf '\n' >>"$WORK/bench.txt"
		log "bench: $model $method done"
	done
	sed 's/^/    /' "$WORK/bench.txt"
	if [ "$failed" = 1 ]; then
		log "bench: a measurement failed; the end of $LOGS/bench.log:"
		tail -n 15 "$LOGS/bench.log"
		return 1
	fi
}

rss_mb() { if [ "$1" = fail ]; then echo -; else echo "$1" | awk '{printf "%.0f", $2/1e6}'; fi; }
fmt_tok() { if [ "$1" = fail ]; then echo FAIL; else echo "$1" | awk '{printf "%.1f", $1}'; fi; }
speedup() { if [ "$1" = fail ] || [ "$2" = fail ]; then echo -; else echo "$1 $2" | awk '$1 > 0 {printf "%.1fx", $3/$1} $1 <= 0 {print "-"}'; fi; }

export -f log testdata_dir stage_detect stage_toolchain stage_models stage_cuda_build stage_devices stage_device_tests bench_one stage_bench rss_mb fmt_tok speedup

# Runner --------------------------------------------------------------------------

declare -A STATUS DUR
ORDER=()
FAILED=()

# run_stage NAME LIMIT_S FUNCTION [NEEDED_STAGE...] runs FUNCTION under
# timeout when every needed stage passed.
run_stage() {
	local name=$1 limit=$2 fn=$3 t rc n
	shift 3
	ORDER+=("$name")
	for n in "$@"; do
		if [ "${STATUS[$n]:-}" != ok ]; then
			STATUS[$name]="skipped ($n did not pass)"
			log "$name: skipped: $n did not pass"
			return 0
		fi
	done
	log "$name: start (limit ${limit}s)"
	t=$SECONDS
	set +e
	timeout -k 10 "$limit" bash -euo pipefail -c "$fn"
	rc=$?
	set -e
	DUR[$name]="$((SECONDS - t))s"
	if [ "$rc" = 0 ]; then
		STATUS[$name]=ok
		log "$name: ok (${DUR[$name]})"
		return 0
	fi
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		STATUS[$name]="FAILED: timed out after ${limit}s"
	else
		STATUS[$name]="FAILED (exit $rc)"
	fi
	FAILED+=("$name")
	log "$name: ${STATUS[$name]}"
}

: >"$LOGS/setup.log"
{
	log "gpu-check: $ROOT, logs in $LOGS$([ "$CPU_ONLY" = 1 ] && echo ', --cpu-only')"
	run_stage detect 60 stage_detect
	run_stage toolchain 420 stage_toolchain
	run_stage models 120 stage_models toolchain
	if [ "$CPU_ONLY" = 1 ]; then
		run_stage devices 60 stage_devices toolchain
		run_stage bench 300 stage_bench models
	else
		run_stage cuda-build 420 stage_cuda_build detect toolchain
		cuda_libs
		run_stage devices 60 stage_devices cuda-build
		run_stage device-tests 240 stage_device_tests devices
		# The CPU column needs only the models; the GPU one, the device.
		if [ "${STATUS[devices]}" != ok ]; then
			log "bench: CPU only: $DEVICE did not pass the devices stage"
			CPU_ONLY=1
		fi
		run_stage bench 300 stage_bench models
	fi
	log "gpu-check: done"
	for n in "${ORDER[@]}"; do printf '    %-13s %-6s %s\n' "$n" "${DUR[$n]:-}" "${STATUS[$n]}"; done
	if [ "${#FAILED[@]}" -gt 0 ]; then
		log "gpu-check: FAILED: ${FAILED[*]} (logs in $LOGS)"
		exit 1
	fi
	log "gpu-check: all stages passed"
} 2>&1 | tee "$LOGS/summary.txt"
