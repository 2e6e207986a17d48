// Package devicetest selects the ggml device that device tests run on: the
// one named by GGTUNE_TEST_DEVICE (for example "Vulkan0" or "CUDA0"), with
// the backend libraries of GGTUNE_BACKEND_PATH. Without the variable a
// device test skips, except in CI (CI=true), where it fails: .ci/run builds
// the Vulkan backend and sets both variables, so a machine where that
// stage cannot run reports it instead of passing silently.
package devicetest

import (
	"os"
	"testing"

	"github.com/ggtune/ggtune/binding"
)

// Env is the variable naming the device.
const Env = "GGTUNE_TEST_DEVICE"

// Name returns the device to test on, skipping or failing t when none is
// set (see the package documentation).
func Name(t testing.TB) string {
	t.Helper()
	name := os.Getenv(Env)
	if name == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: CI runs the device tests on Vulkan (see .ci/run and make vulkan)", Env)
		}
		t.Skipf("%s is not set: no device to test on", Env)
	}
	return name
}

// Backend returns a backend on the test device, closed when the test ends.
func Backend(t testing.TB, threads int) *binding.Backend {
	t.Helper()
	name := Name(t)
	be, err := binding.NewBackend(name, threads)
	if err != nil {
		t.Fatalf("device %s (GGTUNE_BACKEND_PATH=%q): %v", name, os.Getenv("GGTUNE_BACKEND_PATH"), err)
	}
	if be.IsCPU() {
		be.Close()
		t.Fatalf("%s=%s names the CPU: device tests need another device", Env, name)
	}
	t.Cleanup(be.Close)
	return be
}
