package fleetsim

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints results as one table per scenario and fleet size,
// policies in the order run, under the scenario's warm-start bounds.
func WriteTable(w io.Writer, results []*Result) error {
	for i := 0; i < len(results); {
		first := results[i]
		fmt.Fprintf(w, "%s, %d hosts, %d jobs measured; warm-start bounds: unlimited VRAM per host %.1f%%, first loads only %.1f%%\n",
			first.Scenario, first.Hosts, first.Jobs, 100*first.WarmBoundVRAM, 100*first.WarmBound)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "policy\twarm\tof bound\tckpt warm\ttts p50\ttts p99\tlatency p50\tlatency p99\tgpu busy\torigin GB\tpeer GB\tsched µs/job\tunfinished\t")
		for ; i < len(results) && results[i].Scenario == first.Scenario && results[i].Hosts == first.Hosts; i++ {
			r := results[i]
			ofBound := 0.0
			if r.WarmBoundVRAM > 0 {
				ofBound = r.WarmRate / r.WarmBoundVRAM
			}
			fmt.Fprintf(tw, "%s\t%.1f%%\t%.0f%%\t%.1f%%\t%.2fs\t%.2fs\t%.2fs\t%.2fs\t%.1f%%\t%.0f\t%.0f\t%.1f\t%d\t\n",
				r.Policy, 100*r.WarmRate, 100*ofBound, 100*r.MainWarmRate, r.TTSP50, r.TTSP99, r.LatencyP50, r.LatencyP99, 100*r.GPUBusy,
				float64(r.OriginBytes)/1e9, float64(r.PeerBytes)/1e9, r.SchedUSPerJob, r.Jobs-r.Finished)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	return nil
}

// WriteJSON prints one JSON object per scenario, fleet size and policy.
func WriteJSON(w io.Writer, results []*Result) error {
	enc := json.NewEncoder(w)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// WriteSVG draws two bar charts per scenario and fleet size: warm-start
// rate (with the bound as a line) and p99 time to start, one bar per
// policy.
func WriteSVG(w io.Writer, results []*Result) error {
	type group struct {
		title string
		rs    []*Result
	}
	var groups []*group
	for _, r := range results {
		title := fmt.Sprintf("%s, %d hosts", r.Scenario, r.Hosts)
		if len(groups) == 0 || groups[len(groups)-1].title != title {
			groups = append(groups, &group{title: title})
		}
		g := groups[len(groups)-1]
		g.rs = append(g.rs, r)
	}
	const (
		panelW, panelH = 420, 220
		barArea        = 150
		left, top      = 120, 40
	)
	width := left + 2*panelW + 40
	height := top + len(groups)*(panelH+40)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for gi, g := range groups {
		y0 := top + gi*(panelH+40)
		fmt.Fprintf(&b, `<text x="10" y="%d" font-size="14" font-weight="bold">%s</text>`+"\n", y0-10, html.EscapeString(g.title))
		maxTTS := 0.0
		for _, r := range g.rs {
			maxTTS = max(maxTTS, r.TTSP99)
		}
		n := len(g.rs)
		rowH := float64(barArea) / float64(max(n, 1))
		for panel, p := range []struct {
			label string
			value func(*Result) float64
			scale float64
			unit  string
		}{
			{"warm-start rate", func(r *Result) float64 { return r.WarmRate }, 1, "%"},
			{"p99 time to start", func(r *Result) float64 { return r.TTSP99 }, max(maxTTS, 1e-9), "s"},
		} {
			x0 := left + panel*panelW
			fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", x0, y0+12, p.label)
			for i, r := range g.rs {
				y := float64(y0+20) + float64(i)*rowH
				v := p.value(r)
				bw := float64(panelW-80) * v / p.scale
				color := "#8a9ab0"
				if r.Policy == "hearth" {
					color = "#d9622b"
				}
				if panel == 0 {
					fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+rowH*0.7, html.EscapeString(r.Policy))
				}
				fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x0, y+1, max(bw, 0), rowH-2, color)
				label := fmt.Sprintf("%.2f%s", v, p.unit)
				if p.unit == "%" {
					label = fmt.Sprintf("%.1f%%", 100*v)
				}
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", float64(x0)+max(bw, 0)+4, y+rowH*0.7, label)
			}
			if panel == 0 && len(g.rs) > 0 {
				bx := float64(x0) + float64(panelW-80)*g.rs[0].WarmBoundVRAM
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black" stroke-dasharray="4 3"/>`+"\n", bx, y0+18, bx, y0+20+barArea)
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">bound</text>`+"\n", bx, y0+34+barArea)
			}
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
