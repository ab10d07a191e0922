//go:build linux

// Command statexec runs a command and records system metrics, and the
// command's own, into an OpenMetrics file while it runs.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/modes"
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
  statexec help | version

Modes:
  exec               run the command now
  waitStart          serve HTTP (SE_SYNC_LISTEN) and start the command on POST /start
  waitStartAndStop   as waitStart; POST /stop stops the command (SIGINT, then
                     SIGTERM and SIGKILL after SE_STOP_GRACE each)
  syncStart          POST <url>/start, then run the command
  syncStartAndStop   as syncStart; POST <url>/stop after the command ended
  recover            turn the spool of an interrupted run into a metrics file

Flags (may also follow the mode, up to the command; they win over variables):
  -f, --file PATH            SE_METRICS_FILE              metrics file (/tmp/statexec_metrics.txt)
  -i, --instance NAME        SE_INSTANCE                  instance label (hostname)
  -l, --label KEY=VALUE      SE_LABEL_<KEY>=VALUE         extra label on every sample (repeatable)
  -r, --time-relative MS     SE_TIME_RELATIVE             time origin in ms since the epoch (-1: now)
      --wait-before SECONDS  SE_WAIT_TIME_BEFORE_COMMAND  record this long before the command (0)
      --wait-after SECONDS   SE_WAIT_TIME_AFTER_COMMAND   record this long after the command (0)
      --interval DURATION    SE_INTERVAL                  sampling interval, >= 10ms (1s)
      --format FORMAT        SE_METRICS_FORMAT            openmetrics or prometheus (openmetrics)
      --probes MODE          SE_PROBES                    auto, ebpf or plain (auto)
      --summary 0|1          SE_SUMMARY                   summary on stderr at the end (1)
      --listen ADDR:PORT     SE_SYNC_LISTEN               sync server address (:8080)
      --token SECRET         SE_SYNC_TOKEN                shared secret of the sync modes
      --sync-timeout SECONDS SE_SYNC_TIMEOUT              how long a client retries (30)
      --stop-grace SECONDS   SE_STOP_GRACE                grace between stop signals (5)

A variable set to the empty string counts as unset: its default applies
(SE_METRICS_FILE= writes /tmp/statexec_metrics.txt). A flag's value must not
be empty. A label with an empty value is left out of the file: in Prometheus
an empty label is an absent one.

Exit status: the command's; 128+N if it was killed by signal N; 2 for bad
usage; 126 if the command cannot be executed; 127 if it is not found.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
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
