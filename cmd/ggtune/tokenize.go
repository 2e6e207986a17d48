package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/model"
)

func init() { register(newTokenizeCmd) }

func newTokenizeCmd() *cobra.Command {
	var (
		path, text, file     string
		noBOS, parse, pieces bool
	)
	cmd := &cobra.Command{
		Use:   "tokenize -m MODEL --text TEXT",
		Short: "Print the token ids of a text as JSON",
		Long: "Tokenize a text with the model's own vocabulary (libllama's tokenizer, loaded without\n" +
			"the weights) and print the ids as a JSON array, or with --pieces an array of {id, piece}.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return fmt.Errorf("tokenize: -m MODEL is required")
			}
			if file != "" {
				b, err := readInput(file)
				if err != nil {
					return fmt.Errorf("tokenize: %w", err)
				}
				text = string(b)
			}
			tok, err := model.LoadTokenizer(path)
			if err != nil {
				return err
			}
			defer tok.Close()
			ids, err := tok.Encode(text, !noBOS, parse)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			if !pieces {
				if ids == nil {
					ids = []int32{}
				}
				return enc.Encode(ids)
			}
			type piece struct {
				ID    int32  `json:"id"`
				Piece string `json:"piece"`
			}
			out := make([]piece, len(ids))
			for i, id := range ids {
				out[i] = piece{id, tok.Piece(id, true)}
			}
			return enc.Encode(out)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "model", "m", "", "model GGUF file")
	f.StringVarP(&text, "text", "p", "", "text to tokenize")
	f.StringVarP(&file, "file", "f", "", "read the text from this file (- for stdin)")
	f.BoolVar(&noBOS, "no-bos", false, "do not add BOS/EOS as the vocabulary asks")
	f.BoolVar(&parse, "parse-special", false, "recognise special-token text such as <s>")
	f.BoolVar(&pieces, "pieces", false, "print {id, piece} objects")
	return cmd
}

func readInput(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(name)
}
