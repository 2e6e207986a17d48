package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// stopSignals end a command: SIGINT, SIGTERM and SIGHUP (a closed terminal).
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

// gracePeriod is how long a command that does not stop by itself has after
// a stop signal before the process ends.
const gracePeriod = 1500 * time.Millisecond

// selfStopping names the top-level commands that stop by themselves when
// their context is cancelled and must not be cut short: train finishes the
// current step and writes its checkpoint (a second signal aborts it).
var selfStopping = map[string]bool{"train": true}

// signalContext returns a context cancelled by the first stop signal. For
// every command but the self-stopping ones, the process also ends
// gracePeriod after that signal (or at a second one) if the command has not
// returned: a computation inside ggml or a blocked read cannot hold it.
// Files are written atomically, so nothing is left half-written; stale
// temporaries are removed by the next run. stop releases the signals.
func signalContext(root *cobra.Command, args []string) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	wait := true
	if cmd, _, err := root.Find(args); err == nil {
		for c := cmd; c != nil && c != root; c = c.Parent() {
			if c.Parent() == root && selfStopping[c.Name()] {
				wait = false
			}
		}
	}
	ch := make(chan os.Signal, 2)
	done := make(chan struct{})
	signal.Notify(ch, stopSignals...)
	go func() {
		var sig os.Signal
		select {
		case sig = <-ch:
		case <-done:
			return
		}
		cancel()
		if !wait {
			return
		}
		select {
		case <-time.After(gracePeriod):
		case <-ch:
		case <-done:
			return
		}
		fmt.Fprintf(os.Stderr, "\nggtune: stopped by %v\n", sig)
		os.Exit(exitStatus(sig))
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}

// exitStatus is the shell's status for a process ended by sig: 128+n.
func exitStatus(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}
