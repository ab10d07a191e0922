package report

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"html/template"
	"io"
	"math"
	"strconv"
)

var (
	//go:embed assets/uPlot.iife.min.js
	uplotJS string
	//go:embed assets/uPlot.min.css
	uplotCSS string
	//go:embed assets/uPlot.LICENSE
	uplotLicense string
	//go:embed page.js
	pageJS string
	//go:embed page.css
	pageCSS string
	//go:embed page.html
	pageHTML string
)

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// WriteHTML writes the self-contained page.
func (rep *Report) WriteHTML(w io.Writer) error {
	data := struct {
		Title             string
		Report            *Report
		Header            []string
		Rows              [][]string
		Multi             bool
		UplotCSS, PageCSS template.CSS
		UplotJS, PageJS   template.JS
		UplotLicense      string
		Data              template.JS
	}{
		Title: rep.Title(), Report: rep, Multi: len(rep.Runs) > 1,
		UplotCSS: template.CSS(uplotCSS), PageCSS: template.CSS(pageCSS),
		UplotJS: template.JS(uplotJS), PageJS: template.JS(pageJS),
		UplotLicense: uplotLicense, Data: template.JS(rep.dataJSON()),
	}
	data.Header = append(data.Header, "")
	for _, r := range rep.Runs {
		data.Header = append(data.Header, r.Name)
	}
	for i := 1; i < len(rep.Runs); i++ {
		data.Header = append(data.Header, rep.Runs[i].Name+" / "+rep.Runs[0].Name)
	}
	for _, row := range rep.Summary {
		cells := append([]string{row.Label}, row.Cells()...)
		if len(rep.Runs) > 1 {
			cells = append(cells, row.Ratios()[1:]...)
		}
		data.Rows = append(data.Rows, cells)
	}
	return pageTemplate.Execute(w, data)
}

// dataJSON is the charts' data. Numbers are written by hand (6 significant
// digits, null for NaN): encoding/json rejects NaN, and a 100 MB file's
// report must stay small.
func (rep *Report) dataJSON() string {
	var b bytes.Buffer
	str := func(s string) {
		j, _ := json.Marshal(s) // escapes <, > and &: safe inside <script>
		b.Write(j)
	}
	b.WriteString(`{"syncPair":`)
	b.WriteString(strconv.FormatBool(rep.SyncPair))
	b.WriteString(`,"runs":[`)
	for i, r := range rep.Runs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"name":`)
		str(r.Name)
		off := rep.offsets[i]
		sec := func(ms int64) string { return strconv.FormatFloat(float64(ms-off)/1000, 'f', 3, 64) }
		b.WriteString(`,"first":` + sec(r.First) + `,"last":` + sec(r.Last))
		if r.HasStart {
			b.WriteString(`,"start":` + sec(r.Start))
		}
		if r.HasEnd {
			b.WriteString(`,"end":` + sec(r.End))
		}
		b.WriteByte('}')
	}
	b.WriteString(`],"panels":[`)
	for i, p := range rep.Panels {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"id":`)
		str(p.ID)
		b.WriteString(`,"section":`)
		str(p.Section)
		b.WriteString(`,"title":`)
		str(p.Title)
		b.WriteString(`,"help":`)
		str(p.Help)
		b.WriteString(`,"unit":`)
		str(p.Unit)
		b.WriteString(`,"x":`)
		writeNumbers(&b, p.X, 'f', 3)
		b.WriteString(`,"series":[`)
		for j, s := range p.Series {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`{"label":`)
			str(s.Label)
			b.WriteString(`,"run":` + strconv.Itoa(s.Run) + `,"style":` + strconv.Itoa(s.Style) +
				`,"show":` + strconv.FormatBool(s.Show) + `,"points":` + strconv.Itoa(s.Points) +
				`,"decimated":` + strconv.FormatBool(s.Decimated) + `,"values":`)
			writeNumbers(&b, s.Values, 'g', 6)
			b.WriteByte('}')
		}
		b.WriteString(`]}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

func writeNumbers(b *bytes.Buffer, vs []float64, format byte, prec int) {
	b.WriteByte('[')
	var tmp [32]byte
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b.WriteString("null")
			continue
		}
		b.Write(strconv.AppendFloat(tmp[:0], v, format, prec, 64))
	}
	b.WriteByte(']')
}
