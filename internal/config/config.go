// Package config turns statexec's command line and SE_* environment
// variables into one validated Invocation. Flags win over variables.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Modes.
const (
	ModeExec             = "exec"
	ModeWaitStart        = "waitStart"
	ModeWaitStartAndStop = "waitStartAndStop"
	ModeSyncStart        = "syncStart"
	ModeSyncStartAndStop = "syncStartAndStop"
	ModeRecover          = "recover"
	ModePush             = "push"
	ModeHelp             = "help"
	ModeVersion          = "version"
)

// Output formats (SE_METRICS_FORMAT).
const (
	FormatOpenMetrics = "openmetrics"
	FormatPrometheus  = "prometheus"
)

// Defaults.
const (
	DefaultMetricsFile = "/tmp/statexec_metrics.txt"
	DefaultInterval    = time.Second
	MinInterval        = 10 * time.Millisecond
	DefaultListen      = ":8080"
	DefaultSyncTimeout = 30 * time.Second
	DefaultStopGrace   = 5 * time.Second
	// DefaultRemoteWriteTimeout bounds the final flush of remote write.
	DefaultRemoteWriteTimeout = 30 * time.Second
	// maxLabelValueLen keeps a label value below VictoriaMetrics' default
	// -maxLabelValueLen (16 KiB), which would otherwise truncate it.
	maxLabelValueLen = 16000
)

// Label is one extra label put on every sample.
type Label struct{ Key, Value string }

// Config is the run's configuration.
type Config struct {
	MetricsFile    string
	Instance       string
	TimeRelativeMs int64 // -1: the start of the run
	WaitBefore     time.Duration
	WaitAfter      time.Duration
	Interval       time.Duration
	Format         string
	Probes         string // auto, ebpf, plain
	Summary        bool
	Labels         []Label
	Listen         string
	SyncToken      string
	SyncTimeout    time.Duration
	StopGrace      time.Duration
	Report         string // HTML report written after the metrics file; "" for none
	RemoteWrite    RemoteWrite

	// N-party sync (helper nparty): how many sync* clients a wait* server
	// waits for (SE_SYNC_PARTIES, default 1) and whether it stops at the
	// first or the last /stop (SE_SYNC_STOP).
	SyncParties  int
	SyncStopLast bool

	// RunqueueHistogram (probe group "runq") turns on the run-queue
	// latency histogram, which needs a program on every context switch.
	RunqueueHistogram bool
}

// RemoteWrite configures live remote write (SE_REMOTE_WRITE_*) and push.
type RemoteWrite struct {
	URL         string // "" for none
	BearerToken string
	Headers     []Header
	Timeout     time.Duration
}

// Header is one extra HTTP header of remote write.
type Header struct{ Name, Value string }

// Invocation is what statexec was asked to do.
type Invocation struct {
	Mode    string
	URL     string   // sync modes
	Command []string // the command and its arguments
	Args    []string // recover: spool and optional output; push: file and URL
	Config  Config
}

// UsageError is an error in the command line or environment: statexec
// prints it with the usage hint and exits 2.
type UsageError struct {
	Msg string
	// ShowUsage asks for the usage text too: the mode or command is
	// missing or wrong, not just one value.
	ShowUsage bool
}

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, a ...any) error { return &UsageError{Msg: fmt.Sprintf(format, a...)} }

func usageAndf(format string, a ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, a...), ShowUsage: true}
}

// WantsUsage reports whether err should be followed by the usage text.
func WantsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u) && u.ShowUsage
}

// IsUsage reports whether err is a UsageError.
func IsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}

// reservedLabels are set by statexec itself or by its metrics.
var reservedLabels = []string{
	"instance", "job", "role", "cpu", "mode", "interface", "disk", "kind",
	"backend", "le", "quantile", "state", "name", "version", "collector",
}

// IsMode reports whether s names a mode that runs a command.
func isRunMode(s string) bool {
	switch s {
	case ModeExec, ModeWaitStart, ModeWaitStartAndStop, ModeSyncStart, ModeSyncStartAndStop:
		return true
	}
	return false
}

// Parse reads args (without the program name) and env (as os.Environ).
// hostname is the default instance.
func Parse(args, env []string, hostname string) (*Invocation, error) {
	cfg := Config{
		MetricsFile:    DefaultMetricsFile,
		Instance:       hostname,
		TimeRelativeMs: -1,
		Interval:       DefaultInterval,
		Format:         FormatOpenMetrics,
		Probes:         "auto",
		Summary:        true,
		Listen:         DefaultListen,
		SyncTimeout:    DefaultSyncTimeout,
		StopGrace:      DefaultStopGrace,
		RemoteWrite:    RemoteWrite{Timeout: DefaultRemoteWriteTimeout},
		SyncParties:    1,
	}
	envLabels, err := applyEnv(&cfg, env)
	if err != nil {
		return nil, err
	}
	var flagLabels []Label
	rest, err := parseFlags(&cfg, &flagLabels, args)
	if err != nil {
		return nil, err
	}
	if len(rest) == 0 {
		return nil, usageAndf("missing mode")
	}
	inv := &Invocation{Mode: rest[0]}
	rest = rest[1:]
	switch {
	case inv.Mode == "-h" || inv.Mode == "--help" || inv.Mode == ModeHelp:
		inv.Mode = ModeHelp
		return inv, nil
	case inv.Mode == "--version" || inv.Mode == ModeVersion:
		inv.Mode = ModeVersion
		return inv, nil
	case inv.Mode == ModeRecover:
		if len(rest) < 1 || len(rest) > 2 {
			return nil, usageAndf("recover needs a spool file and an optional output file")
		}
		inv.Args = rest
		inv.Config = cfg
		return inv, nil
	case inv.Mode == ModePush:
		if rest, err = parseFlags(&cfg, &flagLabels, rest); err != nil {
			return nil, err
		}
		if len(rest) != 2 {
			return nil, usageAndf("push needs a metrics file (or spool) and a remote-write URL")
		}
		if err := checkRemoteWriteURL(rest[1]); err != nil {
			return nil, usagef("invalid push URL: %v", err)
		}
		inv.Args = rest
		inv.Config = cfg
		return inv, nil
	case !isRunMode(inv.Mode):
		return nil, usageAndf("unknown mode %q", inv.Mode)
	}
	// Flags may also follow the mode, up to the first non-flag argument.
	if rest, err = parseFlags(&cfg, &flagLabels, rest); err != nil {
		return nil, err
	}
	if inv.Mode == ModeSyncStart || inv.Mode == ModeSyncStartAndStop {
		if len(rest) == 0 {
			return nil, usageAndf("%s needs a server URL", inv.Mode)
		}
		inv.URL = rest[0]
		if err := checkURL(inv.URL); err != nil {
			return nil, err
		}
		rest = rest[1:]
		if len(rest) > 0 && rest[0] == "--" {
			rest = rest[1:]
		}
	}
	if len(rest) == 0 {
		return nil, usageAndf("%s needs a command to run", inv.Mode)
	}
	inv.Command = rest
	if cfg.Labels, err = mergeLabels(envLabels, flagLabels); err != nil {
		return nil, err
	}
	cfg.Instance = CleanLabelValue(cfg.Instance)
	if cfg.Instance == "" {
		return nil, usagef("instance must not be empty")
	}
	inv.Config = cfg
	return inv, nil
}

func checkURL(u string) error {
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return usagef("invalid server URL %q: want http://host:port", u)
	}
	if len(strings.TrimRight(strings.SplitN(u, "://", 2)[1], "/")) == 0 {
		return usagef("invalid server URL %q: no host", u)
	}
	return nil
}

// setting is one option settable by a variable and a flag.
type setting struct {
	env   string
	long  string
	short string
	set   func(c *Config, v string) error
}

var settings = []setting{
	{"SE_METRICS_FILE", "file", "f", func(c *Config, v string) error {
		if v == "" {
			return errors.New("must not be empty")
		}
		c.MetricsFile = v
		return nil
	}},
	{"SE_INSTANCE", "instance", "i", func(c *Config, v string) error { c.Instance = v; return nil }},
	{"SE_TIME_RELATIVE", "time-relative", "r", func(c *Config, v string) error {
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ms < -1 {
			return fmt.Errorf("%q is not -1 or a time in milliseconds since the epoch", v)
		}
		c.TimeRelativeMs = ms
		return nil
	}},
	{"SE_WAIT_TIME_BEFORE_COMMAND", "wait-before", "", func(c *Config, v string) error {
		d, err := parseSeconds(v)
		c.WaitBefore = d
		return err
	}},
	{"SE_WAIT_TIME_AFTER_COMMAND", "wait-after", "", func(c *Config, v string) error {
		d, err := parseSeconds(v)
		c.WaitAfter = d
		return err
	}},
	{"SE_INTERVAL", "interval", "", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 1s or 100ms", v)
		}
		if d < MinInterval {
			return fmt.Errorf("%s is below the minimum of %s", d, MinInterval)
		}
		c.Interval = d
		return nil
	}},
	{"SE_METRICS_FORMAT", "format", "", func(c *Config, v string) error {
		switch v {
		case FormatOpenMetrics, FormatPrometheus:
			c.Format = v
			return nil
		}
		return fmt.Errorf("%q is not openmetrics or prometheus", v)
	}},
	{"SE_PROBES", "probes", "", func(c *Config, v string) error {
		switch v {
		case "auto", "ebpf", "plain":
			c.Probes = v
			return nil
		}
		return fmt.Errorf("%q is not auto, ebpf or plain", v)
	}},
	{"SE_SUMMARY", "summary", "", func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "1", "true", "yes", "on":
			c.Summary = true
		case "0", "false", "no", "off":
			c.Summary = false
		default:
			return fmt.Errorf("%q is not 0 or 1", v)
		}
		return nil
	}},
	// Probe group "runq": opt-in, it costs on every context switch.
	{"SE_RUNQUEUE_HISTOGRAM", "runqueue-histogram", "", func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "1", "true", "yes", "on":
			c.RunqueueHistogram = true
		case "0", "false", "no", "off":
			c.RunqueueHistogram = false
		default:
			return fmt.Errorf("%q is not 0 or 1", v)
		}
		return nil
	}},
	{"SE_SYNC_LISTEN", "listen", "", func(c *Config, v string) error {
		if !strings.Contains(v, ":") {
			return fmt.Errorf("%q is not an address:port", v)
		}
		c.Listen = v
		return nil
	}},
	{"SE_SYNC_TOKEN", "token", "", func(c *Config, v string) error { c.SyncToken = v; return nil }},
	{"SE_SYNC_TIMEOUT", "sync-timeout", "", func(c *Config, v string) error {
		d, err := parseSeconds(v)
		c.SyncTimeout = d
		return err
	}},
	{"SE_REPORT", "report", "", func(c *Config, v string) error { c.Report = v; return nil }},
	{"SE_STOP_GRACE", "stop-grace", "", func(c *Config, v string) error {
		d, err := parseSeconds(v)
		c.StopGrace = d
		return err
	}},
	// Remote write (issue 12).
	{"SE_REMOTE_WRITE_URL", "remote-write", "", func(c *Config, v string) error {
		if err := checkRemoteWriteURL(v); err != nil {
			return err
		}
		c.RemoteWrite.URL = v
		return nil
	}},
	{"SE_REMOTE_WRITE_BEARER_TOKEN", "remote-write-bearer-token", "", func(c *Config, v string) error {
		c.RemoteWrite.BearerToken = v
		return nil
	}},
	{"SE_REMOTE_WRITE_HEADERS", "remote-write-headers", "", func(c *Config, v string) error {
		h, err := parseHeaders(v)
		c.RemoteWrite.Headers = h
		return err
	}},
	{"SE_REMOTE_WRITE_TIMEOUT", "remote-write-timeout", "", func(c *Config, v string) error {
		d, err := parseSeconds(v)
		c.RemoteWrite.Timeout = d
		return err
	}},
	// N-party sync (helper nparty).
	{"SE_SYNC_PARTIES", "parties", "", func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > maxSyncParties {
			return fmt.Errorf("%q is not a number of clients from 1 to %d", v, maxSyncParties)
		}
		c.SyncParties = n
		return nil
	}},
	{"SE_SYNC_STOP", "sync-stop", "", func(c *Config, v string) error {
		switch v {
		case "first", "last":
			c.SyncStopLast = v == "last"
			return nil
		}
		return fmt.Errorf("%q is not first or last", v)
	}},
}

// checkRemoteWriteURL accepts http(s)://[user:password@]host[:port]/path.
func checkRemoteWriteURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("not an http(s)://host:port/path URL")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Redacted: the userinfo holds a password.
		return fmt.Errorf("%q is not an http(s)://host:port/path URL", u.Redacted())
	}
	return nil
}

// parseHeaders reads "Name: value" lines (empty lines are skipped).
func parseHeaders(v string) ([]Header, error) {
	var out []Header
	for _, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("%q is not a \"Name: value\" line", line)
		}
		out = append(out, Header{Name: name, Value: strings.TrimSpace(value)})
	}
	return out, nil
}

// maxSyncParties bounds SE_SYNC_PARTIES: each waiting party holds a
// connection and a goroutine on the server.
const maxSyncParties = 1000

// parseSeconds accepts a non-negative number of seconds ("5", "0.5") or a
// Go duration ("1500ms").
func parseSeconds(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 || f != f || f > 1e9 {
			return 0, fmt.Errorf("%q is not a non-negative number of seconds", v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a non-negative number of seconds", v)
	}
	return d, nil
}

func applyEnv(c *Config, env []string) ([]Label, error) {
	vars := map[string]string{}
	var labels []Label
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if key, isLabel := strings.CutPrefix(k, "SE_LABEL_"); isLabel {
			labels = append(labels, Label{Key: key, Value: v})
			continue
		}
		vars[k] = v
	}
	for _, s := range settings {
		v, ok := vars[s.env]
		if !ok || (v == "" && s.env != "SE_SYNC_TOKEN") {
			continue // unset or empty: the default stays
		}
		if err := s.set(c, v); err != nil {
			return nil, usagef("invalid %s: %v", s.env, err)
		}
	}
	return labels, nil
}

// parseFlags consumes flags from the front of args and returns the rest.
func parseFlags(c *Config, labels *[]Label, args []string) ([]string, error) {
	for len(args) > 0 {
		a := args[0]
		if a == "--" {
			return args[1:], nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" || a == "-h" || a == "--help" || a == "--version" {
			return args, nil
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		args = args[1:]
		takeValue := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if len(args) == 0 {
				return "", usagef("flag %s needs a value", a)
			}
			v := args[0]
			args = args[1:]
			return v, nil
		}
		if name == "l" || name == "label" {
			v, err := takeValue()
			if err != nil {
				return nil, err
			}
			k, val, ok := strings.Cut(v, "=")
			if !ok {
				return nil, usagef("invalid label %q: want key=value", v)
			}
			*labels = append(*labels, Label{Key: k, Value: val})
			continue
		}
		s := findFlag(name)
		if s == nil {
			return nil, usagef("unknown flag %s", a)
		}
		v, err := takeValue()
		if err != nil {
			return nil, err
		}
		if err := s.set(c, v); err != nil {
			return nil, usagef("invalid %s: %v", a, err)
		}
	}
	return args, nil
}

func findFlag(name string) *setting {
	for i := range settings {
		s := &settings[i]
		if name == s.long || (s.short != "" && name == s.short) {
			return s
		}
	}
	return nil
}

// SanitizeLabelKey maps a key to the Prometheus label name alphabet: any
// character outside [A-Za-z0-9_] becomes '_'.
func SanitizeLabelKey(k string) string {
	b := []byte(k)
	for i, ch := range b {
		if !(ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// CleanLabelValue makes a label value safe for every consumer: valid
// UTF-8, no control characters but newline and tab (a carriage return
// would be eaten by line-based readers), and not longer than
// maxLabelValueLen bytes (cut at a rune boundary). What is replaced
// becomes U+FFFD.
func CleanLabelValue(v string) string {
	v = strings.ToValidUTF8(v, "\uFFFD")
	v = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			return '\uFFFD'
		}
		return r
	}, v)
	if len(v) <= maxLabelValueLen {
		return v
	}
	cut := maxLabelValueLen
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut]
}

func checkLabelKey(raw string) (string, error) {
	k := SanitizeLabelKey(raw)
	switch {
	case k == "":
		return "", usagef("invalid label key %q: empty", raw)
	case k[0] >= '0' && k[0] <= '9':
		return "", usagef("invalid label key %q: starts with a digit", raw)
	case strings.HasPrefix(k, "__"):
		return "", usagef("invalid label key %q: names starting with __ are reserved", raw)
	}
	for _, r := range reservedLabels {
		if strings.EqualFold(k, r) {
			return "", usagef("label key %q is reserved (statexec sets %q itself)", raw, r)
		}
	}
	return k, nil
}

// mergeLabels validates both lists; a key may appear once in each, and
// the flag wins over the variable.
func mergeLabels(env, flags []Label) ([]Label, error) {
	clean := func(in []Label, source string) ([]Label, error) {
		seen := map[string]string{}
		out := make([]Label, 0, len(in))
		for _, l := range in {
			k, err := checkLabelKey(l.Key)
			if err != nil {
				return nil, err
			}
			fold := strings.ToLower(k)
			if prev, dup := seen[fold]; dup {
				return nil, usagef("label %q given twice in %s (as %q and %q)", k, source, prev, l.Key)
			}
			seen[fold] = l.Key
			out = append(out, Label{Key: k, Value: CleanLabelValue(l.Value)})
		}
		return out, nil
	}
	e, err := clean(env, "the environment")
	if err != nil {
		return nil, err
	}
	f, err := clean(flags, "the flags")
	if err != nil {
		return nil, err
	}
	merged := f
	for _, l := range e {
		overridden := false
		for _, fl := range f {
			if strings.EqualFold(fl.Key, l.Key) {
				overridden = true
			}
		}
		if !overridden {
			merged = append(merged, l)
		}
	}
	return merged, nil
}

// CheckMetricsFile verifies, without touching an existing file, that
// the metrics file can be created: its directory exists and is writable.
func CheckMetricsFile(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("metrics file %s: directory %s: %w", path, dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("metrics file %s: %s is not a directory", path, dir)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("metrics file %s: is a directory", path)
	}
	probe, err := os.CreateTemp(dir, ".statexec-check-*")
	if err != nil {
		return fmt.Errorf("metrics file %s: directory not writable: %w", path, err)
	}
	name := probe.Name()
	probe.Close()
	os.Remove(name)
	return nil
}
