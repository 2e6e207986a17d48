package finetune_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// TestLoRAOnBaseTypes trains LoRA on frozen bases of every supported
// storage type: the weights stay in their type (no dequantized copy is
// kept) and the loss falls.
func TestLoRAOnBaseTypes(t *testing.T) {
	trainPath, valPath := shakespeare(t)
	for _, typ := range []binding.Type{binding.TypeF32, binding.TypeF16, binding.TypeBF16, binding.TypeQ8_0, binding.TypeQ4_K} {
		t.Run(typ.String(), func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.gguf")
			require.NoError(t, randmodel.Write(base, randmodel.Options{NEmbd: 256, NLayer: 2, NHead: 4, NFF: 512, NVocab: 512, Untied: true, Type: typ, Seed: 3}))
			m, err := model.Load(base, model.Options{Threads: 2})
			require.NoError(t, err)
			got, ok := m.WeightType("blk.0.attn_q.weight")
			m.Close()
			require.True(t, ok)
			assert.Equal(t, typ, got, "the base weights keep their type")

			j := finetune.Job{Method: "lora", Model: base, Data: trainPath, Val: valPath, Output: filepath.Join(dir, "a.gguf"),
				Context: 32, Batch: 4, Pack: true, Threads: 2, Seed: 1, MaxValBatches: 4,
				Train: train.Config{Steps: 15, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Constant, LR: 3e-3}}}
			rep, err := finetune.Run(context.Background(), j)
			require.NoError(t, err)
			t.Logf("RESULT %s base: held-out loss %.3f -> %.3f", typ, rep.Result.EvalBefore.Loss, rep.Result.EvalAfter.Loss)
			assert.Less(t, rep.Result.EvalAfter.Loss, rep.Result.EvalBefore.Loss-0.3)
			lm, err := binding.LoadModel(base, binding.ModelParams{})
			require.NoError(t, err)
			defer lm.Close()
			ad, err := lm.LoadAdapter(j.Output)
			require.NoError(t, err)
			ad.Close()
		})
	}
}
