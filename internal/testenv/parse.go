package testenv

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// File is a parsed statexec output file.
type File struct {
	// OpenMetrics is true for OpenMetrics 1.0 text (ends with `# EOF`,
	// timestamps in seconds) and false for Prometheus 0.0.4 text (integer
	// millisecond timestamps, no `# EOF`).
	OpenMetrics bool
	Families    []Family // in file order
	Samples     []Sample // in file order
}

// Family is the metadata of one metric family. For OpenMetrics counters Name
// is the name on the TYPE line, without the `_total` of the samples.
type Family struct {
	Name, Type, Help string
	Unit             string // OpenMetrics `# UNIT`, if any
}

// Sample is one sample line.
type Sample struct {
	Name        string            // full sample name, e.g. foo_total, foo_bucket
	Labels      map[string]string // unescaped; never nil; no __name__
	Value       float64
	TimestampMs int64
}

// ParseFile strictly parses a statexec output file, independently of the
// prometheus/common code that writes it, and fails the test on the first
// problem. The format is OpenMetrics text if the file has a `# EOF` line,
// Prometheus 0.0.4 text otherwise. Checked:
//   - OpenMetrics: the last line is `# EOF` (trailing newline optional) and
//     nothing follows; timestamps are seconds as plain decimals with only
//     the digits needed (1704067200.12, not 1.70406720012e+09, which
//     Python's prometheus_client misreads, nor 1704067200.120), at most
//     millisecond precision, below 1e11 so they are not milliseconds); no
//     comment lines other than HELP/TYPE/UNIT (promtool
//     rejects them); no exemplars.
//   - 0.0.4: every line ends with a newline; timestamps are integer
//     milliseconds >= 2^31 (VictoriaMetrics reads smaller ones as seconds);
//     plain comment lines are allowed (the format allows them).
//   - both: no empty lines; `# HELP` and `# TYPE` exactly once per family,
//     before its samples; a family's lines are contiguous (no interleaving,
//     no family twice); each sample belongs to the current family according
//     to its type (OpenMetrics counter `# TYPE foo counter` + `foo_total` /
//     `foo_created`; histogram `_bucket` with `le`, `_sum`, `_count`,
//     OpenMetrics `_created`; summary with `quantile`...); every sample has a
//     timestamp; label values use only the escapes \\ \" \n, are UTF-8
//     and are not empty (readers drop empty labels: empty means absent);
//     no duplicate label names; per series (name + labels) timestamps are
//     strictly increasing.
func ParseFile(t testing.TB, path string) *File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ParseFile: %v", err)
		return nil
	}
	f, err := parse(data)
	if err != nil {
		t.Fatalf("ParseFile %s: %v", path, err)
		return nil
	}
	return f
}

// ParseBytes is ParseFile for data held in memory.
func ParseBytes(t testing.TB, data []byte) *File {
	t.Helper()
	f, err := parse(data)
	if err != nil {
		t.Fatalf("ParseBytes: %v", err)
		return nil
	}
	return f
}

// Series returns the samples named name whose labels include all of match,
// sorted by time (stable: samples of several matching series at the same
// time keep file order).
func (f *File) Series(name string, match map[string]string) []Sample {
	var out []Sample
	for _, s := range f.Samples {
		if s.Name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if got, has := s.Labels[k]; !has || got != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].TimestampMs < out[j].TimestampMs })
	return out
}

// SeriesCount returns the number of distinct series (name + labels).
func (f *File) SeriesCount() int {
	seen := map[string]struct{}{}
	for _, s := range f.Samples {
		seen[seriesKey(s.Name, s.Labels)] = struct{}{}
	}
	return len(seen)
}

// Family returns the family named name (as on its TYPE line), or nil.
func (f *File) Family(name string) *Family {
	for i := range f.Families {
		if f.Families[i].Name == name {
			return &f.Families[i]
		}
	}
	return nil
}

// seriesKey is a canonical name{k="v",...} with sorted, escaped labels.
func seriesKey(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(labels[k]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	floatRE      = regexp.MustCompile(`^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$`)
	intRE        = regexp.MustCompile(`^-?[0-9]+$`)
	// omTimestampRE is a plain decimal without needless digits: no
	// exponent, no leading zeros, no trailing zeros in the fraction.
	omTimestampRE = regexp.MustCompile(`^-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?$`)

	omTypes   = map[string]bool{"counter": true, "gauge": true, "histogram": true, "gaugehistogram": true, "stateset": true, "info": true, "summary": true, "unknown": true}
	promTypes = map[string]bool{"counter": true, "gauge": true, "histogram": true, "summary": true, "untyped": true}
)

type famState struct {
	idx              int // in File.Families
	name, typ        string
	hasHelp, hasType bool
	hasUnit          bool
	firstLine        int
	lastLine         int
	samples          int
}

type parser struct {
	om     bool
	f      *File
	cur    *famState
	fams   map[string]*famState
	lastTs map[string]int64 // series key -> last timestamp
	lastLn map[string]int   // series key -> line of last sample
}

func parse(data []byte) (*File, error) {
	if len(data) == 0 {
		return nil, errors.New("empty file")
	}
	text := string(data)
	if i := strings.IndexByte(text, '\r'); i >= 0 {
		return nil, fmt.Errorf("line %d: carriage return (\\r) in file", strings.Count(text[:i], "\n")+1)
	}
	lines := strings.Split(text, "\n")
	eof := -1
	for i, l := range lines {
		if l == "# EOF" {
			eof = i
			break
		}
	}
	p := &parser{om: eof >= 0, f: &File{OpenMetrics: eof >= 0}, fams: map[string]*famState{}, lastTs: map[string]int64{}, lastLn: map[string]int{}}
	if p.om {
		rest := lines[eof+1:]
		if !(len(rest) == 0 || (len(rest) == 1 && rest[0] == "")) {
			return nil, fmt.Errorf("line %d: content after `# EOF`: %q", eof+2, trunc(rest[0]))
		}
		lines = lines[:eof]
	} else {
		if !strings.HasSuffix(text, "\n") {
			return nil, fmt.Errorf("line %d: last line has no trailing newline (no `# EOF` line, so read as Prometheus 0.0.4 text)", len(lines))
		}
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		if err := p.line(i+1, l); err != nil {
			format := "Prometheus 0.0.4 text"
			if p.om {
				format = "OpenMetrics text"
			}
			return nil, fmt.Errorf("line %d (%s): %v\n\tline: %s", i+1, format, err, trunc(l))
		}
	}
	return p.f, nil
}

func trunc(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

func (p *parser) line(n int, l string) error {
	if l == "" {
		return errors.New("empty line")
	}
	if l[0] != '#' {
		return p.sample(n, l)
	}
	for _, kind := range []string{"HELP", "TYPE", "UNIT"} {
		if l == "# "+kind {
			return fmt.Errorf("# %s without a metric name", kind)
		}
		if rest, ok := strings.CutPrefix(l, "# "+kind+" "); ok {
			if kind == "UNIT" && !p.om {
				return errors.New("# UNIT is not part of Prometheus 0.0.4 text")
			}
			return p.meta(n, kind, rest)
		}
	}
	if p.om {
		if strings.HasPrefix(l, "# EOF") {
			return errors.New("malformed `# EOF` line")
		}
		return errors.New("comment line: OpenMetrics allows only # HELP, # TYPE, # UNIT and # EOF (promtool rejects other `#` lines)")
	}
	if strings.HasPrefix(l, "# EOF") {
		return errors.New("malformed `# EOF` line (the file has no exact `# EOF` line)")
	}
	return nil // a plain comment, allowed in 0.0.4
}

func (p *parser) meta(n int, kind, rest string) error {
	name, text, _ := strings.Cut(rest, " ")
	if !metricNameRE.MatchString(name) {
		return fmt.Errorf("invalid metric family name %q", name)
	}
	if p.cur == nil || p.cur.name != name {
		if old, ok := p.fams[name]; ok {
			return fmt.Errorf("family %q appears again (its lines were at %d-%d): a family's lines must be contiguous and each family declared once", name, old.firstLine, old.lastLine)
		}
		p.cur = &famState{idx: len(p.f.Families), name: name, firstLine: n}
		p.fams[name] = p.cur
		p.f.Families = append(p.f.Families, Family{Name: name})
	}
	c := p.cur
	c.lastLine = n
	fam := &p.f.Families[c.idx]
	if c.samples > 0 {
		return fmt.Errorf("# %s for %q after its samples: metadata must come first", kind, name)
	}
	switch kind {
	case "HELP":
		if c.hasHelp {
			return fmt.Errorf("second # HELP for %q", name)
		}
		h, err := unescapeHelp(text, p.om)
		if err != nil {
			return err
		}
		c.hasHelp, fam.Help = true, h
	case "TYPE":
		if c.hasType {
			return fmt.Errorf("second # TYPE for %q", name)
		}
		types := promTypes
		if p.om {
			types = omTypes
		}
		if !types[text] {
			return fmt.Errorf("invalid type %q for %q", text, name)
		}
		if p.om && text == "counter" && strings.HasSuffix(name, "_total") {
			return fmt.Errorf("OpenMetrics counter family %q: the TYPE line must name the family without _total", name)
		}
		c.hasType, c.typ, fam.Type = true, text, text
	case "UNIT":
		if c.hasUnit {
			return fmt.Errorf("second # UNIT for %q", name)
		}
		if text != "" && !strings.HasSuffix(name, "_"+text) {
			return fmt.Errorf("unit %q is not a suffix of family name %q", text, name)
		}
		c.hasUnit, fam.Unit = true, text
	}
	return nil
}

func unescapeHelp(s string, om bool) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(s) {
			return "", errors.New(`HELP text ends with a lone \`)
		}
		i++
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case '"':
			if !om {
				return "", errors.New(`invalid escape \" in HELP text (0.0.4 escapes only \\ and \n)`)
			}
			b.WriteByte('"')
		default:
			return "", fmt.Errorf(`invalid escape \%c in HELP text`, s[i])
		}
	}
	return b.String(), nil
}

// suffixes lists the sample name suffixes allowed in a family of type typ.
func suffixes(typ string, om bool) []string {
	switch typ {
	case "counter":
		if om {
			return []string{"_total", "_created"}
		}
		return []string{""}
	case "histogram":
		if om {
			return []string{"_bucket", "_sum", "_count", "_created"}
		}
		return []string{"_bucket", "_sum", "_count"}
	case "gaugehistogram":
		return []string{"_bucket", "_gsum", "_gcount"}
	case "summary":
		if om {
			return []string{"", "_sum", "_count", "_created"}
		}
		return []string{"", "_sum", "_count"}
	case "info":
		return []string{"_info"}
	default: // gauge, untyped, unknown, stateset
		return []string{""}
	}
}

// belongs returns the suffix of name in family fs, or false.
func (p *parser) belongs(fs *famState, name string) (string, bool) {
	for _, suf := range suffixes(fs.typ, p.om) {
		if name == fs.name+suf {
			return suf, true
		}
	}
	return "", false
}

func (p *parser) sample(n int, l string) error {
	// Metric name.
	i := 0
	for i < len(l) && (l[i] == '_' || l[i] == ':' || l[i] >= 'a' && l[i] <= 'z' || l[i] >= 'A' && l[i] <= 'Z' || i > 0 && l[i] >= '0' && l[i] <= '9') {
		i++
	}
	name := l[:i]
	if name == "" {
		return errors.New("sample line does not start with a metric name")
	}
	labels := map[string]string{}
	if i < len(l) && l[i] == '{' {
		var err error
		labels, i, err = parseLabels(l, i)
		if err != nil {
			return err
		}
	}
	rest := l[i:]
	var fields []string
	if p.om {
		if !strings.HasPrefix(rest, " ") {
			return errors.New("expected a single space after the metric name/labels")
		}
		fields = strings.Split(rest[1:], " ")
		for _, f := range fields {
			if f == "" {
				return errors.New("OpenMetrics separates fields by exactly one space")
			}
		}
	} else {
		if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return errors.New("expected whitespace after the metric name/labels")
		}
		fields = strings.Fields(rest)
	}
	switch {
	case len(fields) == 0:
		return errors.New("missing value")
	case len(fields) == 1:
		return fmt.Errorf("sample %s has no timestamp (every sample line needs one; promtool rejects it)", name)
	case len(fields) > 2 && fields[2] == "#":
		return errors.New("exemplars are not expected in statexec output")
	case len(fields) > 2:
		return fmt.Errorf("unexpected fields after the timestamp: %q", fields[2:])
	}
	value, err := parseValue(fields[0])
	if err != nil {
		return err
	}
	var ts int64
	if p.om {
		ts, err = parseOMTimestamp(fields[1])
	} else {
		ts, err = parsePromTimestamp(fields[1])
	}
	if err != nil {
		return err
	}

	// Family membership.
	c := p.cur
	if c == nil {
		return fmt.Errorf("sample %s before any # HELP/# TYPE line", name)
	}
	suf, ok := p.belongs(c, name)
	if !ok {
		for _, o := range p.fams {
			if o != c {
				if _, ok2 := p.belongs(o, name); ok2 {
					return fmt.Errorf("sample %s belongs to family %q (lines %d-%d) but the current family is %q: families must not be interleaved", name, o.name, o.firstLine, o.lastLine, c.name)
				}
			}
		}
		if c.typ == "" {
			return fmt.Errorf("sample %s: family %q has no # TYPE before its samples", name, c.name)
		}
		return fmt.Errorf("sample %s does not belong to the current family %q (type %s; allowed names: %s): it needs its own # HELP and # TYPE", name, c.name, c.typ, allowedNames(c, p.om))
	}
	if !c.hasType {
		return fmt.Errorf("sample %s: family %q has no # TYPE before its samples", name, c.name)
	}
	if !c.hasHelp {
		return fmt.Errorf("sample %s: family %q has no # HELP before its samples", name, c.name)
	}
	switch {
	case suf == "_bucket":
		le, has := labels["le"]
		if !has {
			return fmt.Errorf("histogram bucket %s without an le label", name)
		}
		if _, err := parseValue(le); err != nil {
			return fmt.Errorf("le label: %v", err)
		}
	case c.typ == "summary" && suf == "":
		q, has := labels["quantile"]
		if !has {
			return fmt.Errorf("summary sample %s without a quantile label", name)
		}
		if _, err := parseValue(q); err != nil {
			return fmt.Errorf("quantile label: %v", err)
		}
	}
	c.samples++
	c.lastLine = n

	key := seriesKey(name, labels)
	if last, seen := p.lastTs[key]; seen && ts <= last {
		return fmt.Errorf("series %s: timestamp %d ms is not after the previous one %d ms (line %d): timestamps must be strictly increasing per series (promtool silently drops such samples)", key, ts, last, p.lastLn[key])
	}
	p.lastTs[key] = ts
	p.lastLn[key] = n
	p.f.Samples = append(p.f.Samples, Sample{Name: name, Labels: labels, Value: value, TimestampMs: ts})
	return nil
}

func allowedNames(c *famState, om bool) string {
	var s []string
	for _, suf := range suffixes(c.typ, om) {
		s = append(s, c.name+suf)
	}
	return strings.Join(s, ", ")
}

// parseLabels parses {name="value",...} starting at l[i] == '{' and returns
// the index after '}'.
func parseLabels(l string, i int) (map[string]string, int, error) {
	labels := map[string]string{}
	i++ // '{'
	if i < len(l) && l[i] == '}' {
		return labels, i + 1, nil
	}
	for {
		j := i
		for j < len(l) && l[j] != '=' && l[j] != '}' && l[j] != ',' && l[j] != ' ' && l[j] != '"' {
			j++
		}
		lname := l[i:j]
		if !labelNameRE.MatchString(lname) {
			return nil, 0, fmt.Errorf("invalid label name %q at column %d", lname, i+1)
		}
		if lname == "__name__" {
			return nil, 0, errors.New("label __name__ inside braces")
		}
		if _, dup := labels[lname]; dup {
			return nil, 0, fmt.Errorf("duplicate label %q", lname)
		}
		if j+1 >= len(l) || l[j] != '=' || l[j+1] != '"' {
			return nil, 0, fmt.Errorf("label %q: expected =\" at column %d", lname, j+1)
		}
		i = j + 2
		var b strings.Builder
		closed := false
		for i < len(l) {
			c := l[i]
			if c == '"' {
				closed = true
				i++
				break
			}
			if c != '\\' {
				b.WriteByte(c)
				i++
				continue
			}
			if i+1 >= len(l) {
				break
			}
			switch l[i+1] {
			case '\\':
				b.WriteByte('\\')
			case '"':
				b.WriteByte('"')
			case 'n':
				b.WriteByte('\n')
			default:
				return nil, 0, fmt.Errorf(`label %q: invalid escape \%c in value (only \\, \" and \n are allowed)`, lname, l[i+1])
			}
			i += 2
		}
		if !closed {
			return nil, 0, fmt.Errorf("label %q: unterminated value", lname)
		}
		v := b.String()
		if !utf8.ValidString(v) {
			return nil, 0, fmt.Errorf("label %q: value is not valid UTF-8", lname)
		}
		if v == "" {
			return nil, 0, fmt.Errorf("label %q: empty value (VictoriaMetrics and promtool drop it: empty means absent)", lname)
		}
		labels[lname] = v
		if i >= len(l) {
			return nil, 0, errors.New("unterminated label set")
		}
		switch l[i] {
		case '}':
			return labels, i + 1, nil
		case ',':
			i++
			if i < len(l) && l[i] == '}' {
				return nil, 0, errors.New("trailing comma in label set")
			}
		default:
			return nil, 0, fmt.Errorf("expected , or } after label %q, got %q", lname, l[i])
		}
	}
}

func parseValue(s string) (float64, error) {
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "+Inf", "Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	}
	if !floatRE.MatchString(s) {
		return 0, fmt.Errorf("invalid number %q", s)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid number %q: %v", s, err)
	}
	return v, nil
}

// maxOMSeconds: OpenMetrics timestamps are seconds; a bigger value is almost
// certainly milliseconds written by mistake (promtool would accept it and put
// the sample in year 50000+).
const maxOMSeconds = 1e11

// parseOMTimestamp converts an OpenMetrics timestamp (seconds in plain
// decimal, e.g. 1704067200.123) exactly to milliseconds.
func parseOMTimestamp(s string) (int64, error) {
	if !floatRE.MatchString(s) {
		return 0, fmt.Errorf("invalid timestamp %q (OpenMetrics timestamps are seconds, like 1704067200.123)", s)
	}
	if !omTimestampRE.MatchString(s) || s == "-0" {
		return 0, fmt.Errorf("timestamp %q is not a plain decimal with only the digits needed, like 1704067200.12 (Python's prometheus_client reads 1.70406720012e+09 as 1 s and a fraction)", s)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return 0, fmt.Errorf("invalid timestamp %q", s)
	}
	if new(big.Rat).Abs(r).Cmp(big.NewRat(maxOMSeconds, 1)) >= 0 {
		return 0, fmt.Errorf("timestamp %q is too big for seconds: milliseconds in an OpenMetrics file?", s)
	}
	r.Mul(r, big.NewRat(1000, 1))
	if !r.IsInt() {
		return 0, fmt.Errorf("timestamp %q has sub-millisecond precision", s)
	}
	return r.Num().Int64(), nil
}

// parsePromTimestamp parses a Prometheus 0.0.4 timestamp: integer milliseconds.
func parsePromTimestamp(s string) (int64, error) {
	if !intRE.MatchString(s) {
		return 0, fmt.Errorf("invalid timestamp %q (Prometheus 0.0.4 timestamps are integer milliseconds)", s)
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid timestamp %q: %v", s, err)
	}
	if v >= 0 && v < 1<<31 {
		return 0, fmt.Errorf("timestamp %d ms is before 1970-01-25: VictoriaMetrics would read it as seconds (seconds instead of milliseconds?)", v)
	}
	return v, nil
}
