package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/hub"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/train"
)

func init() { register(newDistillCmd) }

// defaultDistillMethod is the method of `ggtune distill` without --method.
const defaultDistillMethod = "lora"

// newDistillCmd builds `ggtune distill`: training any method with a
// distillation objective. The method (--method) decides the method flags,
// so the arguments are parsed by the method's command.
func newDistillCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "distill --teacher T.gguf -m STUDENT.gguf --method METHOD --data FILE -o OUT [flags]",
		Short: "Train a student model by knowledge distillation from a teacher (any method)",
		Long: "Train -m STUDENT with --method (" + strings.Join(method.Names(), ", ") + "; default " + defaultDistillMethod + ") on\n" +
			"(1-alpha)*CE(labels) + alpha*T^2*D(teacher||student) at temperature T, D = forward KL, reverse KL or\n" +
			"generalized JSD(beta). The teacher (--teacher, with --teacher-adapter A[:S]...) must share the student's\n" +
			"token list; it runs in the same graph at every step, or once into --teacher-cache DIR (top-k per position).\n" +
			"Every flag of `ggtune train METHOD` applies; a method flag that distill also has is --METHOD-NAME\n" +
			"(LoRA's --alpha is --lora-alpha). Run `ggtune distill --method METHOD --help` for all flags.",
		Example: "  ggtune distill --teacher big.gguf -m small.gguf --method lora --data train.txt --val-split 0.05 -o student.gguf\n" +
			"  ggtune distill --teacher base.gguf --teacher-adapter shakespeare.gguf -m base.gguf --method full --data t.txt -o s.gguf \\\n" +
			"      --alpha 0.7 --temperature 2 --divergence jsd --beta 0.5 --teacher-cache cache/ --top-k 128",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := method.Get(methodArg(args))
			if err != nil {
				return fmt.Errorf("distill: %w: %w", errUsage, err)
			}
			sub := newDistillMethodCmd(m)
			sub.Long = cmd.Long
			sub.SetContext(cmd.Context())
			sub.SetOut(cmd.OutOrStdout())
			sub.SetErr(cmd.ErrOrStderr())
			sub.InitDefaultHelpFlag()
			if err := sub.ParseFlags(args); err != nil {
				return fmt.Errorf("%s: %w: %w", cmd.CommandPath(), errUsage, err)
			}
			if help, _ := sub.Flags().GetBool("help"); help {
				return sub.Help()
			}
			if len(sub.Flags().Args()) > 0 {
				return fmt.Errorf("%s: %w: unexpected arguments %q", cmd.CommandPath(), errUsage, sub.Flags().Args())
			}
			if err := resolveModelFlag(sub, nil); err != nil {
				return err
			}
			return sub.RunE(sub, nil)
		},
	}
	return cmd
}

// methodArg returns the value of --method in args (the default without one).
func methodArg(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--method="); ok {
			return v
		}
		if a == "--method" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return defaultDistillMethod
}

// distillOpts holds distill's own flags.
type distillOpts struct {
	method, teacher, cacheDir string
	adapters                  adapterSpecs
	alpha, temperature, beta  float64
	divergence                string
	topK                      int
}

// newDistillMethodCmd builds the command that distils with method m: the
// training flags, m's flags and distill's.
func newDistillMethodCmd(m method.Method) *cobra.Command {
	var o distillOpts
	def := train.DefaultDistill()
	cmd := newJobCmd(m, jobExtension{
		flags: func(f *pflag.FlagSet) {
			f.StringVar(&o.method, "method", defaultDistillMethod, "method that trains the student: "+strings.Join(method.Names(), ", "))
			f.StringVar(&o.teacher, "teacher", "", "teacher model GGUF with the student's vocabulary (required; may be larger, quantized, another llama-family architecture)")
			f.Var(&o.adapters, "teacher-adapter", "adapter applied to the teacher, PATH or PATH:SCALE; repeatable (stacked in order)")
			f.Float64Var(&o.alpha, "alpha", def.Alpha, "weight of the divergence: loss = (1-alpha)*CE + alpha*T^2*D")
			f.Float64Var(&o.temperature, "temperature", def.Temperature, "temperature T of teacher and student distributions")
			f.StringVar(&o.divergence, "divergence", string(def.Divergence), "D: kl (forward, teacher||student), reverse-kl or jsd")
			f.Float64Var(&o.beta, "beta", def.Beta, "beta of --divergence jsd (0: forward KL, 1: reverse KL)")
			f.StringVar(&o.cacheDir, "teacher-cache", "", "compute the teacher's top-k once into this directory and reuse it (default: the teacher runs at every step)")
			f.IntVar(&o.topK, "top-k", finetune.DefaultTopK, "teacher tokens per position in --teacher-cache (the rest is one tail bucket)")
		},
		job: func(cmd *cobra.Command, j *finetune.Job) error {
			if o.teacher == "" {
				return fmt.Errorf("%w: --teacher T.gguf is required", errUsage)
			}
			if o.method != m.Name() {
				return fmt.Errorf("%w: --method %s from --config: give --method on the command line (it decides the method flags)", errUsage, o.method)
			}
			div, err := train.ParseDivergence(o.divergence)
			if err != nil {
				return fmt.Errorf("%w: --divergence: %w", errUsage, err)
			}
			if o.topK < 1 {
				return fmt.Errorf("%w: --top-k %d: want at least 1", errUsage, o.topK)
			}
			if hub.IsRemote(o.teacher) {
				if o.teacher, err = hub.Resolve(cmd.Context(), o.teacher, hub.Options{}); err != nil {
					return err
				}
			}
			d := &finetune.Distillation{Teacher: o.teacher, CacheDir: o.cacheDir, TopK: o.topK,
				Loss: train.Distill{Alpha: o.alpha, Temperature: o.temperature, Divergence: div, Beta: o.beta}}
			for _, spec := range o.adapters {
				sp, err := parseScaled(spec)
				if err != nil {
					return fmt.Errorf("--teacher-adapter: %w", err)
				}
				d.TeacherAdapters = append(d.TeacherAdapters, finetune.Adapter{Path: sp.Path, Scale: sp.Scale})
			}
			if l := d.Loss; !(l.Alpha >= 0 && l.Alpha <= 1) || !(l.Temperature > 0) || !(l.Beta >= 0 && l.Beta <= 1) {
				return fmt.Errorf("%w: --alpha %v, --temperature %v, --beta %v: want alpha and beta in [0, 1], temperature > 0", errUsage, l.Alpha, l.Temperature, l.Beta)
			}
			if err := finetune.CheckVocab(o.teacher, j.Model); err != nil {
				return err
			}
			j.Distill = d
			return nil
		},
	})
	cmd.Use = "distill --method " + m.Name() + " --teacher T.gguf -m STUDENT.gguf --data FILE -o OUT"
	cmd.Short = "Distil a teacher into a student trained with " + m.Name()
	cmd.Example = ""
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	return cmd
}
