// Package timeline draws a soak as a PNG: the faults on the node rows, each
// workload's owner over time below them, downtime, double copies and
// counter regressions, against seconds since the soak's start.
package timeline

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
)

// The image is Width x Height pixels at DPI.
const (
	Width  = 1600
	Height = 900
	DPI    = 96
)

// Draw writes the timeline of a soak to path as a PNG of Width x Height
// pixels.
func Draw(path string, in soak.Input, r soak.Report) error {
	p := Plot(in, r)
	w := vg.Length(Width) * vg.Inch / DPI
	h := vg.Length(Height) * vg.Inch / DPI
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(DPI))
	p.Draw(draw.New(img))
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write soak timeline %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write soak timeline %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write soak timeline %s: %w", path, err)
	}
	return nil
}

// The rows: workloads at the bottom (y = 0..), then a blank row, then
// the nodes, the first node on top.
type layout struct {
	nodes, workloads []string
	nodeY            map[string]float64
	workloadY        map[string]float64
	clusterY         float64 // the row of faults that name no node (a leader kill before the runner filled it in)
	hasCluster       bool
}

func newLayout(in soak.Input, r soak.Report) layout {
	l := layout{nodeY: map[string]float64{}, workloadY: map[string]float64{}}
	addNode := func(n string) {
		if n != "" && !slices.Contains(l.nodes, n) {
			l.nodes = append(l.nodes, n)
		}
	}
	for _, f := range faults(in, r) {
		for _, n := range f.Nodes {
			addNode(n)
		}
		if len(f.Nodes) == 0 {
			l.hasCluster = true
		}
	}
	for _, s := range in.Samples {
		for _, c := range s.Copies {
			addNode(c.Node)
		}
	}
	slices.Sort(l.nodes)
	l.workloads = slices.Clone(in.Workloads)
	for _, s := range in.Samples {
		if !slices.Contains(l.workloads, s.Workload) {
			l.workloads = append(l.workloads, s.Workload)
		}
	}
	// Workloads bottom-up in reverse so the first is on top of its group.
	for i, w := range l.workloads {
		l.workloadY[w] = float64(len(l.workloads) - 1 - i)
	}
	top := float64(len(l.workloads)) + 1 + float64(len(l.nodes))
	if l.hasCluster {
		top++
		l.clusterY = top - 1
	}
	for i, n := range l.nodes {
		l.nodeY[n] = top - 1 - float64(i)
		if l.hasCluster {
			l.nodeY[n]--
		}
	}
	return l
}

func (l layout) ticks() []plot.Tick {
	var t []plot.Tick
	for w, y := range l.workloadY {
		t = append(t, plot.Tick{Value: y, Label: w})
	}
	for n, y := range l.nodeY {
		t = append(t, plot.Tick{Value: y, Label: n})
	}
	if l.hasCluster {
		t = append(t, plot.Tick{Value: l.clusterY, Label: "(cluster)"})
	}
	slices.SortFunc(t, func(a, b plot.Tick) int {
		switch {
		case a.Value < b.Value:
			return -1
		case a.Value > b.Value:
			return 1
		}
		return 0
	})
	return t
}

// faults are the report's faults, or the input's when the report has none.
func faults(in soak.Input, r soak.Report) []soak.Fault {
	if len(r.Faults) > 0 {
		out := make([]soak.Fault, len(r.Faults))
		for i, f := range r.Faults {
			out[i] = f.Fault
		}
		return out
	}
	return in.Faults
}

// Plot builds the timeline plot (Draw renders it).
func Plot(in soak.Input, r soak.Report) *plot.Plot {
	l := newLayout(in, r)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("soak seed=%d: faults per node, each workload's owner over time", in.Seed)
	p.X.Label.Text = "seconds since start"
	end := in.Duration
	if end <= 0 {
		for _, s := range in.Samples {
			end = max(end, s.At)
		}
	}
	p.X.Min = 0
	// Room on the right for the legend.
	p.X.Max = max(end.Seconds()*1.16, 1)
	p.Y.Min = -0.6
	p.Y.Max = float64(len(l.workloads)+1+len(l.nodes)) - 0.4
	if l.hasCluster {
		p.Y.Max++
	}
	if t := l.ticks(); len(t) > 0 {
		p.Y.Tick.Marker = plot.ConstantTicks(t)
	} else {
		p.HideY()
	}
	p.Y.Tick.Length = 0
	p.X.Tick.Marker = secondsTicks{end: max(end.Seconds(), 1)}
	p.Add(plotter.NewGrid())

	bars := &rects{label: p.X.Tick.Label}
	bars.label.Font.Size = vg.Points(8)
	bars.label.XAlign, bars.label.YAlign = draw.XLeft, draw.YBottom
	kindsSeen := map[soak.Kind]bool{}
	for _, f := range faults(in, r) {
		if !soak.Ran(f) {
			continue
		}
		s, e := soak.FaultSpan(f, end)
		col := kindColor(f.Kind)
		kindsSeen[f.Kind] = true
		if len(f.Nodes) == 0 {
			bars.add(s, e, l.clusterY, 0.7, col, string(f.Kind))
		}
		for _, n := range f.Nodes {
			bars.add(s, e, l.nodeY[n], 0.7, col, string(f.Kind))
		}
	}

	down := color.RGBA{R: 220, G: 40, B: 40, A: 255}
	var doubles, regress plotter.XYs
	for _, w := range l.workloads {
		y := l.workloadY[w]
		var ws []soak.Sample
		for _, s := range in.Samples {
			if s.Workload == w {
				ws = append(ws, s)
			}
		}
		// Consecutive samples with the same owners make one segment.
		var segStart time.Duration
		var segOwners []string
		flush := func(to time.Duration) {
			if len(segOwners) == 0 {
				bars.add(segStart, to, y, 0.5, down, "")
				return
			}
			// Two owners or more: the row split between them.
			h := 0.7 / float64(len(segOwners))
			for j, n := range segOwners {
				bars.add(segStart, to, y-0.35+h*(float64(j)+0.5), h, nodeColor(l.nodes, n), "")
			}
		}
		for i, s := range ws {
			owners := servingNodes(s)
			if i > 0 && !slices.Equal(owners, segOwners) {
				flush(s.At)
			}
			if i == 0 || !slices.Equal(owners, segOwners) {
				segStart, segOwners = s.At, owners
			}
		}
		if len(ws) > 0 {
			flush(max(end, ws[len(ws)-1].At))
		}
	}
	for _, d := range r.DoubleCopies {
		doubles = append(doubles, plotter.XY{X: d.At.Seconds(), Y: l.workloadY[d.Workload] + 0.45})
	}
	for _, g := range r.Regressions {
		regress = append(regress, plotter.XY{X: g.At.Seconds(), Y: l.workloadY[g.Workload] - 0.45})
	}
	p.Add(bars)

	// The legend: kinds, then nodes, downtime and the markers.
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	for _, k := range kindOrder(kindsSeen) {
		p.Legend.Add(string(k), swatch{kindColor(k)})
	}
	for _, n := range l.nodes {
		p.Legend.Add("owner "+n, swatch{nodeColor(l.nodes, n)})
	}
	if len(l.workloads) > 0 {
		p.Legend.Add("downtime", swatch{down})
	}
	if len(doubles) > 0 {
		sc, _ := plotter.NewScatter(doubles)
		sc.GlyphStyle = draw.GlyphStyle{Shape: draw.TriangleGlyph{}, Radius: vg.Points(5), Color: color.Black}
		p.Add(sc)
		p.Legend.Add("double copy", sc)
	}
	if len(regress) > 0 {
		sc, _ := plotter.NewScatter(regress)
		sc.GlyphStyle = draw.GlyphStyle{Shape: draw.CrossGlyph{}, Radius: vg.Points(5), Color: color.RGBA{R: 200, B: 200, A: 255}}
		p.Add(sc)
		p.Legend.Add("counter regression", sc)
	}
	return p
}

// servingNodes are the nodes whose copy answered, sorted.
func servingNodes(s soak.Sample) []string {
	var out []string
	for _, c := range s.Copies {
		if c.Serving && !slices.Contains(out, c.Node) {
			out = append(out, c.Node)
		}
	}
	slices.Sort(out)
	return out
}

// secondsTicks marks round seconds up to the soak's end: a labelled tick
// every 10, 30, 60, 120 or 300 s (about ten), unlabelled ones in between.
type secondsTicks struct{ end float64 }

// Ticks implements plot.Ticker.
func (st secondsTicks) Ticks(lo, hi float64) []plot.Tick {
	hi = min(hi, st.end)
	step := 10.0
	for _, s := range []float64{10, 30, 60, 120, 300} {
		step = s
		if (hi-lo)/s <= 12 {
			break
		}
	}
	minor := step / 5
	var t []plot.Tick
	for i := math.Ceil(lo / minor); i*minor <= hi; i++ {
		v := i * minor
		label := ""
		if math.Mod(v, step) == 0 {
			label = strconv.FormatFloat(v, 'f', -1, 64)
		}
		t = append(t, plot.Tick{Value: v, Label: label})
	}
	return t
}

func kindOrder(seen map[soak.Kind]bool) []soak.Kind {
	var out []soak.Kind
	for _, k := range soak.Kinds {
		if seen[k] {
			out = append(out, k)
		}
	}
	var other []soak.Kind
	for k := range seen {
		if !slices.Contains(soak.Kinds, k) {
			other = append(other, k)
		}
	}
	slices.Sort(other)
	return append(out, other...)
}

var kindColors = map[soak.Kind]color.RGBA{
	soak.PowerCut:    {R: 30, G: 30, B: 30, A: 255},
	soak.Partition:   {R: 255, G: 140, B: 0, A: 255},
	soak.OneWay:      {R: 255, G: 200, B: 80, A: 255},
	soak.DaemonKill:  {R: 150, G: 40, B: 160, A: 255},
	soak.DaemonPause: {R: 200, G: 130, B: 220, A: 255},
	soak.DiskFull:    {R: 120, G: 80, B: 40, A: 255},
	soak.LeaderKill:  {R: 200, G: 0, B: 60, A: 255},
}

func kindColor(k soak.Kind) color.Color {
	if c, ok := kindColors[k]; ok {
		return c
	}
	return color.RGBA{R: 128, G: 128, B: 128, A: 255}
}

// Node colours: blues and greens, distinct from the fault kinds and
// from the downtime red.
var nodeColors = []color.RGBA{
	{R: 31, G: 119, B: 180, A: 255},
	{R: 44, G: 160, B: 44, A: 255},
	{R: 23, G: 190, B: 207, A: 255},
	{R: 100, G: 100, B: 230, A: 255},
	{R: 140, G: 200, B: 60, A: 255},
	{R: 0, G: 90, B: 90, A: 255},
	{R: 120, G: 170, B: 230, A: 255},
}

func nodeColor(nodes []string, n string) color.Color {
	i := slices.Index(nodes, n)
	if i < 0 {
		return color.RGBA{R: 128, G: 128, B: 128, A: 255}
	}
	return nodeColors[i%len(nodeColors)]
}

// swatch is a legend entry's filled box.
type swatch struct{ c color.Color }

func (s swatch) Thumbnail(c *draw.Canvas) {
	r := c.Rectangle
	c.FillPolygon(s.c, []vg.Point{r.Min, {X: r.Max.X, Y: r.Min.Y}, r.Max, {X: r.Min.X, Y: r.Max.Y}})
}

type rect struct {
	x0, x1, y, h float64
	c            color.Color
	label        string
}

// rects is a plotter of filled, optionally labelled, bars.
type rects struct {
	items []rect
	label draw.TextStyle
}

func (b *rects) add(from, to time.Duration, y, h float64, c color.Color, label string) {
	if to < from {
		to = from
	}
	b.items = append(b.items, rect{x0: from.Seconds(), x1: to.Seconds(), y: y, h: h, c: c, label: label})
}

// Plot implements plot.Plotter.
func (b *rects) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	// A label that would run into the previous one on its row goes below
	// the bar instead (and the next one above again).
	type row struct {
		above, below vg.Length // where the last label above / below ends
	}
	rows := map[float64]*row{}
	for _, r := range b.items {
		x0, x1 := trX(r.x0), trX(r.x1)
		if x1-x0 < 1 {
			x1 = x0 + 1 // a sample's sliver stays visible
		}
		y0, y1 := trY(r.y-r.h/2), trY(r.y+r.h/2)
		pts := c.ClipPolygonXY([]vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}})
		if len(pts) > 0 {
			c.FillPolygon(r.c, pts)
		}
		if r.label == "" {
			continue
		}
		rw := rows[r.y]
		if rw == nil {
			rw = &row{above: -1e9, below: -1e9}
			rows[r.y] = rw
		}
		w := b.label.Width(r.label)
		switch {
		case x0 > rw.above+2 || x0 <= rw.below+2 && rw.above <= rw.below:
			c.FillText(b.label, vg.Point{X: x0, Y: y1 + 1}, r.label)
			rw.above = x0 + w
		default:
			sty := b.label
			sty.YAlign = draw.YTop
			c.FillText(sty, vg.Point{X: x0, Y: y0 - 1}, r.label)
			rw.below = x0 + w
		}
	}
}

// DataRange implements plot.DataRanger.
func (b *rects) DataRange() (xmin, xmax, ymin, ymax float64) {
	if len(b.items) == 0 {
		return 0, 1, 0, 1
	}
	xmin, ymin = b.items[0].x0, b.items[0].y
	xmax, ymax = xmin, ymin
	for _, r := range b.items {
		xmin, xmax = min(xmin, r.x0), max(xmax, r.x1)
		ymin, ymax = min(ymin, r.y-r.h/2), max(ymax, r.y+r.h/2)
	}
	return xmin, xmax, ymin, ymax
}
