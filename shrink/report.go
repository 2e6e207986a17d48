package shrink

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/ggtune/ggtune/internal/atomicfile"
)

// WriteTable prints the report as an aligned table: one row per stage.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\taction\tblocks\tsource blocks\tn_ff\tparams\tfile MB\tloss before heal\tloss\tKL to source\tpp tok/s\t")
	for _, s := range r.Stages {
		kept := make([]string, len(s.Blocks))
		for i, b := range s.Blocks {
			kept[i] = strconv.Itoa(b)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%d\t%.3f\t%.4f\t%.4f\t%.4f\t%.1f\t\n", s.Stage, s.Action, len(s.Blocks), strings.Join(kept, ","),
			s.NFF, s.Params, float64(s.FileBytes)/1e6, s.LossBeforeHeal, s.Loss, s.KL, s.PPTokS)
	}
	return tw.Flush()
}

// WriteJSON writes the report as indented JSON to path, atomically.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("shrink report %s: %w", path, err)
	}
	return atomicfile.Write(path, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// Plot draws the held-out loss against the parameter count of every stage
// (after healing, and right after each removal) and writes a PNG to path,
// atomically.
func (r *Report) Plot(path string) error {
	var healed, before plotter.XYs
	for _, s := range r.Stages {
		healed = append(healed, plotter.XY{X: float64(s.Params), Y: s.Loss})
		if s.Stage > 0 && r.Healed {
			before = append(before, plotter.XY{X: float64(s.Params), Y: s.LossBeforeHeal})
		}
	}
	if len(healed) == 0 {
		return fmt.Errorf("shrink plot %s: no stages", path)
	}
	p := plot.New()
	p.Title.Text = "ggtune shrink: held-out loss against size"
	p.X.Label.Text = "parameters"
	p.Y.Label.Text = "held-out loss"
	p.Legend.Top = true
	line, dots, err := plotter.NewLinePoints(healed)
	if err != nil {
		return fmt.Errorf("shrink plot %s: %w", path, err)
	}
	p.Add(plotter.NewGrid(), line, dots)
	label := "after healing"
	if !r.Healed {
		label = "no healing"
	}
	p.Legend.Add(label, line, dots)
	if len(before) > 0 {
		sc, err := plotter.NewScatter(before)
		if err != nil {
			return fmt.Errorf("shrink plot %s: %w", path, err)
		}
		sc.Color = color.RGBA{R: 200, A: 255}
		p.Add(sc)
		p.Legend.Add("before healing", sc)
	}
	wt, err := p.WriterTo(8*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return fmt.Errorf("shrink plot %s: %w", path, err)
	}
	return atomicfile.Write(path, func(w io.Writer) error {
		_, err := wt.WriteTo(w)
		return err
	})
}
