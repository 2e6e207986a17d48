package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/model"
)

func init() { register(newGenerateCmd) }

// hookFlagFunc adds flags to a command and returns the function that turns
// them into hooks once the model is loaded (the cleanup frees what the hooks
// hold). Packages that provide hooks (adapters of every method) register
// one with registerHookFlags, and every command that runs the model gets
// their flags.
type hookFlagFunc func(cmd *cobra.Command) func(m *model.Model) (hooks []model.Hook, cleanup func(), err error)

var hookFlagFuncs []hookFlagFunc

func registerHookFlags(f hookFlagFunc) { hookFlagFuncs = append(hookFlagFuncs, f) }

// loadWithHooks loads the model at path and builds the hook stack of the
// command's flags; closeAll frees the hooks, then the model.
func loadWithHooks(path string, threads int, device string, hooksFromFlags func(*model.Model) ([]model.Hook, func(), error)) (m *model.Model, hooks []model.Hook, closeAll func(), err error) {
	m, err = model.Load(path, model.Options{Threads: threads, Device: device})
	if err != nil {
		return nil, nil, nil, err
	}
	hooks, cleanup, err := hooksFromFlags(m)
	if err != nil {
		m.Close()
		return nil, nil, nil, err
	}
	return m, hooks, func() { cleanup(); m.Close() }, nil
}

// addHookFlags adds the registered hook flags to cmd and returns a function
// that builds the combined hook stack.
func addHookFlags(cmd *cobra.Command) func(m *model.Model) ([]model.Hook, func(), error) {
	var builders []func(m *model.Model) ([]model.Hook, func(), error)
	for _, f := range hookFlagFuncs {
		builders = append(builders, f(cmd))
	}
	return func(m *model.Model) ([]model.Hook, func(), error) {
		var hooks []model.Hook
		var cleanups []func()
		cleanup := func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
		for _, b := range builders {
			hs, c, err := b(m)
			if err != nil {
				cleanup()
				return nil, func() {}, err
			}
			hooks = append(hooks, hs...)
			if c != nil {
				cleanups = append(cleanups, c)
			}
		}
		return hooks, cleanup, nil
	}
}

func newGenerateCmd() *cobra.Command {
	var (
		path, prompt, file string
		p                  model.GenerateParams
		seed               int64
		threads            int
		device             string
		asJSON             bool
	)
	cmd := &cobra.Command{
		Use:   "generate -m MODEL [-p PROMPT] [-n N]",
		Short: "Generate text with a model (ggtune's own graph, with a KV cache)",
		Long: "Generate text from a prompt and stream it to stdout (logs go to stderr). An empty or\n" +
			"absent prompt starts from BOS. --temp 0 is greedy. --chat formats the prompt with the\n" +
			"model's chat template. --json prints one object {prompt_ids, generated_ids, text}.",
		Args: cobra.NoArgs,
	}
	hooksFromFlags := addHookFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if path == "" {
			return fmt.Errorf("generate: -m MODEL is required")
		}
		if file != "" && cmd.Flags().Changed("prompt") {
			return fmt.Errorf("generate: %w: -p/--prompt and -f/--file are exclusive", errUsage)
		}
		if err := p.Validate(); err != nil {
			return fmt.Errorf("generate: %w (--temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, -n, -c)", err)
		}
		if file != "" {
			b, err := readInput(file)
			if err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			prompt = string(b)
		}
		if seed < 0 {
			p.Seed = rand.Uint64()
		} else {
			p.Seed = uint64(seed)
		}
		start := time.Now()
		m, hooks, closeAll, err := loadWithHooks(path, threads, device, hooksFromFlags)
		if err != nil {
			return err
		}
		defer closeAll()
		p.Hooks = hooks
		ids, err := m.PromptIDs(prompt, p)
		if err != nil {
			return err
		}
		s, err := m.NewSession(model.SessionOptions{NCtx: p.NCtx, Hooks: hooks})
		if err != nil {
			return err
		}
		defer s.Close()
		fmt.Fprintf(os.Stderr, "ggtune: loaded %s in %v; prompt %d tokens\n", path, time.Since(start).Round(time.Millisecond), len(ids))
		out := cmd.OutOrStdout()
		var onText func(string) error
		if !asJSON {
			onText = func(t string) error {
				_, err := fmt.Fprint(out, t)
				return err
			}
		}
		start = time.Now()
		res, err := s.Generate(cmd.Context(), ids, p, onText)
		if res != nil && len(res.IDs) > 0 {
			d := time.Since(start)
			fmt.Fprintf(os.Stderr, "\nggtune: %d tokens in %v (%.1f tokens/s), stop: %s\n", len(res.IDs), d.Round(time.Millisecond),
				float64(len(res.IDs))/d.Seconds(), res.StopReason)
		}
		if err != nil {
			return err
		}
		if asJSON {
			if res.IDs == nil {
				res.IDs = []int32{}
			}
			return json.NewEncoder(out).Encode(struct {
				PromptIDs []int32 `json:"prompt_ids"`
				IDs       []int32 `json:"generated_ids"`
				Text      string  `json:"text"`
				Stop      string  `json:"stop_reason"`
			}{res.PromptIDs, res.IDs, res.Text, res.StopReason})
		}
		fmt.Fprintln(out)
		return nil
	}
	f := cmd.Flags()
	f.StringVarP(&path, "model", "m", "", "model GGUF file")
	f.StringVarP(&prompt, "prompt", "p", "", "prompt text (empty: start from BOS)")
	f.StringVarP(&file, "file", "f", "", "read the prompt from this file (- for stdin)")
	f.IntVarP(&p.MaxTokens, "n-predict", "n", 128, "tokens to generate (-1: until EOS or the context is full)")
	f.Float32Var(&p.Temperature, "temp", 0.8, "temperature (0: greedy)")
	f.IntVar(&p.TopK, "top-k", 40, "top-k sampling (0: off)")
	f.Float32Var(&p.TopP, "top-p", 0.95, "top-p sampling (1: off)")
	f.Float32Var(&p.MinP, "min-p", 0.05, "min-p sampling (0: off)")
	f.Float32Var(&p.RepeatPenalty, "repeat-penalty", 1, "penalty for repeated tokens (1: off)")
	f.IntVar(&p.RepeatLastN, "repeat-last-n", 64, "tokens the repetition penalty looks back at")
	f.Int64VarP(&seed, "seed", "s", -1, "sampling seed (-1: random)")
	f.StringArrayVarP(&p.Stop, "reverse-prompt", "r", nil, "stop when this text is generated (repeatable)")
	f.BoolVar(&p.IgnoreEOS, "ignore-eos", false, "keep generating after end-of-generation tokens")
	f.BoolVar(&p.Chat, "chat", false, "apply the model's chat template to the prompt (a user message)")
	f.StringVar(&p.ChatTemplate, "chat-template", "", "chat template or built-in name (default: the model's)")
	f.StringVar(&p.System, "system", "", "system message in chat mode")
	f.IntVarP(&p.NCtx, "ctx-size", "c", 0, "context size (0: the model's, at most 4096)")
	f.IntVarP(&threads, "threads", "t", 0, "CPU threads (0: all)")
	f.StringVar(&device, "device", "", deviceUsage)
	f.BoolVar(&asJSON, "json", false, "print one JSON object instead of streaming")
	return cmd
}
