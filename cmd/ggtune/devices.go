package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
)

func init() { register(newDevicesCmd) }

func newDevicesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "devices",
		Short: "List compute devices and the CPU features ggml was built with",
		Long: "List the devices of ggml's backend registry (the CPU, and GPU backends loaded from\n" +
			"the directories in GGTUNE_BACKEND_PATH) and the SIMD features in use.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			for _, d := range binding.Devices() {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s", d.Index, d.Name, d.Type, d.Description)
				if d.MemoryTotal > 0 {
					fmt.Fprintf(w, "\t%.1f/%.1f GiB free", float64(d.MemoryFree)/(1<<30), float64(d.MemoryTotal)/(1<<30))
				}
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "CPU features: %s\n", strings.Join(binding.CPUFeatures(), " "))
			fmt.Fprintf(w, "system: %s\n", binding.SystemInfo())
			return nil
		},
	}
}

// deviceUsage documents the --device flag of the commands that run models.
const deviceUsage = "ggml device that holds the weights and runs the graphs, as `ggtune devices` lists it " +
	"(e.g. Vulkan0, CUDA0; backends load from GGTUNE_BACKEND_PATH); operations the device lacks run on the CPU (default: the CPU)"
