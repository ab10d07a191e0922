//go:build linux

package modes

import (
	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/report"
)

// writeReport writes the HTML report of the metrics file just written
// (SE_REPORT), with what only the run knows: the command and, if it ran,
// its exit code.
func writeReport(cfg config.Config, command []string, ran bool, code int) error {
	run, err := report.LoadFile(cfg.MetricsFile)
	if err != nil {
		return err
	}
	run.Command = command
	if ran {
		run.ExitCode = &code
	}
	return report.Build([]*report.Run{run}, report.MaxPoints).WriteFile(cfg.Report)
}
