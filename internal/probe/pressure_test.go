package probe

import (
	"path/filepath"
	"testing"
	"time"
)

func TestParsePressure(t *testing.T) {
	some, full, hasFull, err := parsePressure([]byte("some avg10=1.00 avg60=0.50 avg300=0.10 total=1234567\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=89\n"))
	if err != nil || some != 1234567 || full != 89 || !hasFull {
		t.Errorf("got %d %d %v %v", some, full, hasFull, err)
	}
	some, _, hasFull, err = parsePressure([]byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"))
	if err != nil || some != 5 || hasFull {
		t.Errorf("cpu without full: got %d %v %v", some, hasFull, err)
	}
	if _, _, _, err := parsePressure([]byte("garbage\n")); err == nil {
		t.Error("no some line: want an error")
	}
	if _, _, _, err := parsePressure([]byte("some total=x\n")); err == nil {
		t.Error("bad number: want an error")
	}
}

// pressure returns the run's pressure series, failing when they are absent.
func pressureOf(t *testing.T, s *Session, res string) (waiting, stalled float64) {
	t.Helper()
	m := metrics(t, s)
	w, ok := m["statexec_process_pressure_"+res+"_waiting_seconds_total"]
	if !ok {
		t.Fatalf("no %s pressure series (the kernel here has PSI): %v", res, m)
	}
	return w, m["statexec_process_pressure_"+res+"_stalled_seconds_total"]
}

func TestPressureCPU(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		// Four loops on two CPUs for 3 s: at least two wait at any
		// time, so some task waits all along (~3 s).
		runHostChild(t, s, "spin", "HELPER_LOOPS=4", "HELPER_MS=3000")
		w, full := pressureOf(t, s, "cpu")
		t.Logf("4 loops: cpu some %.3f s, full %.3f s", w, full)
		if w < 1.5 {
			t.Errorf("cpu waiting = %.3f s, want >= 1.5 s", w)
		}
	})
	// The source is the same in both backends: one run of the second
	// case is enough.
	t.Run("one-loop", func(t *testing.T) {
		requireRoot(t)
		s, err := Start(Options{Mode: ModePlain})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		// One loop: it waits only when other work on the machine takes
		// its CPU, which its own run_delay (schedstat) measures. With
		// one task, "some task waited" is exactly that task's wait.
		file := filepath.Join(t.TempDir(), "schedstat")
		runHostChild(t, s, "spin", "HELPER_LOOPS=1", "HELPER_MS=3000", "HELPER_FILE="+file)
		w, _ := pressureOf(t, s, "cpu")
		delay := schedstatDelay(t, file).Seconds()
		t.Logf("1 loop: cpu some %.3f s, the loop's own run_delay %.3f s", w, delay)
		// Near 0 on a quiet machine; on a busy one, what the loop
		// really waited (+ 0.2 s for the runtime's short-lived
		// threads and the exec).
		if w > delay+0.2 {
			t.Errorf("cpu waiting = %.3f s with one loop, want <= run_delay %.3f s + 0.2 s", w, delay)
		}
	})
}

func TestPressureIO(t *testing.T) {
	file := diskFile(t, 64<<20)
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		start := time.Now()
		runHostChild(t, s, "odirect", "HELPER_FILE="+file, "HELPER_BS=65536", "HELPER_COUNT=1024")
		w, full := pressureOf(t, s, "io")
		t.Logf("64 MiB O_DIRECT in %v: io some %.4f s, full %.4f s", time.Since(start).Round(time.Millisecond), w, full)
		if w <= 0 {
			t.Errorf("io waiting = %v, want > 0", w)
		}
		if _, ok := metrics(t, s)["statexec_process_pressure_memory_waiting_seconds_total"]; !ok {
			t.Error("memory pressure series missing")
		}
	})
}
