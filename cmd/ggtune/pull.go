package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/ggtune/ggtune/hub"
)

func init() { register(newPullCmd) }

// newPullCmd builds `ggtune pull`: download a model by name into the cache.
func newPullCmd() *cobra.Command {
	var o hub.Options
	cmd := &cobra.Command{
		Use:   "pull hf://OWNER/REPO/FILE.gguf | https://URL",
		Short: "Download a model into the cache (resumable, checksum-verified) and print its path",
		Long: "Download a GGUF from the Hugging Face hub (hf://OWNER/REPO/PATH, the resolve URL of\n" +
			"--revision) or any https:// URL into the cache ($GGTUNE_CACHE, default ggtune/ in the user\n" +
			"cache directory). An interrupted download resumes where it stopped (HTTP Range), also on\n" +
			"the next run; the file is checked against --sha256 or the hub's X-Linked-Etag/ETag sha256\n" +
			"and appears under its final name only when complete. HF_TOKEN is sent to the hub for\n" +
			"gated or private repositories. Every -m/--model flag also accepts these references and\n" +
			"resolves them through the cache.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if term.IsTerminal(int(os.Stderr.Fd())) {
				o.Progress = cmd.ErrOrStderr()
			}
			p, err := hub.Pull(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Revision, "revision", "main", "branch, tag or commit of a hf:// reference")
	f.StringVar(&o.SHA256, "sha256", "", "expected sha256 of the file (hex; default: the hub's checksum when it gives one)")
	return cmd
}

// resolveModelFlag replaces a remote -m/--model value (hf://, https://)
// and remote positional arguments (`ggtune info hf://...`) of the command
// about to run with the paths of their cached copies, downloading them
// first when they are not in the cache. cobra hands the same args slice
// to RunE, so the positional arguments are replaced in place.
func resolveModelFlag(cmd *cobra.Command, args []string) error {
	if cmd.Name() == "pull" {
		return nil
	}
	var o hub.Options
	if term.IsTerminal(int(os.Stderr.Fd())) {
		o.Progress = cmd.ErrOrStderr()
	}
	var err error
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Name != "model" || !hub.IsRemote(fl.Value.String()) {
			return
		}
		var p string
		if p, err = hub.Resolve(cmd.Context(), fl.Value.String(), o); err == nil {
			err = fl.Value.Set(p)
		}
	})
	for i, a := range args {
		if err == nil && hub.IsRemote(a) {
			args[i], err = hub.Resolve(cmd.Context(), a, o)
		}
	}
	return err
}
