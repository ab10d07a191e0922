//go:build linux

package modes

import (
	"net/http"
	"os"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/remotewrite"
)

// RemoteWriteOptions turns the configuration into remote-write options.
func RemoteWriteOptions(cfg config.Config, stderr *os.File) remotewrite.Options {
	h := http.Header{}
	for _, x := range cfg.RemoteWrite.Headers {
		h.Add(x.Name, x.Value)
	}
	return remotewrite.Options{
		URL:         cfg.RemoteWrite.URL,
		BearerToken: cfg.RemoteWrite.BearerToken,
		Header:      h,
		Timeout:     cfg.RemoteWrite.Timeout,
		Interval:    cfg.Interval,
		OpenMetrics: cfg.Format != config.FormatPrometheus,
		Stderr:      stderr,
	}
}

// startRemoteWrite follows the spool when SE_REMOTE_WRITE_URL is set.
func (r *run) startRemoteWrite() error {
	if r.cfg.RemoteWrite.URL == "" {
		return nil
	}
	o := RemoteWriteOptions(r.cfg, r.o.Stderr)
	// The samples before the sync instant move with it: send none before.
	o.Hold = synced(r.inv.Mode)
	f, err := remotewrite.Follow(r.st.Path(), o)
	if err != nil {
		return err
	}
	r.rw = f
	return nil
}

// finishRemoteWrite sends the rest (bounded by SE_REMOTE_WRITE_TIMEOUT);
// an error (samples not sent) makes a success a failure, as a failed
// file write does.
func (r *run) finishRemoteWrite() error {
	if r.rw == nil {
		return nil
	}
	// r.rw stays: syncAt may still call releaseRemoteWrite (Finish and
	// Release are safe to call in any order).
	return r.rw.Finish()
}

// releaseRemoteWrite lets the follower send once the time axis is final.
func (r *run) releaseRemoteWrite() {
	if r.rw != nil {
		r.rw.Release()
	}
}

// Push sends a metrics file or spool to url (statexec push).
func Push(file, url string, cfg config.Config, stderr *os.File) error {
	cfg.RemoteWrite.URL = url
	return remotewrite.Push(file, RemoteWriteOptions(cfg, stderr))
}
