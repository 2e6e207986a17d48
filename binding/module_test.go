package binding_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

// consumerMain is the program of the throwaway module: it prints the
// system information and the tokens of a text.
const consumerMain = `package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

func main() {
	info := binding.SystemInfo()
	if info == "" {
		fmt.Fprintln(os.Stderr, "empty system info")
		os.Exit(1)
	}
	fmt.Println("system:", strings.ReplaceAll(info, "\n", " "))
	m, err := binding.LoadModel(os.Args[1], binding.ModelParams{VocabOnly: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	toks, err := m.Tokenize(os.Args[2], true, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("tokens:", toks)
}
`

// repoRoot returns the directory of the ggtune module.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/ggtune/ggtune\n") {
			return d
		}
		require.NotEqual(t, d, filepath.Dir(d), "no ggtune go.mod above %s", wd)
	}
}

// buildEnv is the environment of the child go command: the parent's (so
// GOPROXY, GOFLAGS, GOCACHE and the CGO flags carry over) with -mod=mod so
// that the consumer's requirements are filled in from the checkout's.
func buildEnv() []string {
	var env []string
	flags := "-mod=mod"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "GOFLAGS="):
			for _, f := range strings.Fields(strings.TrimPrefix(kv, "GOFLAGS=")) {
				if !strings.HasPrefix(f, "-mod=") {
					flags += " " + f
				}
			}
		case strings.HasPrefix(kv, "GOWORK="):
		default:
			env = append(env, kv)
		}
	}
	return append(env, "GOFLAGS="+flags, "GOWORK=off")
}

// TestExternalModule builds a program in another module that imports
// binding through a replace directive pointing at this checkout, as the
// README describes, and runs it.
func TestExternalModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and links a separate module")
	}
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed")
	vocab := fixture.Path(t, "models/stories260K.gguf")
	root := repoRoot(t)
	rootMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(rootMod)
	require.NotNil(t, goVersion, "go directive of %s/go.mod", root)

	dir := t.TempDir()
	mod := fmt.Sprintf("module example.com/consumer\n\ngo %s\n\nrequire github.com/ggtune/ggtune v0.0.0\n\nreplace github.com/ggtune/ggtune => %s\n",
		goVersion[1], root)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644))
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(consumerMain), 0o644))

	bin := filepath.Join(dir, "consumer")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = buildEnv()
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build in the consumer module:\n%s", out)

	const text = "Once upon a time, there was a little girl."
	run := exec.Command(bin, vocab, text)
	out, err = run.CombinedOutput()
	require.NoError(t, err, "consumer output:\n%s", out)

	m, err := binding.LoadModel(vocab, binding.ModelParams{VocabOnly: true})
	require.NoError(t, err)
	defer m.Close()
	want, err := m.Tokenize(text, true, false)
	require.NoError(t, err)
	assert.Contains(t, string(out), "system: ")
	assert.Contains(t, string(out), "CPU")
	assert.Contains(t, string(out), fmt.Sprintf("tokens: %v\n", want))
}
