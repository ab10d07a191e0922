//go:build linux

// Command statexec runs a command and records system metrics, and the
// command's own, into an OpenMetrics file while it runs.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/modes"
	"github.com/statexec/statexec/internal/report"
	"github.com/statexec/statexec/internal/store"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `statexec runs a command and records system metrics while it runs into an
OpenMetrics file, for VictoriaMetrics (/api/v1/import/prometheus) or Prometheus
(promtool tsdb create-blocks-from openmetrics).

Usage:
  statexec [flags] exec <command> [args...]
  statexec [flags] waitStart <command> [args...]
  statexec [flags] waitStartAndStop <command> [args...]
  statexec [flags] syncStart <url> <command> [args...]
  statexec [flags] syncStartAndStop <url> <command> [args...]
  statexec recover <spool> [output]
  statexec [flags] push <file> <url>
  statexec report [--text] [-o report.html] <file>...
  statexec help | version

Modes:
  exec               run the command now
  waitStart          serve HTTP (SE_SYNC_LISTEN) and start the command on POST /start
  waitStartAndStop   as waitStart; POST /stop stops the command (SIGINT, then
                     SIGTERM and SIGKILL after SE_STOP_GRACE each)
  syncStart          POST <url>/start, then run the command
  syncStartAndStop   as syncStart; POST <url>/stop after the command ended
  recover            turn the spool of an interrupted run into a metrics file
  push               send a metrics file (or a spool) with its own timestamps
                     to a remote-write URL (Prometheus remote write 1.0)
  report             write one offline HTML page with the files' charts and
                     summary (several files: overlaid, with ratios to the
                     first); default output: the first file with .html;
                     --text prints the summary table instead

Flags (may also follow the mode, up to the command; they win over variables):
  -f, --file PATH            SE_METRICS_FILE              metrics file (/tmp/statexec_metrics.txt)
  -i, --instance NAME        SE_INSTANCE                  instance label (hostname)
  -l, --label KEY=VALUE      SE_LABEL_<KEY>=VALUE         extra label on every sample (repeatable)
  -r, --time-relative MS     SE_TIME_RELATIVE             time origin in ms since the epoch (-1: now); in the
                                                          wait*/sync* modes it is the sync instant's
      --wait-before SECONDS  SE_WAIT_TIME_BEFORE_COMMAND  record this long before the command (0); in the
                                                          wait*/sync* modes after the sync
      --wait-after SECONDS   SE_WAIT_TIME_AFTER_COMMAND   record this long after the command (0)
      --interval DURATION    SE_INTERVAL                  sampling interval, >= 10ms (1s)
      --format FORMAT        SE_METRICS_FORMAT            openmetrics or prometheus (openmetrics)
      --probes MODE          SE_PROBES                    auto, ebpf or plain (auto)
      --summary 0|1          SE_SUMMARY                   summary on stderr at the end (1)
      --runqueue-histogram 0|1 SE_RUNQUEUE_HISTOGRAM      run-queue latency histogram (0; costs on
                                                          every context switch of the host)
      --listen ADDR:PORT     SE_SYNC_LISTEN               sync server address (:8080)
      --token SECRET         SE_SYNC_TOKEN                shared secret of the sync modes
      --sync-timeout SECONDS SE_SYNC_TIMEOUT              how long a client retries (30)
      --parties N            SE_SYNC_PARTIES              clients a wait* server waits for (1)
      --sync-stop first|last SE_SYNC_STOP                 stop at the first or last /stop (first)
      --stop-grace SECONDS   SE_STOP_GRACE                grace between stop signals (5)
      --report PATH          SE_REPORT                    also write the HTML report here at the end
      --remote-write URL     SE_REMOTE_WRITE_URL          also send the samples during the run (remote write
                                                          1.0), e.g. http://vm:8428/api/v1/write; basic
                                                          auth from the URL's user:password@
      --remote-write-bearer-token TOKEN
                             SE_REMOTE_WRITE_BEARER_TOKEN Authorization: Bearer TOKEN
      --remote-write-headers LINES
                             SE_REMOTE_WRITE_HEADERS      extra "Name: value" header lines (X-Scope-OrgID)
      --remote-write-timeout SECONDS
                             SE_REMOTE_WRITE_TIMEOUT      bound of the final flush (30)

A variable set to the empty string counts as unset: its default applies
(SE_METRICS_FILE= writes /tmp/statexec_metrics.txt). A flag's value must not
be empty. A label with an empty value is left out of the file: in Prometheus
an empty label is an absent one.

Exit status: the command's; 128+N if it was killed by signal N; 2 for bad
usage; 126 if the command cannot be executed; 127 if it is not found; 1 if
the file could not be written or remote write did not deliver every sample
(when the command's own code is 0).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "report" {
		return reportCmd(args[1:], stdout, stderr)
	}
	host, _ := os.Hostname()
	inv, err := config.Parse(args, os.Environ(), host)
	if err != nil {
		fmt.Fprintf(stderr, "statexec: %v\n", err)
		if config.WantsUsage(err) {
			fmt.Fprint(stderr, "\n"+usage)
		} else {
			fmt.Fprintln(stderr, "Run 'statexec help' for usage.")
		}
		return 2
	}
	switch inv.Mode {
	case config.ModeHelp:
		fmt.Fprint(stdout, usage)
		return 0
	case config.ModeVersion:
		fmt.Fprintf(stdout, "statexec %s\n", version)
		return 0
	case config.ModeRecover:
		return recoverSpool(inv, stdout, stderr)
	case config.ModePush:
		if err := modes.Push(inv.Args[0], inv.Args[1], inv.Config, os.Stderr); err != nil {
			fmt.Fprintf(stderr, "statexec: %v\n", err)
			return 1
		}
		return 0
	}
	return modes.Run(inv, modes.Options{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
}

func recoverSpool(inv *config.Invocation, stdout, stderr io.Writer) int {
	spool := inv.Args[0]
	out := strings.TrimSuffix(spool, ".spool")
	if len(inv.Args) > 1 {
		out = inv.Args[1]
	} else if out == spool {
		out = spool + ".txt"
	}
	format := store.OpenMetrics
	if inv.Config.Format == config.FormatPrometheus {
		format = store.Prometheus
	}
	n, err := modes.Recover(spool, out, format)
	if err != nil {
		fmt.Fprintf(stderr, "statexec: recover: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "statexec: recovered %d samples into %s\n", n, out)
	return 0
}

// reportCmd runs `statexec report [--text] [-o FILE] FILE...`.
func reportCmd(args []string, stdout, stderr io.Writer) int {
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "statexec: report: "+format+"\n", a...)
		fmt.Fprintln(stderr, "Usage: statexec report [--text] [-o report.html] <file>...")
		return 2
	}
	var files []string
	out, text := "", false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--":
			files = append(files, args[i+1:]...)
			i = len(args)
		case a == "--text":
			text = true
		case a == "-o" || a == "--output":
			if i+1 >= len(args) {
				return usageErr("%s needs a file name", a)
			}
			i++
			out = args[i]
		case strings.HasPrefix(a, "--output="):
			out = strings.TrimPrefix(a, "--output=")
		case strings.HasPrefix(a, "-") && a != "-":
			return usageErr("unknown flag %s", a)
		default:
			files = append(files, a)
		}
	}
	if len(files) == 0 {
		return usageErr("no metrics file given")
	}
	if !text {
		if out == "" {
			out = report.DefaultOutput(files[0])
		}
		for _, f := range files {
			if filepath.Clean(f) == filepath.Clean(out) {
				return usageErr("the output %s is one of the input files", out)
			}
		}
		if err := report.CheckOutput(out); err != nil {
			fmt.Fprintf(stderr, "statexec: %v\n", err)
			return 2
		}
	}
	runs, err := report.Load(files)
	if err != nil {
		fmt.Fprintf(stderr, "statexec: report: %v\n", err)
		return 2
	}
	rep := report.Build(runs, report.MaxPoints)
	if text {
		if err := rep.WriteText(stdout); err != nil {
			fmt.Fprintf(stderr, "statexec: report: %v\n", err)
			return 1
		}
		return 0
	}
	if err := rep.WriteFile(out); err != nil {
		fmt.Fprintf(stderr, "statexec: report: write %s: %v\n", out, err)
		return 1
	}
	fmt.Fprintf(stdout, "statexec: report written to %s\n", out)
	return 0
}
