package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// pythonReader reads an OpenMetrics file with the Python prometheus_client
// parser (Debian package python3-prometheus-client, 0.16 on Debian 12) and
// prints one JSON object per sample: name, labels, value (as Python's
// repr) and the timestamp as the parser returned it, in milliseconds as an
// exact fraction "num/den".
//
// The file is parsed one instant at a time: the lines of every family at
// one timestamp, with the family's HELP/TYPE lines and a `# EOF`, make one
// document. prometheus_client 0.16 checks a histogram's buckets across all
// its samples, whatever their timestamps, and rejects a valid file holding
// one histogram at many instants (its bug); per instant its check holds.
const pythonReader = `
import json, sys
from fractions import Fraction
from prometheus_client.openmetrics.parser import text_string_to_metric_families

def ms(ts):
    if ts is None:
        return None
    if hasattr(ts, "sec"):  # Timestamp(sec, nsec): both carry the sign
        return str(Fraction(ts.sec) * 1000 + Fraction(ts.nsec, 1000000))
    return "float seconds " + repr(ts)  # not a decimal: the parser fell back on float()

headers, order, instants = {}, [], {}
family = None
for line in open(sys.argv[1], encoding="utf-8").read().split("\n"):
    if line == "" or line == "# EOF":
        continue
    if line.startswith("#"):
        name = line.split(" ", 3)[2]
        if name != family:
            family = name
            order.append(name)
            headers[name] = []
        headers[name].append(line)
        continue
    ts = line.rsplit(" ", 1)[1]
    instants.setdefault(ts, {}).setdefault(family, []).append(line)

for ts, fams in instants.items():
    doc = []
    for name in order:
        if name in fams:
            doc += headers[name] + fams[name]
    doc.append("# EOF")
    for fam in text_string_to_metric_families("\n".join(doc) + "\n"):
        for s in fam.samples:
            print(json.dumps({"name": s.name, "labels": s.labels, "value": repr(s.value), "ms": ms(s.timestamp)}))
`

// PythonSample is one sample as the Python parser read it.
type PythonSample struct {
	Name   string
	Labels map[string]string
	Value  float64
	// TimestampMs is the timestamp in milliseconds; Exact is false when
	// the parser's timestamp is not a whole number of milliseconds (or
	// not a decimal at all: Raw then tells what it read).
	TimestampMs int64
	Exact       bool
	Raw         string
}

// pythonBin is the system Python: python3-prometheus-client installs into
// its dist-packages, which another python3 on $PATH (pyenv, venv) lacks.
func pythonBin(t testing.TB) string {
	t.Helper()
	bin := "/usr/bin/python3"
	if _, err := os.Stat(bin); err != nil {
		bin = Bin(t, "python3")
	}
	out, err := exec.Command(bin, "-c", "import prometheus_client.openmetrics.parser").CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("%s cannot import prometheus_client (install python3-prometheus-client: scripts/install-deps.sh): %v\n%s", bin, err, out)
		if isRoot() {
			t.Fatalf("%s", msg)
		}
		t.Skipf("skipping: %s", msg)
	}
	return bin
}

// PythonParse reads the OpenMetrics file at path with Python's
// prometheus_client parser, as a Python user of the file would, and
// returns its samples. A file the parser rejects fails the test.
func PythonParse(t testing.TB, path string) []PythonSample {
	t.Helper()
	bin := pythonBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-c", pythonReader, path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("python prometheus_client parser rejected %s: %v\n%s", path, err, tail(stderr.String(), 20))
	}
	var out []PythonSample
	dec := json.NewDecoder(&stdout)
	for dec.More() {
		var raw struct {
			Name   string
			Labels map[string]string
			Value  string
			Ms     *string
		}
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("python reader output: %v", err)
		}
		v, err := strconv.ParseFloat(raw.Value, 64)
		if err != nil {
			t.Fatalf("python reader value %q: %v", raw.Value, err)
		}
		s := PythonSample{Name: raw.Name, Labels: raw.Labels, Value: v}
		if raw.Ms != nil {
			s.Raw = *raw.Ms
			if r, ok := new(big.Rat).SetString(s.Raw); ok && r.IsInt() && r.Num().IsInt64() {
				s.TimestampMs, s.Exact = r.Num().Int64(), true
			}
		}
		out = append(out, s)
	}
	return out
}
