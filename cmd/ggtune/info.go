package main

import (
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

func init() { register(newInfoCmd) }

func newInfoCmd() *cobra.Command {
	var (
		ctxLen    int
		noTensors bool
	)
	cmd := &cobra.Command{
		Use:   "info MODEL",
		Short: "Show a GGUF file's metadata, tensors, parameter count and memory estimate",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := binding.OpenGGUF(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			return printInfo(cmd.OutOrStdout(), f, ctxLen, !noTensors)
		},
	}
	cmd.Flags().IntVarP(&ctxLen, "ctx-size", "c", 4096, "context length for the KV cache estimate")
	cmd.Flags().BoolVar(&noTensors, "no-tensors", false, "do not list the tensors")
	return cmd
}

func formatValue(v any) string {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Slice {
		n := rv.Len()
		if n > 8 {
			return fmt.Sprintf("[%s array of %d]", rv.Type().Elem(), n)
		}
		return fmt.Sprint(v)
	}
	if s, ok := v.(string); ok {
		if len(s) > 120 {
			return fmt.Sprintf("%q... (%d bytes)", s[:120], len(s))
		}
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func printInfo(out io.Writer, f *binding.GGUFFile, ctxLen int, tensors bool) error {
	fmt.Fprintf(out, "file: %s (GGUF v%d, alignment %d)\n\nmetadata:\n", f.Path(), f.Version(), f.Alignment())
	w := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	for _, kv := range f.KVs() {
		fmt.Fprintf(w, "  %s\t%s\n", kv.Key, formatValue(kv.Value))
	}
	w.Flush()

	var params, bytes int64
	byType := map[binding.Type]int64{}
	for _, t := range f.Tensors() {
		params += t.Elements()
		bytes += t.Size
		byType[t.Type] += t.Elements()
	}
	if tensors {
		fmt.Fprintf(out, "\ntensors (%d):\n", len(f.Tensors()))
		w = tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
		for _, t := range f.Tensors() {
			fmt.Fprintf(w, "  %s\t%v\t%v\t%s\n", t.Name, t.Type, t.Shape, humanBytes(t.Size))
		}
		w.Flush()
	}
	var types []string
	for t, n := range byType {
		types = append(types, fmt.Sprintf("%v %.1f%%", t, 100*float64(n)/float64(max(params, 1))))
	}
	sort.Strings(types)
	fmt.Fprintf(out, "\nparameters: %d (%.2fM), weights %s [%s]\n", params, float64(params)/1e6, humanBytes(bytes), strings.Join(types, ", "))

	if gt, _ := f.String("general.type"); gt == "adapter" {
		typ, _ := f.String("adapter.type")
		m, err := method.ForAdapterType(typ)
		if err != nil {
			fmt.Fprintf(out, "adapter: %v\n", err)
			return nil
		}
		fmt.Fprintf(out, "adapter: %s, method %s (apply with --adapter FILE; continue with ggtune train %s --init-from FILE)\n", typ, m.Name(), m.Name())
		return nil
	}
	cfg, err := model.ReadConfig(f)
	if err != nil {
		fmt.Fprintf(out, "runnable by ggtune: no (%v)\n", err)
		return nil
	}
	if ti, ok := f.TensorInfo("token_embd.weight"); ok && len(ti.Shape) == 2 {
		cfg.NVocab = int(ti.Shape[1])
	}
	_, hasOutput := f.TensorInfo("output.weight")
	fmt.Fprintf(out, "architecture: %s, %d layers, n_embd %d, %d heads (%d kv, head dim %d), n_ff %d, vocab %d, context %d\n",
		cfg.Arch, cfg.NLayer, cfg.NEmbd, cfg.NHead, cfg.NHeadKV, cfg.HeadDim, cfg.NFF, cfg.NVocab, cfg.NCtxTrain)
	rope := "normal"
	if cfg.RoPENeoX {
		rope = "neox"
	}
	fmt.Fprintf(out, "rms eps %g, rope %s base %g scale %g (%s), tied output %v\n",
		cfg.RMSEps, rope, cfg.RoPEBase, cfg.RoPEFreqScale, cfg.RoPEScaling, !hasOutput)
	kv := int64(2) * int64(cfg.NLayer) * int64(cfg.NEmbdKV()) * int64(ctxLen) * 2
	fmt.Fprintf(out, "memory estimate: weights %s + KV cache %s (f16, %d positions) + compute buffers\n",
		humanBytes(bytes), humanBytes(kv), ctxLen)
	return nil
}
