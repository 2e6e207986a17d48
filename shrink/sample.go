package shrink

import (
	"context"
	"fmt"
	"io"

	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/model"
)

// SampleText writes about tokens tokens of text sampled from m (documents
// started from BOS at temperature 1, each at most 256 tokens, one per
// line) to path, atomically: in-distribution data for shrinking without a
// data set. seed makes it reproducible.
func SampleText(ctx context.Context, m *model.Model, path string, tokens int, seed uint64) error {
	if tokens <= 0 {
		return fmt.Errorf("sample text: %w: %d tokens", ErrOptions, tokens)
	}
	return atomicfile.Write(path, func(w io.Writer) error {
		for n, doc := 0, uint64(0); n < tokens; doc++ {
			p := model.GenerateParams{SamplerParams: model.SamplerParams{Temperature: 1, Seed: seed + doc}, MaxTokens: min(256, tokens-n)}
			res, err := m.Generate(ctx, "", p, nil)
			if err != nil {
				return fmt.Errorf("sample text: %w", err)
			}
			n += max(len(res.IDs), 1)
			if _, err := fmt.Fprintln(w, res.Text); err != nil {
				return err
			}
		}
		return nil
	})
}
