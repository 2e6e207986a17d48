package main

import (
	"context"
	"crypto/sha256"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/train"
)

// TestMain lets the signal tests run the CLI as a child process: the test
// binary re-executed with GGTUNE_TEST_MAIN=1 is ggtune.
func TestMain(m *testing.M) {
	if os.Getenv("GGTUNE_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child returns the CLI as a child process with args.
func child(args ...string) *exec.Cmd {
	c := exec.Command(os.Args[0], args...)
	c.Env = append(os.Environ(), "GGTUNE_TEST_MAIN=1")
	return c
}

// nanCopy writes a copy of the GGUF at src whose tensors hold NaN.
func nanCopy(t *testing.T, src, dst string) {
	t.Helper()
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	require.NoError(t, err)
	defer w.Close()
	for _, kv := range f.KVs() {
		require.NoError(t, w.Set(kv.Key, kv.Value))
	}
	for _, ti := range f.Tensors() {
		v, err := f.ReadTensorFloats(ti.Name)
		require.NoError(t, err)
		for i := range v {
			v[i] = float32(math.NaN())
		}
		require.NoError(t, w.AddFloats(ti.Name, binding.TypeF32, ti.Shape, v))
	}
	require.NoError(t, w.WriteFile(dst))
}

// TestCLIRefusesBadRequests: each of these was accepted, crashed, hung or
// destroyed an input; each is now an error that says what is wrong.
func TestCLIRefusesBadRequests(t *testing.T) {
	f := setup(t)
	model := filepath.Join(f.dir, "base.gguf")
	b, err := os.ReadFile(f.model)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(model, b, 0o644))
	adapter := filepath.Join(f.dir, "a.gguf")
	mustGgtune(t, "train", "lora", "-m", model, "--data", f.train, "-o", adapter, "--steps", "2", "--ctx", "32", "--batch", "2", "-t", "2", "--save-every", "2")
	nan := filepath.Join(f.dir, "nan.gguf")
	nanCopy(t, adapter, nan)
	link := filepath.Join(f.dir, "link.gguf")
	require.NoError(t, os.Symlink(model, link))
	fifo := filepath.Join(f.dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	promptFile := filepath.Join(f.dir, "prompt.txt")
	require.NoError(t, os.WriteFile(promptFile, []byte("Once"), 0o644))
	badCfg := filepath.Join(f.dir, "bad.yaml")
	require.NoError(t, os.WriteFile(badCfg, []byte("lr: 1e-3\nsteps: many\n"), 0o644))
	trainArgs := func(out string, extra ...string) []string {
		return append([]string{"train", "lora", "-m", model, "--data", f.train, "-o", out, "--steps", "1", "--ctx", "32", "--batch", "2", "-t", "2"}, extra...)
	}
	fresh := filepath.Join(f.dir, "fresh.gguf")
	inputs := map[string][32]byte{}
	for _, p := range []string{model, f.train, adapter} {
		inputs[p] = sha(t, p)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"train -o is -m", trainArgs(model), "-o " + model + " is the same file as the input -m"},
		{"train -o is a symlink to -m", trainArgs(link), "same file as the input -m"},
		{"train -o is --data", trainArgs(f.train), "same file as the input --data"},
		{"train --metrics is --data", trainArgs(fresh, "--metrics", f.train), "--metrics"},
		{"train --plot is -m", trainArgs(fresh, "--plot", model), "--plot"},
		{"train -o is a directory", trainArgs(f.dir), "is a directory"},
		{"checkpoint exists", trainArgs(adapter), "--overwrite"},
		{"resume and overwrite", trainArgs(adapter, "--resume", "--overwrite"), "exclusive"},
		{"train on a missing device", trainArgs(fresh, "--device", "NoSuch0"), `backend "NoSuch0": no such device (have CPU`},
		{"generate on a missing device", []string{"generate", "-m", model, "-n", "1", "--device", "NoSuch0"}, `backend "NoSuch0": no such device`},
		{"merge -o is --lora", []string{"merge", "-m", model, "--lora", adapter, "-o", adapter}, "same file as the input --lora"},
		{"merge -o is a symlink to -m", []string{"merge", "-m", model, "--lora", adapter, "-o", link}, "same file as the input -m"},
		{"merge NaN adapter", []string{"merge", "-m", model, "--lora", nan, "-o", fresh}, "non-finite"},
		{"merge adapter as base", []string{"merge", "-m", adapter, "--lora", adapter + ":0.5", "-o", fresh}, "this is an adapter"},
		{"eval NaN adapter", []string{"eval", "-m", model, "--data", f.val, "--lora", nan, "--ctx", "32"}, "non-finite"},
		{"generate adapter as -m", []string{"generate", "-m", adapter, "-n", "1"}, "this file with --lora"},
		{"generate -t 100000", []string{"generate", "-m", model, "-n", "1", "-t", "100000"}, "threads"},
		{"train -t 100000", trainArgs(fresh, "-t", "100000"), "threads"},
		{"generate --temp nan", []string{"generate", "-m", model, "-n", "1", "--temp", "nan"}, "temperature"},
		{"generate --top-p 2", []string{"generate", "-m", model, "-n", "1", "--top-p", "2"}, "top-p"},
		{"generate -c -1", []string{"generate", "-m", model, "-n", "1", "-c", "-1"}, "context size"},
		{"generate -p and -f", []string{"generate", "-m", model, "-p", "x", "-f", promptFile}, "exclusive"},
		{"train --epochs inf", trainArgs(fresh, "--epochs", "inf", "--steps", "0"), "--epochs"},
		{"train unknown method with flags", []string{"train", "qlora", "-m", model}, `unknown method "qlora"`},
		{"info FIFO", []string{"info", fifo}, "not a regular file"},
		{"generate -m FIFO", []string{"generate", "-m", fifo}, "not a regular file"},
		{"config value overridden by a flag", []string{"train", "lora", "-m", model, "--data", f.train, "-o", fresh, "--dry-run", "--config", badCfg, "--steps", "3"},
			`bad.yaml:2: invalid config file: key "steps"`},
		{"eval --data /dev/zero", []string{"eval", "-m", model, "--data", "/dev/zero", "--max-data-bytes", "1000000"}, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, _, err := ggtune(t, tc.args...)
				done <- err
			}()
			select {
			case err := <-done:
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
			case <-time.After(60 * time.Second):
				t.Fatal("the command hung")
			}
		})
	}
	for p, h := range inputs {
		assert.Equal(t, h, sha(t, p), "%s is untouched", p)
	}
	assert.NoFileExists(t, fresh)
	// A lower-case K-quant name is ggml's q4_K.
	typ, err := binding.TypeByName("q4_k")
	require.NoError(t, err)
	assert.Equal(t, binding.TypeQ4_K, typ)
}

// TestSignalsStopEveryCommand: eval on a FIFO whose writer never writes
// blocked forever and swallowed SIGINT/SIGTERM; every command but train now
// ends within a couple of seconds of the signal.
func TestSignalsStopEveryCommand(t *testing.T) {
	f := setup(t)
	fifo := filepath.Join(f.dir, "data.txt")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	w, err := os.OpenFile(fifo, os.O_RDWR, 0) // a writer that never writes
	require.NoError(t, err)
	defer w.Close()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			c := child("eval", "-m", f.model, "--data", fifo, "-t", "1")
			var stderr strings.Builder
			c.Stderr = &stderr
			require.NoError(t, c.Start())
			time.Sleep(1500 * time.Millisecond) // loaded and blocked reading
			sent := time.Now()
			require.NoError(t, c.Process.Signal(sig))
			exited := make(chan error, 1)
			go func() { exited <- c.Wait() }()
			select {
			case err := <-exited:
				took := time.Since(sent)
				t.Logf("%v: exited %v after %v", sig, err, took.Round(time.Millisecond))
				var ee *exec.ExitError
				require.ErrorAs(t, err, &ee, "stderr: %s", stderr.String())
				assert.Equal(t, 128+int(sig), ee.ExitCode())
				assert.Less(t, took, 3*time.Second)
			case <-time.After(20 * time.Second):
				c.Process.Kill()
				t.Fatalf("%v did not stop the command", sig)
			}
		})
	}
}

// TestTrainCheckpointsOnSIGHUP: a closed terminal (SIGHUP) stops train
// after the current step with a checkpoint, like Ctrl-C.
func TestTrainCheckpointsOnSIGHUP(t *testing.T) {
	f := setup(t)
	out := filepath.Join(f.dir, "hup.gguf")
	c := child("train", "lora", "-m", f.model, "--data", f.train, "-o", out, "--steps", "100000", "--ctx", "32", "--batch", "2", "-t", "2")
	var stderr lockedBuffer
	c.Stderr = &stderr
	require.NoError(t, c.Start())
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "step ") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, c.Process.Signal(syscall.SIGHUP))
	err := c.Wait()
	require.Error(t, err, "interrupted training exits non-zero")
	assert.Contains(t, stderr.String(), "--resume")
	assert.FileExists(t, out+".ckpt")
	assert.NoFileExists(t, out)
}

// TestStdoutWriteErrorFails: info and devices exited 0 when stdout could
// not be written.
func TestStdoutWriteErrorFails(t *testing.T) {
	f := setup(t)
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip("no /dev/full")
	}
	defer full.Close()
	for _, args := range [][]string{{"info", f.model}, {"devices"}} {
		c := child(args...)
		c.Stdout = full
		var stderr strings.Builder
		c.Stderr = &stderr
		err := c.Run()
		require.Error(t, err, "%v", args)
		assert.Contains(t, stderr.String(), "write stdout", "%v", args)
	}
}

// TestDivergedTrainExitsNonZero: --lr 1e30 wrote the adapter with exit 0.
func TestDivergedTrainExitsNonZero(t *testing.T) {
	f := setup(t)
	out := filepath.Join(f.dir, "div.gguf")
	for _, method := range []string{"lora", "full", "prompt"} {
		_, _, err := ggtuneCtx(context.Background(), "train", method, "-m", f.model, "--data", f.train, "-o", out, "--steps", "3",
			"--ctx", "32", "--batch", "2", "-t", "2", "--lr", "1e30", "--val", f.val, "--overwrite")
		require.ErrorIs(t, err, train.ErrDiverged, method)
		assert.Contains(t, err.Error(), "step", method)
		assert.NoFileExists(t, out, method)
	}
}

// sha returns the SHA-256 of a file.
func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// lockedBuffer is a strings.Builder that a child's output copier and the
// test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDataDropsReported: records that yield nothing to train were dropped
// silently; eval and train print the drops by reason, and a file with
// nothing trainable is an error naming the reasons.
func TestDataDropsReported(t *testing.T) {
	f := setup(t)
	chat := filepath.Join(f.dir, "chat.jsonl")
	require.NoError(t, os.WriteFile(chat, []byte(strings.Join([]string{
		`{"messages":[{"role":"user","content":"Once upon a time"},{"role":"assistant","content":"there was a girl."}]}`,
		`{"messages":[{"role":"human","content":"hi"},{"role":"gpt","content":"hello"}]}`,
		`{"messages":[{"role":"user","content":"hi"}]}`,
		`not json`,
	}, "\n")+"\n"), 0o644))
	_, stderr, err := ggtune(t, "eval", "-m", f.model, "--data", chat, "--chat-template", "chatml", "--ctx", "64", "--skip-bad", "-t", "2")
	require.NoError(t, err)
	assert.Contains(t, stderr, "3 records -> 1 examples")
	assert.Contains(t, stderr, "dropped 3: 1 malformed, skipped (--skip-bad) (first at "+chat+":4), 1 no assistant turn (first at "+chat+":3), 1 unknown chat role (first at "+chat+":2)")

	none := filepath.Join(f.dir, "none.jsonl")
	require.NoError(t, os.WriteFile(none, []byte(`{"messages":[{"role":"user","content":"hi"}]}`+"\n"), 0o644))
	_, _, err = ggtune(t, "train", "lora", "-m", f.model, "--data", none, "--chat-template", "chatml", "-o", filepath.Join(f.dir, "x.gguf"), "--steps", "1", "-t", "2")
	require.ErrorIs(t, err, data.ErrNoExamples)
	assert.Contains(t, err.Error(), "nothing trainable in 1 records; dropped 1: 1 no assistant turn")
}
