package report

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/testenv"
)

// TestQuantileMatchesPrometheus checks quantile() against Prometheus' own
// histogram_quantile: random cumulative buckets with statexec's log2 bounds
// (and corner cases) are backfilled with promtool, served by a real
// Prometheus on 127.0.0.1, and queried at every instant.
func TestQuantileMatchesPrometheus(t *testing.T) {
	promtool := testenv.Bin(t, "promtool")
	prometheus := testenv.Bin(t, "prometheus")
	dir := t.TempDir()

	var les []float64
	for b := 1.024e-6; b < 1.1; b *= 2 {
		les = append(les, b)
	}
	les = append(les, math.Inf(1))
	rng := rand.New(rand.NewSource(7))
	const instants = 40
	counts := make([][]float64, instants) // [instant][bucket], cumulative
	for i := range counts {
		c := make([]float64, len(les))
		total := 0.0
		for k := range les {
			switch {
			case i == 0: // no observation: NaN
			case i == 1 && k == len(les)-1: // all above the highest bound
				total += 5
			case i == 1:
			case i == 2 && k == 0: // all in the first bucket
				total += 9
			case i == 2:
			case rng.Intn(3) == 0:
				total += float64(rng.Intn(1000))
			}
			c[k] = total
		}
		counts[i] = c
	}
	const t0 = 1_704_067_200
	var b strings.Builder
	b.WriteString("# HELP h Latency.\n# TYPE h histogram\n")
	for k, le := range les {
		leText := strconv.FormatFloat(le, 'g', -1, 64)
		if math.IsInf(le, 1) {
			leText = "+Inf"
		}
		for i := range counts {
			fmt.Fprintf(&b, "h_bucket{le=\"%s\"} %g %d\n", leText, counts[i][k], t0+10*i)
		}
	}
	b.WriteString("# EOF\n")
	file := filepath.Join(dir, "h.txt")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", file, data).CombinedOutput(); err != nil {
		t.Fatalf("promtool: %v\n%s", err, out)
	}
	api := startPrometheus(t, prometheus, data)

	for i := range counts {
		buckets := make([]bucket, len(les))
		for k, le := range les {
			buckets[k] = bucket{le, counts[i][k]}
		}
		for _, q := range []float64{0, 0.25, 0.5, 0.9, 0.99, 1} {
			want := queryScalar(t, api, fmt.Sprintf("histogram_quantile(%g, h_bucket)", q), int64(t0+10*i))
			got := quantile(q, buckets)
			if !(got == want || math.IsNaN(got) && math.IsNaN(want) || math.Abs(got-want) <= 1e-12*math.Abs(want)) {
				t.Errorf("instant %d, q=%g: quantile %v, Prometheus %v (buckets %v)", i, q, got, want, counts[i])
			}
		}
	}
}

// localClient talks to 127.0.0.1 directly, whatever HTTP_PROXY says.
var localClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}

// startPrometheus serves the TSDB in data on a free 127.0.0.1 port and
// returns its API address once it is ready.
func startPrometheus(t *testing.T, bin, data string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; attempt < 3; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		logPath := filepath.Join(t.TempDir(), "prometheus.log")
		logFile, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
		cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+data,
			"--storage.tsdb.retention.time=100y", "--web.listen-address="+addr)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); logFile.Close(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		deadline := time.Now().Add(60 * time.Second)
	wait:
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				if strings.Contains(log(), "address already in use") {
					break wait // another test took the port: try another
				}
				t.Fatalf("prometheus exited:\n%s", log())
			default:
			}
			if resp, err := localClient.Get("http://" + addr + "/-/ready"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return "http://" + addr
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case <-exited:
			continue
		default:
			t.Fatalf("prometheus not ready within 60 s:\n%s", log())
		}
	}
	t.Fatal("prometheus could not bind a free port three times")
	return ""
}

// queryScalar runs an instant query that returns one sample.
func queryScalar(t *testing.T, api, query string, at int64) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := api + "/api/v1/query?" + url.Values{"query": {query}, "time": {strconv.FormatInt(at, 10)}}.Encode()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := localClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" || len(r.Data.Result) != 1 {
		t.Fatalf("query %s at %d: %v %+v", query, at, err, r)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("query %s: value %q: %v", query, s, err)
	}
	return v
}
