package syncctl

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"
)

func TestZZDebugParty(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	var at time.Time
	s := NewServer(ServerOptions{Parties: 2, StartAt: func(a time.Time) error { at = a; return nil }})
	s.ln = ln
	go s.Serve()
	base := "http://" + ln.Addr().String()
	res := make(chan time.Time, 2)
	for range 2 {
		go func() {
			x, err := SendStart(context.Background(), base, ClientOptions{})
			if err != nil {
				t.Error(err)
			}
			res <- x
		}()
	}
	a, b := <-res, <-res
	fmt.Println(a.Sub(at), b.Sub(at))
}
