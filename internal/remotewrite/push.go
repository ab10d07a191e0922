package remotewrite

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/statexec/statexec/internal/metricsfile"
	"github.com/statexec/statexec/internal/store"
)

// Push sends every sample of a metrics file (OpenMetrics or Prometheus
// text), or of a spool, with the file's own timestamps. A batch the
// server does not take within Options.Timeout fails, and so does the
// rest; the final line says how many samples were sent and failed.
func Push(path string, o Options) error {
	snd, err := newSender(o)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	if bytes.HasPrefix(data, []byte("statexec-spool-")) {
		if data, err = spoolText(path); err != nil {
			return fmt.Errorf("push: %w", err)
		}
	}
	f, err := metricsfile.Parse(data)
	if err != nil {
		return fmt.Errorf("push: %s: %w", path, err)
	}
	b := newBatch()
	var timedOut bool
	flush := func() {
		if timedOut {
			snd.failed += b.samples
			b.reset()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
		defer cancel()
		if snd.send(ctx, b) != nil {
			timedOut = true
			snd.failed += b.samples
			b.reset()
		}
	}
	for id, s := range f.Series {
		labels := []label{{"__name__", s.Name}}
		for k, v := range s.Labels {
			labels = append(labels, label{k, v})
		}
		sortLabels(labels)
		for _, p := range s.Points {
			b.add(id, labels, p.TimestampMs, p.Value)
			if b.samples >= maxBatch {
				flush()
			}
		}
	}
	flush()
	return snd.summary()
}

// spoolText exports a spool (of an interrupted run) as OpenMetrics text.
func spoolText(path string) ([]byte, error) {
	st, _, err := store.Open(path)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := st.Export(&buf, store.OpenMetrics); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
