package data_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/fixture"
)

// FuzzRead feeds mutated data files to the readers of every format: each
// input is either read or refused with an error, never a panic, and a
// record set with no records is always an error. Seeded with the real
// datasets; `go test -fuzz FuzzRead ./data` fuzzes.
func FuzzRead(f *testing.F) {
	for _, rel := range []string{"text/wikisql-valid.jsonl", "text/llamafactory-identity.json", "text/tinystories_sample.txt"} {
		b, err := os.ReadFile(fixture.Path(f, rel))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), 8192)], uint8(0))
	}
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}`+"\n"), uint8(0))
	f.Add([]byte(`{"prompt":"a","completion":"b"}`+"\n"), uint8(3))
	formats := []data.Format{data.FormatAuto, data.FormatPlain, data.FormatText, data.FormatCompletion, data.FormatAlpaca, data.FormatChat}
	names := []string{"x.jsonl", "x.json", "x.txt", "x"}
	f.Fuzz(func(t *testing.T, b []byte, sel uint8) {
		opts := data.Options{Format: formats[int(sel)%len(formats)], SkipBad: sel&0x80 != 0, MaxLineBytes: 4096, MaxBytes: 1 << 20}
		rs, err := data.Read(bytes.NewReader(b), names[int(sel>>3)%len(names)], opts)
		if err != nil {
			return
		}
		if len(rs.Records) == 0 && !errors.Is(err, data.ErrNoExamples) {
			t.Errorf("no records and no error (format %q)", opts.Format)
		}
	})
}
