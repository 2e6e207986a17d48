// Command ggtune fine-tunes and runs GGUF language models on llama.cpp's
// ggml runtime. Run `ggtune help` for the list of commands.
package main

import (
	"fmt"
	"os"
)

func main() {
	root := newRootCmd()
	out := &stickyWriter{w: os.Stdout}
	root.SetOut(out)
	ctx, stop := signalContext(root, os.Args[1:])
	err := root.ExecuteContext(ctx)
	stop()
	if err == nil {
		err = out.check("stdout")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ggtune:", err)
		os.Exit(1)
	}
}
