// Package remotewrite sends samples to a time-series database with the
// Prometheus remote-write 1.0 protocol (a snappy-compressed protobuf
// WriteRequest), during a run (following its spool, see Follower) or from
// a finished metrics file (Push). Remote write 1.0 because VictoriaMetrics
// 1.79 answers 2xx to 2.0 but stores nothing.
package remotewrite

import (
	"math"
	"sort"
	"strconv"

	"github.com/golang/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// label is one label of a series; __name__ holds the metric name.
type label struct{ name, value string }

type sample struct {
	value float64
	tsMs  int64
}

// timeSeries is one series of a WriteRequest with its samples.
type timeSeries struct {
	labels  []label // sorted by name, as Prometheus requires
	samples []sample
}

// sortLabels sorts by name: Prometheus rejects a request whose labels are
// out of order.
func sortLabels(l []label) {
	sort.Slice(l, func(i, j int) bool { return l[i].name < l[j].name })
}

// Field numbers of prometheus/prompb (remote write 1.0).
const (
	fWriteRequestTimeseries = 1
	fTimeSeriesLabels       = 1
	fTimeSeriesSamples      = 2
	fLabelName              = 1
	fLabelValue             = 2
	fSampleValue            = 1
	fSampleTimestamp        = 2
)

// encode returns the snappy-compressed WriteRequest of series in dst's
// space; buf is reused scratch space for the protobuf.
func encode(series []*timeSeries, buf, dst []byte) (body, scratch []byte) {
	b := buf[:0]
	var ts, l []byte
	for _, s := range series {
		ts = ts[:0]
		for _, lb := range s.labels {
			l = l[:0]
			l = protowire.AppendTag(l, fLabelName, protowire.BytesType)
			l = protowire.AppendString(l, lb.name)
			l = protowire.AppendTag(l, fLabelValue, protowire.BytesType)
			l = protowire.AppendString(l, lb.value)
			ts = protowire.AppendTag(ts, fTimeSeriesLabels, protowire.BytesType)
			ts = protowire.AppendBytes(ts, l)
		}
		for _, sm := range s.samples {
			l = l[:0]
			l = protowire.AppendTag(l, fSampleValue, protowire.Fixed64Type)
			l = protowire.AppendFixed64(l, math.Float64bits(sm.value))
			l = protowire.AppendTag(l, fSampleTimestamp, protowire.VarintType)
			l = protowire.AppendVarint(l, uint64(sm.tsMs))
			ts = protowire.AppendTag(ts, fTimeSeriesSamples, protowire.BytesType)
			ts = protowire.AppendBytes(ts, l)
		}
		b = protowire.AppendTag(b, fWriteRequestTimeseries, protowire.BytesType)
		b = protowire.AppendBytes(b, ts)
	}
	return snappy.Encode(dst[:cap(dst)], b), b
}

// formatLe writes a bucket bound as the metrics file does (expfmt), so
// that the le label sent is the one in the file: OpenMetrics gives
// integers a ".0" (1.0, 0.0, +Inf), the Prometheus text format not.
func formatLe(f float64, openMetrics bool) string {
	switch {
	case math.IsInf(f, +1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	case math.IsNaN(f):
		return "NaN"
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if openMetrics {
		hasDot := false
		for i := 0; i < len(s); i++ {
			if s[i] == '.' || s[i] == 'e' {
				hasDot = true
			}
		}
		if !hasDot {
			s += ".0"
		}
	}
	return s
}
