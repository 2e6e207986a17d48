package train

import (
	"fmt"
	"image/color"
	"io"

	"gonum.org/v1/plot"

	"github.com/ggtune/ggtune/internal/atomicfile"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotLoss draws the training (and evaluation) loss against the step and
// writes it as a PNG, atomically.
func PlotLoss(history []Metrics, path string) error {
	var trainPts, evalPts plotter.XYs
	for _, m := range history {
		p := plotter.XY{X: float64(m.Step), Y: m.Loss}
		if m.Kind == "eval" {
			evalPts = append(evalPts, p)
		} else {
			trainPts = append(trainPts, p)
		}
	}
	if len(trainPts) == 0 {
		return fmt.Errorf("plot %s: no training steps", path)
	}
	p := plot.New()
	p.Title.Text = "ggtune loss"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss"
	line, err := plotter.NewLine(trainPts)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	p.Legend.Top = true
	p.Add(line, plotter.NewGrid())
	p.Legend.Add("train", line)
	if len(evalPts) > 0 {
		evalLine, evalDots, err := plotter.NewLinePoints(evalPts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		evalLine.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		evalLine.Color = color.RGBA{R: 200, A: 255}
		evalDots.Color = color.RGBA{R: 200, A: 255}
		p.Add(evalLine, evalDots)
		p.Legend.Add("eval", evalLine, evalDots)
	}
	wt, err := p.WriterTo(8*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := atomicfile.Write(path, func(w io.Writer) error {
		_, err := wt.WriteTo(w)
		return err
	}); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}
