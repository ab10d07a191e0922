// Package metricsfile reads statexec output files strictly: OpenMetrics 1.0
// text or Prometheus 0.0.4 text with a timestamp on every sample. It is
// independent of the prometheus/common code that writes them, so the tests
// can check the writer with it, and `statexec report` reads files with it.
package metricsfile

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// File is a parsed statexec output file.
type File struct {
	// OpenMetrics is true for OpenMetrics 1.0 text (ends with `# EOF`,
	// timestamps in seconds) and false for Prometheus 0.0.4 text (integer
	// millisecond timestamps, no `# EOF`).
	OpenMetrics bool
	Families    []Family  // in file order
	Series      []*Series // in the order of their first sample
	// Order lists every sample in file order, as (series, point) indexes.
	Order []SampleRef
}

// Family is the metadata of one metric family. For OpenMetrics counters Name
// is the name on the TYPE line, without the `_total` of the samples.
type Family struct {
	Name, Type, Help string
	Unit             string // OpenMetrics `# UNIT`, if any
}

// Series is the points of one sample name and label set.
type Series struct {
	Name   string            // full sample name, e.g. foo_total, foo_bucket
	Family int               // index in File.Families
	Labels map[string]string // unescaped; never nil; no __name__
	Points []Point           // strictly increasing timestamps
}

// Point is one sample of a series.
type Point struct {
	TimestampMs int64
	Value       float64
}

// SampleRef locates one sample: File.Series[Series].Points[Point].
type SampleRef struct{ Series, Point int32 }

// Key returns the canonical name{k="v",...} of a series, labels sorted and
// escaped.
func Key(name string, labels map[string]string) string {
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
		b.WriteString(labelEscaper.Replace(labels[k]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

var (
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

type seriesState struct {
	idx    int // in File.Series
	lastLn int // line of the last sample
}

type parser struct {
	om   bool
	f    *File
	cur  *famState
	fams map[string]*famState
	// byRaw finds a series from its name and label text as written (no
	// allocation, no label parsing for the thousands of later points);
	// byKey from its canonical key, so that two spellings of one label set
	// are one series.
	byRaw map[string]*seriesState
	byKey map[string]*seriesState
}

// Parse strictly parses a statexec output file. The format is OpenMetrics
// text if the file has a `# EOF` line, Prometheus 0.0.4 text otherwise.
// Checked:
//   - OpenMetrics: the last line is `# EOF` (trailing newline optional) and
//     nothing follows; timestamps are seconds (decimal or exponent notation,
//     at most millisecond precision, below 1e11 so they are not
//     milliseconds); no comment lines other than HELP/TYPE/UNIT (promtool
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
//     timestamp; label values use only the escapes \\ \" \n and are UTF-8;
//     no duplicate label names; per series (name + labels) timestamps are
//     strictly increasing.
//
// An error names the line: "line N (format): what was wrong".
func Parse(data []byte) (*File, error) {
	if len(data) == 0 {
		return nil, errors.New("empty file")
	}
	// A view, not a copy: a 100 MB file would otherwise cost 100 MB more,
	// and page faults dominate the read. Nothing in the returned File
	// refers to it (names and values are cloned), and data is not modified.
	text := unsafe.String(&data[0], len(data))
	if i := strings.IndexByte(text, '\r'); i >= 0 {
		return nil, fmt.Errorf("line %d: carriage return (\\r) in file", strings.Count(text[:i], "\n")+1)
	}
	body, om, err := cutEOF(text)
	if err != nil {
		return nil, err
	}
	p := &parser{om: om, f: &File{OpenMetrics: om}, fams: map[string]*famState{},
		byRaw: map[string]*seriesState{}, byKey: map[string]*seriesState{}}
	n := 0
	for len(body) > 0 {
		n++
		l := body
		if i := strings.IndexByte(body, '\n'); i >= 0 {
			l, body = body[:i], body[i+1:]
		} else {
			body = ""
		}
		if err := p.line(n, l); err != nil {
			format := "Prometheus 0.0.4 text"
			if p.om {
				format = "OpenMetrics text"
			}
			return nil, fmt.Errorf("line %d (%s): %v\n\tline: %s", n, format, err, trunc(l))
		}
	}
	return p.f, nil
}

// cutEOF returns the lines before `# EOF` (OpenMetrics) or the whole text
// (0.0.4), each line ending with a newline but maybe the last.
func cutEOF(text string) (string, bool, error) {
	eof := -1
	if strings.HasPrefix(text, "# EOF\n") || text == "# EOF" {
		eof = 0
	} else if i := strings.Index(text, "\n# EOF\n"); i >= 0 {
		eof = i + 1
	} else if strings.HasSuffix(text, "\n# EOF") {
		eof = len(text) - len("# EOF")
	}
	if eof >= 0 {
		rest := text[eof+len("# EOF"):]
		if rest != "" && rest != "\n" {
			line := strings.Count(text[:eof], "\n") + 2
			next, _, _ := strings.Cut(rest[1:], "\n")
			return "", true, fmt.Errorf("line %d: content after `# EOF`: %q", line, trunc(next))
		}
		return text[:eof], true, nil
	}
	if !strings.HasSuffix(text, "\n") {
		return "", false, fmt.Errorf("line %d: last line has no trailing newline (no `# EOF` line, so read as Prometheus 0.0.4 text)", strings.Count(text, "\n")+1)
	}
	return text, false, nil
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
	if !isMetricName(name) {
		return fmt.Errorf("invalid metric family name %q", name)
	}
	if p.cur == nil || p.cur.name != name {
		if old, ok := p.fams[name]; ok {
			return fmt.Errorf("family %q appears again (its lines were at %d-%d): a family's lines must be contiguous and each family declared once", name, old.firstLine, old.lastLine)
		}
		name = strings.Clone(name)
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
		c.hasHelp, fam.Help = true, strings.Clone(h)
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
		text = strings.Clone(text)
		c.hasType, c.typ, fam.Type = true, text, text
	case "UNIT":
		if c.hasUnit {
			return fmt.Errorf("second # UNIT for %q", name)
		}
		if text != "" && !strings.HasSuffix(name, "_"+text) {
			return fmt.Errorf("unit %q is not a suffix of family name %q", text, name)
		}
		c.hasUnit, fam.Unit = true, strings.Clone(text)
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
	i := 0
	for i < len(l) && (l[i] == '_' || l[i] == ':' || l[i] >= 'a' && l[i] <= 'z' || l[i] >= 'A' && l[i] <= 'Z' || i > 0 && l[i] >= '0' && l[i] <= '9') {
		i++
	}
	name := l[:i]
	if name == "" {
		return errors.New("sample line does not start with a metric name")
	}
	if i < len(l) && l[i] == '{' {
		end, err := labelsEnd(l, i)
		if err != nil {
			return err
		}
		i = end
	}
	raw := l[:i]
	ts, value, err := p.valueAndTimestamp(name, l[i:])
	if err != nil {
		return err
	}
	s := p.byRaw[raw]
	if s == nil {
		if s, err = p.newSeries(name, raw, l, len(name)); err != nil {
			return err
		}
	}
	if p.f.Series[s.idx].Family != p.cur.idx {
		// The same series again after another family: report it as the
		// interleaving it is.
		if err := p.checkFamily(name, p.f.Series[s.idx].Labels); err != nil {
			return err
		}
	}
	p.cur.samples++
	p.cur.lastLine = n
	ser := p.f.Series[s.idx]
	if k := len(ser.Points); k > 0 && ts <= ser.Points[k-1].TimestampMs {
		return fmt.Errorf("series %s: timestamp %d ms is not after the previous one %d ms (line %d): timestamps must be strictly increasing per series (promtool silently drops such samples)", Key(name, ser.Labels), ts, ser.Points[k-1].TimestampMs, s.lastLn)
	}
	s.lastLn = n
	p.f.Order = append(p.f.Order, SampleRef{Series: int32(s.idx), Point: int32(len(ser.Points))})
	ser.Points = append(ser.Points, Point{TimestampMs: ts, Value: value})
	return nil
}

// valueAndTimestamp parses what follows the name and labels.
func (p *parser) valueAndTimestamp(name, rest string) (int64, float64, error) {
	var fields []string
	if p.om {
		if !strings.HasPrefix(rest, " ") {
			return 0, 0, errors.New("expected a single space after the metric name/labels")
		}
		var buf [3]string
		fields = splitSpaces(rest[1:], buf[:0])
		for _, f := range fields {
			if f == "" {
				return 0, 0, errors.New("OpenMetrics separates fields by exactly one space")
			}
		}
	} else {
		if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return 0, 0, errors.New("expected whitespace after the metric name/labels")
		}
		fields = strings.Fields(rest)
	}
	switch {
	case len(fields) == 0:
		return 0, 0, errors.New("missing value")
	case len(fields) == 1:
		return 0, 0, fmt.Errorf("sample %s has no timestamp (every sample line needs one; promtool rejects it)", name)
	case len(fields) > 2 && (fields[2] == "#" || strings.HasPrefix(fields[2], "# ")):
		return 0, 0, errors.New("exemplars are not expected in statexec output")
	case len(fields) > 2:
		return 0, 0, fmt.Errorf("unexpected fields after the timestamp: %q", fields[2:])
	}
	value, err := parseValue(fields[0])
	if err != nil {
		return 0, 0, err
	}
	var ts int64
	if p.om {
		ts, err = parseOMTimestamp(fields[1])
	} else {
		ts, err = parsePromTimestamp(fields[1])
	}
	return ts, value, err
}

// splitSpaces splits s at single spaces into at most 3 fields (the third
// holds the rest), appending to fields: no allocation for a sample line.
func splitSpaces(s string, fields []string) []string {
	for len(fields) < 2 {
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			break
		}
		fields, s = append(fields, s[:i]), s[i+1:]
	}
	return append(fields, s)
}

// newSeries parses the labels of a series seen for the first time, checks
// that it belongs to the current family and registers it.
func (p *parser) newSeries(name, raw, l string, i int) (*seriesState, error) {
	labels := map[string]string{}
	if i < len(l) && l[i] == '{' {
		var err error
		if labels, _, err = parseLabels(l, i); err != nil {
			return nil, err
		}
	}
	if err := p.checkFamily(name, labels); err != nil {
		return nil, err
	}
	key := Key(name, labels)
	s := p.byKey[key]
	if s == nil {
		s = &seriesState{idx: len(p.f.Series)}
		p.byKey[key] = s
		// The series of a statexec file share their instants: the previous
		// series' length is a good guess of this one's.
		var points []Point
		if n := len(p.f.Series); n > 0 {
			points = make([]Point, 0, len(p.f.Series[n-1].Points))
		}
		p.f.Series = append(p.f.Series, &Series{Name: strings.Clone(name), Family: p.cur.idx, Labels: labels, Points: points})
	}
	p.byRaw[raw] = s
	return s, nil
}

// checkFamily checks that a sample named name with these labels belongs to
// the current family.
func (p *parser) checkFamily(name string, labels map[string]string) error {
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
	return nil
}

func allowedNames(c *famState, om bool) string {
	var s []string
	for _, suf := range suffixes(c.typ, om) {
		s = append(s, c.name+suf)
	}
	return strings.Join(s, ", ")
}

// labelsEnd returns the index after the '}' closing the label set that
// starts at l[i] == '{', skipping quoted values.
func labelsEnd(l string, i int) (int, error) {
	inQuote := false
	for j := i + 1; j < len(l); j++ {
		switch c := l[j]; {
		case inQuote && c == '\\':
			j++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return j + 1, nil
		}
	}
	if inQuote {
		return 0, errors.New("unterminated label value")
	}
	return 0, errors.New("unterminated label set")
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
		if !isLabelName(lname) {
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
		labels[strings.Clone(lname)] = v
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

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// isMetricName reports whether s matches [a-zA-Z_:][a-zA-Z0-9_:]*.
func isMetricName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isLetter(c) || c == ':' || i > 0 && isDigit(c)) {
			return false
		}
	}
	return s != ""
}

// isLabelName reports whether s matches [a-zA-Z_][a-zA-Z0-9_]*.
func isLabelName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isLetter(c) || i > 0 && isDigit(c)) {
			return false
		}
	}
	return s != ""
}

// decimal is a number in decimal notation, split into its parts.
type decimal struct {
	neg        bool
	intDigits  string // the digits before the point
	fracDigits string // the digits after it
	exp        int64
}

// scanDecimal splits s if it matches
// [+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)? and reports whether
// it does. strconv.ParseFloat alone also takes hex, "inf" and underscores,
// which the formats do not allow.
func scanDecimal(s string) (decimal, bool) {
	var d decimal
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		d.neg = s[i] == '-'
		i++
	}
	start := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intDigits := s[start:i]
	frac := ""
	if i < len(s) && s[i] == '.' {
		i++
		fs := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		frac = s[fs:i]
	}
	if intDigits == "" && frac == "" {
		return d, false
	}
	d.intDigits, d.fracDigits = intDigits, frac
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		es := i
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		ds := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if ds == i || i-ds > 9 {
			return d, false
		}
		e, err := strconv.ParseInt(s[es:i], 10, 64)
		if err != nil {
			return d, false
		}
		d.exp = e
	}
	return d, i == len(s)
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
	if _, ok := scanDecimal(s); !ok {
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

// parseOMTimestamp converts an OpenMetrics timestamp (seconds, possibly with a
// fraction or an exponent, e.g. 1.704067200123e+09) exactly to milliseconds.
func parseOMTimestamp(s string) (int64, error) {
	d, ok := scanDecimal(s)
	if !ok {
		return 0, fmt.Errorf("invalid timestamp %q (OpenMetrics timestamps are seconds, like 1704067200.123)", s)
	}
	if ms, ok := d.exactMs(); ok {
		if ms <= -maxOMSeconds*1000 || ms >= maxOMSeconds*1000 {
			return 0, fmt.Errorf("timestamp %q is too big for seconds: milliseconds in an OpenMetrics file?", s)
		}
		return ms, nil
	}
	// Slow path, for many digits or sub-millisecond values: exact rationals.
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

// exactMs returns d seconds in milliseconds when that is an integer that
// int64 arithmetic computes exactly; false sends the caller to big.Rat.
func (d decimal) exactMs() (int64, bool) {
	digits := len(d.intDigits) + len(d.fracDigits)
	m := int64(0)
	significant := 0
	for i := 0; i < digits; i++ {
		var c byte
		if i < len(d.intDigits) {
			c = d.intDigits[i]
		} else {
			c = d.fracDigits[i-len(d.intDigits)]
		}
		if m == 0 && c == '0' {
			continue
		}
		if significant++; significant > 15 {
			return 0, false
		}
		m = m*10 + int64(c-'0')
	}
	shift := d.exp - int64(len(d.fracDigits)) + 3 // ms = m * 10^shift
	if m == 0 {
		return 0, true
	}
	if shift < -18 || shift > 18 {
		return 0, false
	}
	for ; shift < 0; shift++ {
		if m%10 != 0 {
			return 0, false
		}
		m /= 10
	}
	for ; shift > 0; shift-- {
		if m > math.MaxInt64/100 {
			return 0, false
		}
		m *= 10
	}
	if d.neg {
		m = -m
	}
	return m, true
}

// parsePromTimestamp parses a Prometheus 0.0.4 timestamp: integer milliseconds.
func parsePromTimestamp(s string) (int64, error) {
	d, ok := scanDecimal(s)
	if !ok || d.fracDigits != "" || d.exp != 0 || strings.ContainsAny(s, ".eE+") {
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
