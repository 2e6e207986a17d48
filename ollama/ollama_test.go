package ollama_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/ollama"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

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

// need fails the test under CI (CI=true) and skips it otherwise.
func need(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// ollamaBinary builds the `ollama` command from the module version that
// go.mod pins, with the four headers the module zip leaves out taken from
// ../shared/vendor/ollama-vX (never copied), and caches it in
// $GGTUNE_CACHE (default the user cache dir) keyed by the version, OS and
// architecture. A cold build takes about 5 minutes on 2 cores.
func ollamaBinary(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s*github\.com/ollama/ollama (v\S+)`).FindSubmatch(gomod)
	require.NotNil(t, m, "ollama requirement in go.mod")
	version := string(m[1])
	cache := os.Getenv("GGTUNE_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		require.NoError(t, err)
		cache = filepath.Join(dir, "ggtune")
	}
	dir := filepath.Join(cache, fmt.Sprintf("ollama-%s-%s-%s", version, runtime.GOOS, runtime.GOARCH))
	bin := filepath.Join(dir, "ollama")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	vendor, err := filepath.Abs(filepath.Join(filepath.Dir(fixture.Dir()), "vendor", "ollama-"+version))
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(vendor, "nlohmann", "json.hpp")); err != nil {
		need(t, "the headers of %s are missing: %v", vendor, err)
	}
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds ollama")
	modDir, err := exec.Command(goBin, "list", "-m", "-f", "{{.Dir}}", "github.com/ollama/ollama").Output()
	require.NoError(t, err, "go list -m github.com/ollama/ollama")
	// A throwaway module that requires the pinned version; its go.sum is
	// ollama's own plus the pin's line of ours, so every dependency is
	// verified without a checksum database.
	build := filepath.Join(dir, "build")
	require.NoError(t, os.MkdirAll(build, 0o755))
	sum, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(modDir)), "go.sum"))
	require.NoError(t, err)
	ours, err := os.ReadFile(filepath.Join(root, "go.sum"))
	require.NoError(t, err)
	for _, line := range strings.Split(string(ours), "\n") {
		if strings.HasPrefix(line, "github.com/ollama/ollama "+version+" ") || strings.HasPrefix(line, "github.com/ollama/ollama "+version+"/") {
			sum = append(sum, line+"\n"...)
		}
	}
	require.NoError(t, os.WriteFile(filepath.Join(build, "go.sum"), sum, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(build, "go.mod"),
		[]byte("module ggtune.local/ollamabuild\n\ngo 1.24.1\n\nrequire github.com/ollama/ollama "+version+"\n"), 0o644))
	cmd := exec.Command(goBin, "build", "-o", bin+".tmp", "github.com/ollama/ollama")
	cmd.Dir = build
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOSUMDB=off", "GOWORK=off",
		"CGO_CPPFLAGS="+strings.TrimSpace(os.Getenv("CGO_CPPFLAGS")+" -I"+vendor))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building ollama:\n%s", out)
	require.NoError(t, os.Rename(bin+".tmp", bin))
	t.Logf("built %s in %s", bin, time.Since(start).Round(time.Second))
	return bin
}

// server is a running `ollama serve`.
type server struct {
	bin, url string
	env      []string
	cmd      *exec.Cmd
	log      *bytes.Buffer
}

// serve starts ollama on a free port of 127.0.0.1 with its models and home
// in temporary folders, and stops it (by process id) when the test ends.
func serve(t *testing.T, bin string) *server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	tmp := t.TempDir()
	s := &server{bin: bin, url: "http://" + addr, log: &bytes.Buffer{}}
	s.env = append(os.Environ(), "OLLAMA_HOST="+addr, "OLLAMA_MODELS="+filepath.Join(tmp, "models"),
		"HOME="+filepath.Join(tmp, "home"), "OLLAMA_NUM_PARALLEL=1", "OLLAMA_NOPRUNE=1")
	s.cmd = exec.Command(bin, "serve")
	s.cmd.Env = s.env
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, s.cmd.Start())
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		pid := s.cmd.Process.Pid
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-pid, syscall.SIGKILL) // the server and its runner
			<-done
		}
		if t.Failed() {
			t.Logf("ollama log:\n%s", s.log)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.url + "/api/version")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-done:
			t.Fatalf("ollama serve exited:\n%s", s.log)
		default:
		}
		require.True(t, time.Now().Before(deadline), "ollama did not answer within 30 s:\n%s", s.log)
		time.Sleep(100 * time.Millisecond)
	}
}

// create runs `ollama create NAME -f Modelfile` against the server.
func (s *server) create(t *testing.T, name string, mf ollama.Modelfile) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Modelfile")
	require.NoError(t, os.WriteFile(path, []byte(mf.String()), 0o644))
	cmd := exec.Command(s.bin, "create", name, "-f", path)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "ollama create %s:\n%s\nModelfile:\n%s", name, out, mf)
}

// generate asks the server for a greedy raw completion and returns the
// pieces of the generated tokens.
func (s *server) generate(t *testing.T, name, prompt string, n int) []string {
	t.Helper()
	req, err := json.Marshal(map[string]any{
		"model": name, "prompt": prompt, "raw": true, "stream": false, "logprobs": true,
		"options": map[string]any{"temperature": 0, "repeat_penalty": 1, "num_thread": 1, "seed": 42,
			"num_predict": n, "num_ctx": 256},
	})
	require.NoError(t, err)
	resp, err := http.Post(s.url+"/api/generate", "application/json", bytes.NewReader(req))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "generate: %s", body)
	var res struct {
		Response string `json:"response"`
		Logprobs []struct {
			Token string `json:"token"`
		} `json:"logprobs"`
	}
	require.NoError(t, json.Unmarshal(body, &res), "%s", body)
	pieces := make([]string, len(res.Logprobs))
	for i, l := range res.Logprobs {
		pieces[i] = l.Token
	}
	require.Equal(t, res.Response, strings.Join(pieces, ""), "the token pieces make the response")
	return pieces
}

// ggtuneGenerate generates greedily with ggtune's own graph (and the
// adapter, if any) and returns the generated tokens' pieces.
func ggtuneGenerate(t *testing.T, modelPath, adapter, prompt string, n int) []string {
	t.Helper()
	m, err := model.Load(modelPath, model.Options{Threads: 1})
	require.NoError(t, err)
	defer m.Close()
	var hooks []model.Hook
	if adapter != "" {
		f, err := binding.OpenGGUF(modelPath)
		require.NoError(t, err)
		defer f.Close()
		a, err := lora.Load(adapter, f, m.Backend())
		require.NoError(t, err)
		defer a.Close()
		hooks = append(hooks, a.Hook(1))
	}
	res, err := m.Generate(context.Background(), prompt, model.GenerateParams{MaxTokens: n, Hooks: hooks}, nil)
	require.NoError(t, err)
	vocab, err := binding.LoadModel(modelPath, binding.ModelParams{VocabOnly: true})
	require.NoError(t, err)
	defer vocab.Close()
	pieces := make([]string, len(res.IDs))
	for i, id := range res.IDs {
		pieces[i] = vocab.TokenPiece(binding.Token(id), false)
	}
	require.Equal(t, res.Text, strings.Join(pieces, ""))
	return pieces
}

// TestOllama builds Ollama from the pinned module, serves it, and checks
// that a LoRA trained by ggtune, given as ADAPTER, and the same adapter
// merged into the base, generate exactly the tokens ggtune generates.
func TestOllama(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ollama")
	}
	base := fixture.Path(t, "models/stories260K.gguf")
	text := fixture.Path(t, "text/tinyshakespeare.txt")
	bin := ollamaBinary(t)
	dir := t.TempDir()

	// A LoRA trained by ggtune: Shakespeare on a TinyStories model, so
	// that its greedy text visibly differs from the base's.
	data := filepath.Join(dir, "train.txt")
	raw, err := os.ReadFile(text)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(data, raw[:60000], 0o644))
	adapter := filepath.Join(dir, "lora.gguf")
	cfg := lora.DefaultConfig()
	_, err = finetune.Run(context.Background(), finetune.Job{Method: "lora", Model: base, Data: data, Output: adapter,
		Context: 64, Batch: 4, Pack: true, Seed: 1, Threads: 1, Config: &cfg,
		Train: train.Config{Steps: 30, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Constant, LR: 1e-2}}})
	require.NoError(t, err)
	merged := filepath.Join(dir, "merged.gguf")
	f, err := binding.OpenGGUF(base)
	require.NoError(t, err)
	backend, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	a, err := lora.Load(adapter, f, backend)
	require.NoError(t, err)
	require.NoError(t, lora.Merge(base, merged, []lora.Scaled{{Adapter: a, Scale: 1}}, lora.MergeOptions{}))
	a.Close()
	backend.Close()
	f.Close()

	arch, err := ollama.Check(adapter, base)
	require.NoError(t, err)
	require.False(t, ollama.NeedsMerge(arch), "stories260K (%s) runs on Ollama's llama.cpp runner", arch)

	const prompt, n = "Once upon a time", 48
	want := ggtuneGenerate(t, base, adapter, prompt, n)
	plain := ggtuneGenerate(t, base, "", prompt, n)
	require.NotEqual(t, plain, want, "the adapter changes the greedy text")
	wantMerged := ggtuneGenerate(t, merged, "", prompt, n)

	s := serve(t, bin)
	s.create(t, "ggtune-lora", ollama.Modelfile{From: base, Adapter: adapter, Params: ollama.SamplingParams(0, 0.95, 0.05, 1, 40, 64)})
	s.create(t, "ggtune-merged", ollama.Modelfile{From: merged})
	s.create(t, "ggtune-base", ollama.Modelfile{From: base})

	got := s.generate(t, "ggtune-lora", prompt, n)
	t.Logf("ollama with ADAPTER: %q", strings.Join(got, ""))
	assert.Equal(t, want, got, "Ollama (ADAPTER) and ggtune, token by token")
	assert.Equal(t, wantMerged, s.generate(t, "ggtune-merged", prompt, n), "Ollama (merged FROM) and ggtune on the merged model")
	assert.Equal(t, plain, s.generate(t, "ggtune-base", prompt, n), "Ollama and ggtune on the base")
}

// TestCheck covers the checks made before a Modelfile is written.
func TestCheck(t *testing.T) {
	base := fixture.Path(t, "models/stories260K.gguf")
	dir := t.TempDir()
	f, err := binding.OpenGGUF(base)
	require.NoError(t, err)
	defer f.Close()
	backend, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer backend.Close()
	a, err := lora.New(lora.DefaultConfig(), f, backend)
	require.NoError(t, err)
	defer a.Close()
	good := filepath.Join(dir, "lora.gguf")
	require.NoError(t, a.Save(good))
	arch, err := ollama.Check(good, base)
	require.NoError(t, err)
	assert.Equal(t, "llama", arch)

	m, err := model.Load(base, model.Options{Threads: 1})
	require.NoError(t, err)
	defer m.Close()
	p, err := prompttune.New(prompttune.Config{Method: prompttune.PromptTuning, NumVirtual: 4}, m, m.Backend())
	require.NoError(t, err)
	defer p.Close()
	soft := filepath.Join(dir, "prompt.gguf")
	require.NoError(t, p.Save(soft))
	_, err = ollama.Check(soft, base)
	require.ErrorIs(t, err, ollama.ErrSoftPrompt)
	assert.Contains(t, err.Error(), "prompt_tuning")

	_, err = ollama.Check(base, base)
	require.ErrorIs(t, err, ollama.ErrMismatch)

	// An adapter for another base: same architecture, other shapes.
	other := filepath.Join(dir, "other.gguf")
	require.NoError(t, writeRandom(other))
	_, err = ollama.Check(good, other)
	require.ErrorIs(t, err, ollama.ErrMismatch)
	assert.Contains(t, err.Error(), "do not fit the base weight")

	assert.True(t, ollama.NeedsMerge("qwen3"))
	assert.True(t, ollama.NeedsMerge("gemma3"))
	assert.False(t, ollama.NeedsMerge("llama"))
	assert.False(t, ollama.NeedsMerge("qwen2"))
}

func TestModelfileString(t *testing.T) {
	mf := ollama.Modelfile{From: "/m/base.gguf", Adapter: "/m/a.gguf", Template: "{{ .Prompt }}",
		Params: ollama.SamplingParams(0, 0.95, 0.05, 1, 40, 64)}
	assert.Equal(t, "FROM /m/base.gguf\nADAPTER /m/a.gguf\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n"+
		"PARAMETER temperature 0\nPARAMETER top_k 40\nPARAMETER top_p 0.95\nPARAMETER min_p 0.05\n"+
		"PARAMETER repeat_penalty 1\nPARAMETER repeat_last_n 64\n", mf.String())
}

func writeRandom(path string) error {
	return randmodel.Write(path, randmodel.Options{NEmbd: 32, NLayer: 5, NHead: 4, NHeadKV: 2, NFF: 96, Untied: true})
}

// TestTemplateFor checks that a base with a ChatML chat template (Jinja)
// gets Ollama's chatml template, and one without gets none.
func TestTemplateFor(t *testing.T) {
	base := fixture.Path(t, "models/stories260K.gguf")
	tmpl, err := ollama.TemplateFor(base)
	require.NoError(t, err)
	assert.Empty(t, tmpl, "stories260K has no chat template")

	const chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
	withTmpl := filepath.Join(t.TempDir(), "chat.gguf")
	require.NoError(t, ggufpatch.Write(base, withTmpl, nil, []binding.KV{{Key: "tokenizer.chat_template", Value: chatml}}))
	tmpl, err = ollama.TemplateFor(withTmpl)
	require.NoError(t, err)
	assert.Contains(t, tmpl, "<|im_start|>")
	assert.Contains(t, tmpl, "{{")
}
