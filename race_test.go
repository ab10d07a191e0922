//go:build race

package main

// raceBuild: the tests run under the race detector (go test -race), so
// statexec is built with it too.
const raceBuild = true
