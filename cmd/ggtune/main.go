// Command ggtune fine-tunes and runs GGUF language models on llama.cpp's
// ggml runtime. Run `ggtune help` for the list of commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ggtune:", err)
		os.Exit(1)
	}
}
