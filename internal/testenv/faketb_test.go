package testenv

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
)

// fakeTB records Fatal/Skip instead of ending the real test. Methods not
// overridden (TempDir, Name, ...) go to the real test.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	failed  bool
	skipped bool
	msg     string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Logf(format string, args ...any) { f.TB.Logf("(fake) "+format, args...) }
func (f *fakeTB) Log(args ...any)                 { f.TB.Log(append([]any{"(fake)"}, args...)...) }

func (f *fakeTB) Fatalf(format string, args ...any) { f.stop(false, fmt.Sprintf(format, args...)) }
func (f *fakeTB) Fatal(args ...any)                 { f.stop(false, fmt.Sprint(args...)) }
func (f *fakeTB) Errorf(format string, args ...any) { f.stop(false, fmt.Sprintf(format, args...)) }
func (f *fakeTB) Error(args ...any)                 { f.stop(false, fmt.Sprint(args...)) }
func (f *fakeTB) FailNow()                          { f.stop(false, "FailNow") }
func (f *fakeTB) Fail()                             { f.stop(false, "Fail") }
func (f *fakeTB) Skipf(format string, args ...any)  { f.stop(true, fmt.Sprintf(format, args...)) }
func (f *fakeTB) Skip(args ...any)                  { f.stop(true, fmt.Sprint(args...)) }
func (f *fakeTB) SkipNow()                          { f.stop(true, "SkipNow") }

func (f *fakeTB) stop(skip bool, msg string) {
	f.mu.Lock()
	if skip {
		f.skipped = true
	} else {
		f.failed = true
	}
	f.msg = msg
	f.mu.Unlock()
	runtime.Goexit()
}

// runFake runs fn with a fakeTB in its own goroutine (Fatal ends it with
// runtime.Goexit, like the real one) and returns the recorder.
func runFake(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	t.Helper()
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}
