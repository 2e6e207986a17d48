package shrink

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// ErrPlan reports a shrinking plan that does not fit the model: a block
// index out of range, a duplicate, no block left, or FFN channels that do
// not exist.
var ErrPlan = errors.New("invalid shrinking plan")

// Plan says what a smaller copy of a model keeps.
type Plan struct {
	// Keep lists the blocks to keep, by index in the source file, in
	// increasing order (nil: every block). They are renumbered 0, 1, ...
	Keep []int
	// FFN, if not nil, holds for each kept block (indexed like Keep) the
	// FFN channels to keep, in increasing order; every block keeps the
	// same number (feed_forward_length is one value for the model).
	FFN [][]int
}

// Write streams a copy of the GGUF model at src to out with only the
// blocks and FFN channels of plan, tensor by tensor, atomically (temporary
// file + rename); src is only read. Block tensors blk.N.* are renamed to
// their new index, block_count and every per-layer metadata array
// (ARCH.* arrays with one value per block, such as feed_forward_length or
// head counts) keep the kept blocks' entries, and with plan.FFN
// feed_forward_length becomes the new width. extra metadata is added (or
// replaces a key).
//
// Tensor types: removing blocks copies every tensor byte for byte. FFN
// pruning drops rows of ffn_gate and ffn_up (bytes copied, any type) and
// columns of ffn_down, which is dequantized, sliced and stored again in
// its type when the new width is a multiple of the type's block size
// (F32, F16, BF16 always), and as F16 otherwise.
func Write(src, out string, plan Plan, extra []binding.KV) error {
	f, err := binding.OpenGGUF(src)
	if err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	defer f.Close()
	cfg, err := model.ReadConfig(f)
	if err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	keep := plan.Keep
	if keep == nil {
		for i := range cfg.NLayer {
			keep = append(keep, i)
		}
	}
	if err := checkPlan(cfg, keep, plan.FFN); err != nil {
		return fmt.Errorf("shrink %s: %w", src, err)
	}
	newIndex := map[int]int{}
	for i, l := range keep {
		newIndex[l] = i
	}
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	if err != nil {
		return fmt.Errorf("shrink %s: %w", out, err)
	}
	defer w.Close()
	nff := 0
	if plan.FFN != nil {
		nff = len(plan.FFN[0])
	}
	prefix := cfg.Arch + "."
	for _, kv := range append(f.KVs(), extra...) {
		v := kv.Value
		switch {
		case kv.Key == prefix+"block_count":
			v, err = withInt(v, len(keep))
		case kv.Key == prefix+"feed_forward_length" && nff > 0:
			if v, err = perLayer(v, cfg.NLayer, keep); err == nil {
				v, err = withInt(v, nff)
			}
		case strings.HasPrefix(kv.Key, prefix):
			v, err = perLayer(v, cfg.NLayer, keep)
		}
		if err == nil {
			err = w.Set(kv.Key, v)
		}
		if err != nil {
			return fmt.Errorf("shrink %s: key %s: %w", out, kv.Key, err)
		}
	}
	for _, ti := range f.Tensors() {
		name, layer, rest := ti.Name, -1, ""
		if l, r, ok := blockTensor(ti.Name); ok {
			n, kept := newIndex[l]
			if !kept {
				continue
			}
			layer, rest = n, r
			name = fmt.Sprintf("blk.%d.%s", n, r)
		}
		if layer >= 0 && plan.FFN != nil {
			done, err := addPruned(w, f, ti, name, rest, plan.FFN[layer])
			if err != nil {
				return fmt.Errorf("shrink %s: %w", out, err)
			}
			if done {
				continue
			}
		}
		src := ti.Name
		if err := w.AddTensorFunc(name, ti.Type, ti.Shape, func() ([]byte, error) { return f.ReadTensor(src) }); err != nil {
			return fmt.Errorf("shrink %s: %w", out, err)
		}
	}
	if err := w.WriteFile(out); err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	return nil
}

func checkPlan(cfg model.Config, keep []int, ffn [][]int) error {
	if len(keep) == 0 {
		return fmt.Errorf("%w: no block kept", ErrPlan)
	}
	for i, l := range keep {
		if l < 0 || l >= cfg.NLayer || (i > 0 && l <= keep[i-1]) {
			return fmt.Errorf("%w: blocks %v (want increasing indices in [0, %d))", ErrPlan, keep, cfg.NLayer)
		}
	}
	if ffn == nil {
		return nil
	}
	if len(ffn) != len(keep) {
		return fmt.Errorf("%w: FFN channels for %d blocks, %d kept", ErrPlan, len(ffn), len(keep))
	}
	for i, ch := range ffn {
		if len(ch) == 0 || len(ch) != len(ffn[0]) {
			return fmt.Errorf("%w: block %d keeps %d FFN channels, block 0 %d (want the same, at least 1)", ErrPlan, i, len(ch), len(ffn[0]))
		}
		for j, c := range ch {
			if c < 0 || c >= cfg.NFF || (j > 0 && c <= ch[j-1]) {
				return fmt.Errorf("%w: block %d: FFN channels must increase within [0, %d)", ErrPlan, i, cfg.NFF)
			}
		}
	}
	return nil
}

// blockTensor splits "blk.N.rest" into N and rest.
func blockTensor(name string) (int, string, bool) {
	s, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return 0, "", false
	}
	num, rest, ok := strings.Cut(s, ".")
	if !ok {
		return 0, "", false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return 0, "", false
	}
	return n, rest, true
}

// addPruned adds the FFN tensor ti (rest is its name after "blk.N.")
// keeping only channels; it reports false for tensors FFN pruning leaves
// alone.
func addPruned(w *binding.GGUFWriter, f *binding.GGUFFile, ti binding.GGUFTensorInfo, name, rest string, channels []int) (bool, error) {
	n := int64(len(channels))
	switch rest {
	case "ffn_gate.weight", "ffn_up.weight", "ffn_gate.bias", "ffn_up.bias":
		// One row (or element, for a bias) per channel.
		rowBytes := ti.Size / ti.Shape[len(ti.Shape)-1]
		shape := slices.Clone(ti.Shape)
		shape[len(shape)-1] = n
		src := ti.Name
		return true, w.AddTensorFunc(name, ti.Type, shape, func() ([]byte, error) {
			raw, err := f.ReadTensor(src)
			if err != nil {
				return nil, err
			}
			out := make([]byte, 0, n*rowBytes)
			for _, c := range channels {
				out = append(out, raw[int64(c)*rowBytes:int64(c+1)*rowBytes]...)
			}
			return out, nil
		})
	case "ffn_down.weight":
		in, rows := ti.Shape[0], ti.Shape[1]
		typ := ti.Type
		if n%typ.BlockSize() != 0 {
			typ = binding.TypeF16
		}
		src := ti.Name
		return true, w.AddFloatsFunc(name, typ, []int64{n, rows}, func() ([]float32, error) {
			vals, err := f.ReadTensorFloats(src)
			if err != nil {
				return nil, err
			}
			out := make([]float32, 0, n*rows)
			for r := range rows {
				row := vals[r*in : (r+1)*in]
				for _, c := range channels {
					out = append(out, row[c])
				}
			}
			return out, nil
		})
	}
	return false, nil
}

// perLayer returns v with only the kept entries if it is an array of one
// value per block (n of them), and v unchanged otherwise.
func perLayer(v any, n int, keep []int) (any, error) {
	switch a := v.(type) {
	case []uint32:
		return pickEntries(a, n, keep), nil
	case []int32:
		return pickEntries(a, n, keep), nil
	case []uint64:
		return pickEntries(a, n, keep), nil
	case []int64:
		return pickEntries(a, n, keep), nil
	case []float32:
		return pickEntries(a, n, keep), nil
	case []bool:
		return pickEntries(a, n, keep), nil
	}
	return v, nil
}

func pickEntries[T any](a []T, n int, keep []int) []T {
	if len(a) != n {
		return a
	}
	out := make([]T, len(keep))
	for i, l := range keep {
		out[i] = a[l]
	}
	return out
}

// withInt returns n in v's integer type (every entry, for an array).
func withInt(v any, n int) (any, error) {
	switch a := v.(type) {
	case uint32:
		return uint32(n), nil
	case int32:
		return int32(n), nil
	case uint64:
		return uint64(n), nil
	case int64:
		return int64(n), nil
	case []uint32:
		return fill(a, uint32(n)), nil
	case []int32:
		return fill(a, int32(n)), nil
	case []uint64:
		return fill(a, uint64(n)), nil
	case []int64:
		return fill(a, int64(n)), nil
	}
	return nil, fmt.Errorf("%w: unexpected value type %T", ErrPlan, v)
}

func fill[T any](a []T, v T) []T {
	out := make([]T, len(a))
	for i := range out {
		out[i] = v
	}
	return out
}
