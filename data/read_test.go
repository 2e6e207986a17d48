package data_test

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/data"
)

func TestReadDetectsFormat(t *testing.T) {
	alpacaArray := `[
  {"instruction": "Say hi", "input": "", "output": "Hi."},
  {"instruction": "Add", "input": "1 2", "output": "3"}
]`
	tests := []struct {
		name, file, content string
		force               data.Format
		want                data.Format
		kind                data.Format
		records             int
	}{
		{"txt extension wins", "a.txt", `{"text": "x"}` + "\n", "", data.FormatPlain, data.FormatPlain, 1},
		{"jsonl text", "a.jsonl", lines(`{"text": "a"}`, `{"text": "b"}`), "", data.FormatText, data.FormatText, 2},
		{"completion by content", "a.data", lines(`{"prompt": "p", "completion": "c"}`), "", data.FormatCompletion, data.FormatCompletion, 1},
		{"alpaca array", "a.json", alpacaArray, "", data.FormatAlpaca, data.FormatCompletion, 2},
		{"alpaca jsonl", "a.jsonl", lines(`{"instruction": "i", "output": "o"}`), "", data.FormatAlpaca, data.FormatCompletion, 1},
		{"chat", "a.jsonl", lines(`{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}`), "", data.FormatChat, data.FormatChat, 1},
		{"bracket prose is plain", "notes", "[Scene 1] Enter KING.\n", "", data.FormatPlain, data.FormatPlain, 1},
		{"brace prose is plain", "notes", "{curly} text\n", "", data.FormatPlain, data.FormatPlain, 1},
		{"prose is plain", "story", "Once upon a time.\n", "", data.FormatPlain, data.FormatPlain, 1},
		{"forced text on .txt", "a.txt", lines(`{"text": "a"}`), data.FormatText, data.FormatText, data.FormatText, 1},
		{"forced plain on jsonl", "a.jsonl", lines(`{"text": "a"}`), data.FormatPlain, data.FormatPlain, data.FormatPlain, 1},
		{"BOM, CRLF and blank lines", "a.jsonl", "\xEF\xBB\xBF{\"text\": \"a\"}\r\n\r\n  \n{\"text\": \"b\"}", "", data.FormatText, data.FormatText, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := data.ReadFile(writeFile(t, tc.file, tc.content), data.Options{Format: tc.force})
			require.NoError(t, err)
			assert.Equal(t, tc.want, rs.Format)
			require.Len(t, rs.Records, tc.records)
			assert.Equal(t, tc.records, rs.Stats.Records)
			for _, r := range rs.Records {
				assert.Equal(t, tc.kind, r.Kind)
			}
		})
	}
}

func TestReadRecordContent(t *testing.T) {
	p := writeFile(t, "a.jsonl", lines(
		`{"text": "first"}`,
		``,
		`{"text": "third", "extra": [1, 2]}`))
	rs, err := data.ReadFile(p, data.Options{})
	require.NoError(t, err)
	assert.Equal(t, []data.Record{
		{Kind: data.FormatText, Text: "first", File: p, Line: 1},
		{Kind: data.FormatText, Text: "third", File: p, Line: 3},
	}, rs.Records)

	p = writeFile(t, "a.jsonl", lines(`{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "{{x}}"}], "id": 3}`))
	rs, err = data.ReadFile(p, data.Options{Replace: map[string]string{"{{x}}": "why"}})
	require.NoError(t, err)
	assert.Equal(t, []data.ChatMessage{{Role: "system", Content: ""}, {Role: "user", Content: "why"}}, rs.Records[0].Messages)
}

func TestMalformedRecords(t *testing.T) {
	tests := []struct {
		name, file, content string
		opts                data.Options
		line                int
		problem             string
	}{
		{"bad JSON", "a.jsonl", lines(`{"text": "a"}`, `{"text": "b"`), data.Options{}, 2, "invalid JSON"},
		{"missing field", "a.jsonl", lines(`{"text": "a"}`, `{"text": "b"}`, `{"title": "c"}`), data.Options{}, 3, `missing field "text"`},
		{"wrong type", "a.jsonl", lines(`{"text": "a"}`, `{"text": 5}`), data.Options{}, 2, `field "text": want a string, got number`},
		{"null field", "a.jsonl", lines(`{"text": null}`), data.Options{}, 1, `missing field "text"`},
		{"empty text", "a.jsonl", lines(`{"text": "a"}`, `{"text": "  "}`), data.Options{}, 2, `field "text" is empty`},
		{"not an object", "a.jsonl", lines(`{"text": "a"}`, `[1, 2]`), data.Options{}, 2, "want a JSON object, got array"},
		{"null line", "a.jsonl", lines(`{"text": "a"}`, `null`), data.Options{}, 2, "want a JSON object, got null"},
		{"unknown fields", "a.jsonl", lines(`{"foo": 1}`), data.Options{}, 1, "cannot tell the format"},
		{"missing completion", "a.jsonl", lines(`{"prompt": "p", "completion": "c"}`, `{"prompt": "p"}`), data.Options{}, 2, `missing field "completion"`},
		{"prompt wrong type", "a.jsonl", lines(`{"prompt": ["p"], "completion": "c"}`), data.Options{}, 1, `field "prompt": want a string, got array`},
		{"alpaca output type", "a.jsonl", lines(`{"instruction": "i", "output": "o"}`, `{"instruction": "i", "output": {}}`), data.Options{}, 2, `field "output": want a string, got object`},
		{"alpaca input type", "a.jsonl", lines(`{"instruction": "i", "input": 1, "output": "o"}`), data.Options{}, 1, `field "input": want a string, got number`},
		{"messages not array", "a.jsonl", lines(`{"messages": "hi"}`), data.Options{}, 1, `field "messages": want an array, got string`},
		{"messages empty", "a.jsonl", lines(`{"messages": []}`), data.Options{}, 1, `field "messages" is empty`},
		{"message without role", "a.jsonl", lines(`{"messages": [{"content": "x"}]}`), data.Options{}, 1, `messages[0]: missing field "role"`},
		{"message content type", "a.jsonl", lines(`{"messages": [{"role": "user", "content": 1}]}`), data.Options{}, 1, `messages[0]: field "content": want a string, got number`},
		{"message not object", "a.jsonl", lines(`{"messages": [{"role": "user", "content": "x"}, 7]}`), data.Options{}, 1, `messages[1]: want an object, got number`},
		{"assistant first", "a.jsonl", lines(`{"messages": [{"role": "assistant", "content": "x"}]}`), data.Options{}, 1, "cannot start with an assistant turn"},
		{"forced kind", "a.jsonl", lines(`{"text": "a"}`), data.Options{Format: data.FormatChat}, 1, `missing field "messages"`},
		{"line too long", "a.jsonl", lines(`{"text": "a"}`, `{"text": "`+strings.Repeat("x", 100)+`"}`), data.Options{MaxLineBytes: 64}, 2, "line longer than 64 bytes"},
		{"array element", "a.json", "[\n  {\"instruction\": \"i\", \"output\": \"o\"},\n  {\"instruction\": \"j\",\n   \"output\": 3}\n]", data.Options{}, 3, `field "output": want a string, got number`},
		{"array syntax", "a.json", "[\n  {\"instruction\": \"i\", \"output\": \"o\"},\n  {\"instruction\": \"j\" \"output\": \"p\"}\n]", data.Options{}, 3, "invalid JSON"},
		{"json extension, not JSON", "a.jsonl", "plain words\n", data.Options{}, 1, "invalid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.file, tc.content)
			_, err := data.ReadFile(p, tc.opts)
			require.Error(t, err)
			assert.ErrorIs(t, err, data.ErrMalformed)
			var re *data.RecordError
			require.ErrorAs(t, err, &re)
			assert.Equal(t, p, re.File)
			assert.Equal(t, tc.line, re.Line)
			assert.Contains(t, err.Error(), fmt.Sprintf("%s:%d: ", p, tc.line))
			assert.Contains(t, err.Error(), tc.problem)
		})
	}
}

func TestSkipBad(t *testing.T) {
	var ls []string
	var badLines []int
	good := 0
	for i := 1; i <= 40; i++ {
		switch {
		case i%7 == 0:
			ls = append(ls, `{"prompt": "p", "completion": 12}`)
			badLines = append(badLines, i)
		case i%11 == 0:
			ls = append(ls, `{"prompt": "p", "completion": "c"`)
			badLines = append(badLines, i)
		default:
			ls = append(ls, fmt.Sprintf(`{"prompt": "p%d", "completion": "c%d"}`, i, i))
			good++
		}
	}
	p := writeFile(t, "a.jsonl", lines(ls...))

	_, err := data.ReadFile(p, data.Options{})
	require.ErrorIs(t, err, data.ErrMalformed)
	assert.Contains(t, err.Error(), fmt.Sprintf("%s:%d:", p, badLines[0]))

	rs, err := data.ReadFile(p, data.Options{SkipBad: true})
	require.NoError(t, err)
	assert.Len(t, rs.Records, good)
	assert.Equal(t, len(badLines), rs.Stats.Skipped)
	require.Len(t, rs.Stats.SkipErrors, min(len(badLines), 10))
	for i, e := range rs.Stats.SkipErrors {
		assert.ErrorIs(t, e, data.ErrMalformed)
		assert.Contains(t, e.Error(), fmt.Sprintf("%s:%d:", p, badLines[i]))
	}
	for _, r := range rs.Records {
		assert.NotContains(t, badLines, r.Line)
		assert.Equal(t, fmt.Sprintf("p%d", r.Line), r.Prompt)
	}

	all := writeFile(t, "b.jsonl", lines(`{"text": 1}`, `{"text": ""}`))
	_, err = data.ReadFile(all, data.Options{SkipBad: true})
	assert.ErrorIs(t, err, data.ErrNoExamples)
	assert.Contains(t, err.Error(), "2 malformed records skipped")
}

func TestReadErrors(t *testing.T) {
	missing := "/nonexistent/dir/train.jsonl"
	_, err := data.ReadFile(missing, data.Options{})
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), missing)

	_, err = data.ReadFile(writeFile(t, "e.txt", " \n\n"), data.Options{})
	assert.ErrorIs(t, err, data.ErrNoExamples)
	_, err = data.ReadFile(writeFile(t, "e.jsonl", ""), data.Options{})
	assert.ErrorIs(t, err, data.ErrNoExamples)

	_, err = data.ReadFile(writeFile(t, "a.jsonl", lines(`{"text": "a"}`)), data.Options{Format: "yaml"})
	assert.ErrorIs(t, err, data.ErrFormat)

	for _, name := range []string{"", "auto", "plain", "text", "completion", "alpaca", "chat"} {
		f, err := data.ParseFormat(name)
		require.NoError(t, err, name)
		assert.Equal(t, strings.ReplaceAll(name, "auto", ""), string(f))
	}
	_, err = data.ParseFormat("csv")
	assert.True(t, errors.Is(err, data.ErrFormat))
}
