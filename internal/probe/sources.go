//go:build linux

package probe

// cgroupSources starts the run cgroup's kernel-side counters that need no
// BPF: pressure stall information and perf events. They are listed with
// the BPF groups (same sample/describe/collect/summarize/close life) but
// load in both backends; each one that cannot start is left out with a
// notice of its own.
func (s *Session) cgroupSources() []loadedGroup {
	if s.cg == nil {
		return nil
	}
	var out []loadedGroup
	if p := newPressureSource(s.cg, s.coll.desc, s.opts.Notice); p != nil {
		out = append(out, loadedGroup{spec: groupSpec{name: "pressure"}, g: p})
	}
	p := newPerfSource(s.cg, s.coll.desc, s.coll.groupOn, s.opts.Notice)
	out = append(out, loadedGroup{spec: groupSpec{name: "perf"}, g: p})
	return out
}
