package binding_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"

	"github.com/ggtune/ggtune/internal/fixture"
)

// consumerMain is the program of the throwaway module: it loads a model,
// generates greedily from BOS and prints the generated ids as JSON.
const consumerMain = `package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/ggtune/ggtune/model"
)

func main() {
	m, err := model.Load(os.Args[1], model.Options{Threads: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	s, err := m.NewSession(model.SessionOptions{NCtx: 64, F32Cache: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer s.Close()
	res, err := s.Generate(context.Background(), []int32{1}, model.GenerateParams{MaxTokens: 32, IgnoreEOS: true}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b, _ := json.Marshal(res.IDs)
	fmt.Println(string(b))
}
`

const modPath = "github.com/ggtune/ggtune"

// repoRoot returns the directory of the ggtune module.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module "+modPath+"\n") {
			return d
		}
		require.NotEqual(t, d, filepath.Dir(d), "no ggtune go.mod above %s", wd)
	}
}

// zipFile is one file of the checkout for golang.org/x/mod/zip.
type zipFile struct{ root, rel string }

func (f zipFile) Path() string                 { return f.rel }
func (f zipFile) Lstat() (os.FileInfo, error)  { return os.Lstat(filepath.Join(f.root, f.rel)) }
func (f zipFile) Open() (io.ReadCloser, error) { return os.Open(filepath.Join(f.root, f.rel)) }

// writeProxy writes a file-system GOPROXY under dir that serves the
// checkout's files (tracked and untracked, minus git-ignored ones) as one
// version of the ggtune module. The version is derived from the content, so
// a changed checkout never meets a stale copy in the module cache.
func writeProxy(t *testing.T, root, dir string) string {
	t.Helper()
	ls := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	ls.Dir = root
	out, err := ls.Output()
	require.NoError(t, err, "git ls-files in %s (the test needs git and a checkout)", root)
	h := sha256.New()
	var files []modzip.File
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		fi, err := os.Lstat(filepath.Join(root, rel))
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or a symlink
		}
		b, err := os.ReadFile(filepath.Join(root, rel))
		require.NoError(t, err)
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
		files = append(files, zipFile{root, filepath.ToSlash(rel)})
	}
	version := "v0.0.0-test." + hex.EncodeToString(h.Sum(nil))[:16]
	vdir := filepath.Join(dir, modPath, "@v")
	require.NoError(t, os.MkdirAll(vdir, 0o755))
	z, err := os.Create(filepath.Join(vdir, version+".zip"))
	require.NoError(t, err)
	require.NoError(t, modzip.Create(z, module.Version{Path: modPath, Version: version}, files))
	require.NoError(t, z.Close())
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(vdir, version+".mod"), gomod, 0o644))
	info := fmt.Sprintf(`{"Version":%q,"Time":"2026-01-01T00:00:00Z"}`, version)
	require.NoError(t, os.WriteFile(filepath.Join(vdir, version+".info"), []byte(info), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(vdir, "list"), []byte(version+"\n"), 0o644))
	return version
}

// consumerEnv is the environment of the child go commands: the parent's
// (GOCACHE, GOMODCACHE and the CGO flags carry over, so ggml is not rebuilt)
// with the file proxy in front of the usual one, no checksum database for
// the test version, no workspace and no -mod flag.
func consumerEnv(proxyDir string) []string {
	var env []string
	flags := []string{}
	proxy := "https://proxy.golang.org,direct"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "GOFLAGS="):
			for _, f := range strings.Fields(strings.TrimPrefix(kv, "GOFLAGS=")) {
				if !strings.HasPrefix(f, "-mod=") {
					flags = append(flags, f)
				}
			}
		case strings.HasPrefix(kv, "GOPROXY="):
			proxy = strings.TrimPrefix(kv, "GOPROXY=")
		case strings.HasPrefix(kv, "GOWORK="), strings.HasPrefix(kv, "GONOSUMDB="), strings.HasPrefix(kv, "GOPRIVATE="),
			strings.HasPrefix(kv, "GONOPROXY="):
		default:
			env = append(env, kv)
		}
	}
	if proxy == "" || proxy == "off" {
		proxy = "direct"
	}
	return append(env, "GOFLAGS="+strings.Join(flags, " "), "GOWORK=off",
		"GOPROXY=file://"+filepath.ToSlash(proxyDir)+","+proxy, "GONOSUMDB="+modPath)
}

// TestGoGetModule builds a program in another module that gets ggtune from
// a module proxy exactly as a user would (go mod init, go get, go build: no
// replace, no symlink, no make; go get names the imported package, as Go
// requires for its dependencies to land in go.mod), runs it, and compares its greedy
// generation with the reference ids of stories260K.greedy.json.
func TestGoGetModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and links a separate module")
	}
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed")
	stories := fixture.Path(t, "models/stories260K.gguf")
	raw, err := os.ReadFile(fixture.Path(t, "models/stories260K.greedy.json"))
	require.NoError(t, err)
	var want struct {
		IDs []int32 `json:"generated_token_ids"`
	}
	require.NoError(t, json.Unmarshal(raw, &want))
	require.GreaterOrEqual(t, len(want.IDs), 32)

	root := repoRoot(t)
	proxyDir := t.TempDir()
	version := writeProxy(t, root, proxyDir)
	dir := t.TempDir()
	// The checkout's go.sum vouches for the dependencies, so the test needs
	// no checksum database; ggtune's own test version is unknown to it.
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(consumerMain), 0o644))
	env := consumerEnv(proxyDir)
	bin := filepath.Join(dir, "consumer")
	for _, args := range [][]string{
		{"mod", "init", "example.com/consumer"},
		{"get", modPath + "/model"}, // the package main.go imports
		{"build", "-o", bin, "."},
	} {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = dir
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "go %s in the consumer module:\n%s", strings.Join(args, " "), out)
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	require.NoError(t, err)
	assert.Contains(t, string(gomod), modPath+" "+version)
	assert.NotContains(t, string(gomod), "replace")

	out, err := exec.Command(bin, stories).Output()
	require.NoError(t, err, "consumer: %s", out)
	var got []int32
	require.NoError(t, json.Unmarshal(out, &got), "consumer output %q", out)
	assert.Equal(t, want.IDs[:32], got)
}

// TestCgoIncludeVersion checks that the module-cache include paths of the
// cgo directives name the ollama version that go.mod pins.
func TestCgoIncludeVersion(t *testing.T) {
	root := repoRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	pin := regexp.MustCompile(`(?m)^\s*github\.com/ollama/ollama (v\S+)`).FindSubmatch(gomod)
	require.NotNil(t, pin, "ollama requirement in go.mod")
	for _, f := range []string{"binding/cgo.go", "csrc/csrc.go"} {
		src, err := os.ReadFile(filepath.Join(root, f))
		require.NoError(t, err)
		got := regexp.MustCompile(`#cgo CPPFLAGS: -I\$\{SRCDIR\}/\.\./\.\./\.\./ollama/ollama@(v[^/]+)/`).FindAllSubmatch(src, -1)
		require.NotEmpty(t, got, "%s has no module-cache include path", f)
		for _, g := range got {
			assert.Equal(t, string(pin[1]), string(g[1]), "%s", f)
		}
	}
}

// TestNoCgoMessage checks that a build without cgo stops with one clear
// message instead of a wall of compiler errors.
func TestNoCgoMessage(t *testing.T) {
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed")
	cmd := exec.Command(goBin, "build", "-o", os.DevNull, "./cmd/ggtune")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "ggtune needs cgo: build with CGO_ENABLED=1")
	assert.NotContains(t, string(out), "undefined:")
}
